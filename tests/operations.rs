//! End-to-end: what operators rely on: configuration errors, the admin
//! listener, graceful shutdown, the command line.

mod common;

use std::process::Command;

use common::{base_env, binary, TestApp};

/// Runs `lastclick serve --check` with the test environment plus `extra`.
fn check(extra: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--check"]).env_clear().envs(base_env());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_default_configuration_is_valid() {
    let (ok, text) = check(&[]);
    assert!(ok, "{text}");
    let out = Command::new(binary())
        .args(["serve", "--check"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "no configuration at all still starts");
}

#[test]
fn invalid_configuration_stops_startup_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 16] = [
        (
            &[("LASTCLICK_ATTRIBUTION__WINDOW", "forever")],
            "attribution.window",
        ),
        (
            &[
                ("LASTCLICK_ATTRIBUTION__WINDOW", "1h"),
                ("LASTCLICK_ATTRIBUTION__MIN_CLICK_AGE", "2h"),
            ],
            "attribution.min_click_age",
        ),
        (
            &[("LASTCLICK_WEBHOOKS__ALLOW_HTTP", "sometimes")],
            "webhooks.allow_http",
        ),
        (
            &[("LASTCLICK_WEBHOOKS__RETRY_FIRST", "0s")],
            "webhooks.retry_first",
        ),
        (
            &[
                ("LASTCLICK_WEBHOOKS__RETRY_FIRST", "1m"),
                ("LASTCLICK_WEBHOOKS__RETRY_MAX", "10s"),
            ],
            "webhooks.retry_max",
        ),
        (&[("LASTCLICK_WEBHOOKS__TIMEOUT", "2m")], "webhooks.timeout"),
        (
            &[("LASTCLICK_WEBHOOKS__GIVE_UP_AFTER", "soon")],
            "webhooks.give_up_after",
        ),
        (
            &[("LASTCLICK_WEBHOOKS__MAX_BACKLOG", "0")],
            "webhooks.max_backlog",
        ),
        (
            &[("LASTCLICK_CLICKS__DEDUP_WINDOW", "30 parsecs")],
            "clicks.dedup_window",
        ),
        (
            &[("LASTCLICK_LANDING__DEFAULT", "https://evil.com/")],
            "landing.default",
        ),
        (
            &[("LASTCLICK_CAMPAIGN__DISCOUNTS", "10,150")],
            "campaign.discounts",
        ),
        (
            &[
                ("LASTCLICK_REDIS__URL", "redis://127.0.0.1:1"),
                ("LASTCLICK_COOKIE__SECRETS", ""),
            ],
            "cookie.secrets",
        ),
        (&[("LASTCLICK_COOKIE__SECRETS", "short")], "cookie.secrets"),
        (
            &[("LASTCLICK_LISTEN__MAX_HEADER_BYTES", "100")],
            "listen.max_header_bytes",
        ),
        (
            &[("LASTCLICK_LISTEN__HTTP", "not-an-address")],
            "listen.http",
        ),
        (
            &[("LASTCLICK_CLICKS__BATCH_SIZE", "0")],
            "clicks.batch_size",
        ),
    ];
    for (env, key) in cases {
        let (ok, text) = check(env);
        assert!(!ok, "{env:?} was accepted");
        assert!(
            text.contains(key),
            "{env:?}: message does not name {key}: {text}"
        );
    }
}

#[test]
fn a_config_file_is_read_and_the_environment_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.toml");
    std::fs::write(&path, "[attribution]\nwindow = \"banana\"\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--check", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attribution.window"));
    let out = Command::new(binary())
        .args(["serve", "--check", "--config"])
        .arg(&path)
        .env_clear()
        .env("LASTCLICK_ATTRIBUTION__WINDOW", "90d")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, "[cookie]\nnmae = \"typo\"\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--check", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown keys are refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nmae"));
}

/// Payout currencies are checked against the same ISO 4217 table as
/// events' currencies: a code of the right shape that no event could
/// carry (`XYZ`) is refused, naming the key.
#[test]
fn a_payout_currency_must_be_an_iso_4217_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.toml");
    let run = |minimum: &str| {
        std::fs::write(&path, format!("[payout]\nminimum = {{ {minimum} }}\n")).unwrap();
        Command::new(binary())
            .args(["serve", "--check", "--config"])
            .arg(&path)
            .env_clear()
            .output()
            .unwrap()
    };
    let ok = run(r#"USD = "50", JPY = "5000""#);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for bad in [r#"XYZ = "50""#, r#"usd = "50""#] {
        let out = run(bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr.contains("payout.minimum"), "{bad}: {stderr}");
    }
}

#[test]
fn every_subcommand_has_help_and_link_prints_an_affiliate_link() {
    for sub in [&["--help"][..], &["serve", "--help"], &["link", "--help"]] {
        let out = Command::new(binary()).args(sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    let out = Command::new(binary())
        .args([
            "link",
            "--partner",
            "acme",
            "--campaign",
            "spring",
            "--term",
            "side bar",
            "--base-url",
            "https://go.example.com",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "https://go.example.com/r/acme/spring?utm_term=side+bar"
    );
    let bad = Command::new(binary())
        .args(["link", "--partner", "a/b"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_health_and_readiness() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    app.click("/r/acme", None, None).await;
    let metrics = app.metrics().await;
    for series in [
        "lastclick_redirects_total{outcome=\"counted\"} 1",
        "lastclick_redirect_duration_seconds_bucket{le=\"0.0001\"}",
        "lastclick_redirect_duration_seconds_bucket{le=\"0.00025\"}",
        "lastclick_click_buffer_depth",
        "lastclick_clicks_dropped_total 0",
        "lastclick_build_info{version=",
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }
    assert!(!metrics.contains("acme"), "no per-partner labels");
    for path in ["/healthz", "/readyz"] {
        let status = app
            .client
            .get(format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    let status = app
        .client
        .get(format!("{}/v1/partners", app.admin))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "the API is not on the admin listener");
    let status = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "metrics are not on the public listener");
}

#[tokio::test]
async fn sigterm_stops_the_service_gracefully() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    for _ in 0..20 {
        app.click("/r/acme", None, None).await;
    }
    let public = app.public.clone();
    let status = app.terminate();
    assert!(status.success(), "exit status {status:?}");
    let refused = reqwest::Client::new()
        .get(format!("{public}/r/acme"))
        .send()
        .await;
    assert!(refused.is_err(), "no longer accepting");
}

#[tokio::test]
async fn a_full_click_buffer_drops_and_counts_instead_of_waiting() {
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_CLICKS__BUFFER_CAPACITY", "3"),
        ("LASTCLICK_CLICKS__FLUSH_INTERVAL", "1h"),
    ])
    .await;
    app.create_partner("acme").await;
    for _ in 0..10 {
        let r = app.click("/r/acme", None, None).await;
        assert_eq!(r.status, 302);
        assert!(r.set_cookie.is_some(), "visitors see no difference");
    }
    // The flusher's first tick may have taken a click or two before the
    // hour-long wait, so at least 10 - 3 - 2 are dropped, all of them counted.
    let dropped = app.metric("lastclick_clicks_dropped_total").await;
    let queued = app.metric("lastclick_click_buffer_depth").await;
    assert!(dropped >= 5.0, "dropped {dropped}");
    assert_eq!(
        dropped + queued + app.metric("lastclick_clicks_written_total").await,
        10.0
    );
}

/// A SIGTERM the moment `serve` says it listens stops it gracefully (exit
/// 0): the handlers are installed before it announces itself, not when
/// it first waits for a signal.
#[tokio::test]
async fn a_sigterm_right_after_startup_is_a_graceful_stop() {
    for _ in 0..5 {
        let app = TestApp::spawn().await;
        let status = app.terminate();
        assert!(status.success(), "{status:?}");
    }
}
