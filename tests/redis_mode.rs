//! End-to-end in Redis mode: shared state across instances, outages that
//! visitors never see, every buffered click written once Redis is back.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{RedisCluster, RedisServer};
use common::{TestApp, ADMIN};
use serde_json::json;

async fn serve_on(redis_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("LASTCLICK_REDIS__URL", redis_url)];
    env.extend_from_slice(extra);
    TestApp::spawn_with(&env).await
}

async fn ready_status(app: &TestApp) -> u16 {
    app.client
        .get(format!("{}/readyz", app.admin))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `check` holds (the background refresh and flush take a
/// moment), failing after 15 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_campaign_created_through_one_instance_is_live_on_another() {
    let redis = RedisServer::start();
    let a = serve_on(&redis.url(), &[]).await;
    let b = serve_on(&redis.url(), &[]).await;
    a.create_partner("acme").await;
    a.create_campaign(
        "acme",
        json!({"slug": "bf", "name": "black.friday", "trial_days": 14,
                                      "landing": "https://promo.example.com/bf"}),
    )
    .await;
    // Bots are redirected like visitors but never counted: a safe probe.
    eventually("instance b to serve the new campaign", || async {
        b.click("/r/acme/bf", None, Some("Slackbot"))
            .await
            .location
            .starts_with("https://promo.example.com/bf?")
    })
    .await;
    let r = b.click("/r/acme/bf", None, None).await;
    assert_eq!(r.param("trial_days").as_deref(), Some("14"));
    a.click("/r/acme/bf", None, None).await;
    // Clicks through both instances meet in one report.
    let report = a.report_when("acme", "", 2).await;
    assert_eq!(report["totals"]["clicks"], 2, "{report}");
    assert_eq!(
        report["rows"][0]["utm_campaign"], "black.friday",
        "{report}"
    );
    // Partner tokens work on every instance.
    let (status, _) = b.get("/v1/partners/acme", Some(ADMIN)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn killing_redis_mid_traffic_changes_nothing_for_visitors_and_loses_no_click() {
    let mut redis = RedisServer::start();
    let app = serve_on(&redis.url(), &[]).await;
    app.create_partner("acme").await;
    app.create_campaign(
        "acme",
        json!({"slug": "s", "name": "spring", "landing": "https://promo.example.com/"}),
    )
    .await;
    eventually("the campaign in the cache", || async {
        app.click("/r/acme/s", None, Some("Slackbot"))
            .await
            .location
            .starts_with("https://promo.example.com/")
    })
    .await;

    let total = 300;
    let mut shapes = Vec::new();
    for i in 0..total {
        if i == 100 {
            redis.kill();
        }
        if i == 150 {
            // Long enough for the flusher to fail, back off and fail again.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        if i == 200 {
            assert_eq!(
                ready_status(&app).await,
                503,
                "not ready while Redis is down"
            );
            redis.restart();
        }
        let r = app
            .click(&format!("/r/acme/s?utm_term=t{}", i % 7), None, None)
            .await;
        assert_eq!(r.status, 302, "click {i}");
        assert!(
            r.location.starts_with("https://promo.example.com/?"),
            "click {i}: {}",
            r.location
        );
        let cookie = r.set_cookie.expect("every click sets the cookie");
        shapes.push(cookie.split("; ").skip(1).collect::<Vec<_>>().join("; "));
    }
    assert!(
        shapes.windows(2).all(|w| w[0] == w[1]),
        "cookie attributes never change"
    );

    eventually("every click in the counters", || async {
        let (status, report) = app.get("/v1/partners/acme/report", Some(ADMIN)).await;
        status == 200 && report["totals"]["clicks"] == total
    })
    .await;
    let (_, report) = app
        .get("/v1/partners/acme/report?group_by=term", Some(ADMIN))
        .await;
    let per_term: u64 = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["clicks"].as_u64().unwrap())
        .sum();
    assert_eq!(per_term, total, "counted once each: {report}");
    assert_eq!(app.metric("lastclick_clicks_dropped_total").await, 0.0);
    assert!(
        app.metric("lastclick_store_errors_total{operation=\"record_clicks\"}")
            .await
            >= 1.0
    );
    assert_eq!(ready_status(&app).await, 200);
}

#[tokio::test]
async fn sigterm_writes_buffered_clicks_before_exit() {
    let redis = RedisServer::start();
    let app = serve_on(&redis.url(), &[("LASTCLICK_CLICKS__FLUSH_INTERVAL", "1h")]).await;
    app.create_partner("acme").await;
    for _ in 0..25 {
        app.click("/r/acme", None, None).await;
    }
    assert!(app.metric("lastclick_click_buffer_depth").await >= 24.0);
    assert!(app.terminate().success());
    let reader = serve_on(&redis.url(), &[]).await;
    let report = reader.report_when("acme", "", 25).await;
    assert_eq!(report["totals"]["clicks"], 25, "{report}");
}

#[tokio::test]
async fn serve_starts_and_redirects_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    {
        let app = serve_on(&url, &[]).await;
        app.create_partner("acme").await;
    }
    redis.kill();
    let app = serve_on(&url, &[]).await;
    let r = app.click("/r/acme", None, None).await;
    assert_eq!(r.status, 302, "visitors still land");
    assert_eq!(ready_status(&app).await, 503);
    let (status, body) = app.get("/v1/partners/acme", Some(ADMIN)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("store_unavailable"))
    );
    redis.restart();
    eventually("the routes to load once Redis is back", || async {
        app.click("/r/acme", None, None).await.set_cookie.is_some()
    })
    .await;
    assert_eq!(ready_status(&app).await, 200);
}

#[tokio::test]
async fn serve_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let app = serve_on(&cluster.urls(), &[("LASTCLICK_REDIS__CLUSTER", "true")]).await;
    for partner in ["acme", "beta", "gamma", "delta"] {
        app.create_partner(partner).await;
    }
    for partner in ["acme", "beta", "gamma", "delta"] {
        for i in 0..5 {
            app.click(&format!("/r/{partner}?utm_term=t{i}"), None, None)
                .await;
        }
    }
    for partner in ["acme", "beta", "gamma", "delta"] {
        let report = app.report_when(partner, "", 5).await;
        assert_eq!(report["totals"]["clicks"], 5, "{partner}: {report}");
        assert_eq!(
            report["totals"]["unique_visitors"], 5,
            "{partner}: {report}"
        );
    }
    assert_eq!(ready_status(&app).await, 200);
}

/// `serve` on `redis`, until its listening line or its exit; answers
/// whether it started and what it wrote to stderr.
fn start_and_read_stderr(redis: &RedisServer, subcommand: &str) -> (bool, String) {
    use std::io::{BufRead, BufReader};
    let mut env = common::base_env();
    env.push(("LASTCLICK_REDIS__URL".into(), redis.url()));
    let mut child = std::process::Command::new(common::binary())
        .arg(subcommand)
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started = !line.is_empty();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (started, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_evicting_redis_is_refused_at_startup() {
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    for subcommand in ["serve", "worker"] {
        let (started, stderr) = start_and_read_stderr(&redis, subcommand);
        assert!(!started, "{subcommand} started on an evicting Redis");
        assert!(
            stderr.contains("`redis.url`") && stderr.contains("maxmemory-policy is `allkeys-lru`"),
            "{subcommand}: {stderr}"
        );
    }
}

#[test]
fn a_redis_without_persistence_is_warned_about() {
    let redis = RedisServer::start_with(&["--appendonly", "no"]);
    let (started, stderr) = start_and_read_stderr(&redis, "serve");
    assert!(started, "{stderr}");
    assert!(
        stderr.contains("appendonly no and no RDB snapshots"),
        "{stderr}"
    );
    // The default test Redis (appendonly yes, appendfsync always) is quiet.
    let (started, stderr) = start_and_read_stderr(&RedisServer::start(), "serve");
    assert!(started, "{stderr}");
    assert!(!stderr.contains("Redis runs with"), "{stderr}");
}
