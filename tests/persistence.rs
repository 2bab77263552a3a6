//! End-to-end, on the real binary: the embedded store is a file, so a
//! restart (SIGTERM or SIGKILL) loses no partner, campaign, click, event or
//! cent, and what was generated at the first start (the cookie secret, the
//! tokens) keeps working.

mod common;

use std::time::{Duration, Instant};

use common::{base_env, binary, TestApp};
use serde_json::{json, Value};

/// The test environment with nothing secret configured, on the database
/// at `path`: what a newcomer runs.
fn bare_env(path: &std::path::Path) -> Vec<(String, String)> {
    let mut env = base_env();
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "LASTCLICK_AUTH__ADMIN_TOKEN"
                | "LASTCLICK_AUTH__MERCHANT_TOKEN"
                | "LASTCLICK_COOKIE__SECRETS"
        )
    });
    env.push((
        "LASTCLICK_EMBEDDED__PATH".into(),
        path.to_string_lossy().into_owned(),
    ));
    env
}

/// A setting the first start generated, read from the database file as an
/// operator would with `sqlite3`.
fn kept_setting(path: &std::path::Path, name: &str) -> String {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row(
        "SELECT value FROM settings WHERE name = ?1",
        [name],
        |row| row.get(0),
    )
    .unwrap()
}

/// Runs `lastclick ARGS` to its end with the test environment on the
/// database at `db`.
fn lastclick(args: &[&std::ffi::OsStr], db: &std::path::Path) -> std::process::Output {
    let mut env = base_env();
    env.push((
        "LASTCLICK_EMBEDDED__PATH".into(),
        db.to_string_lossy().into_owned(),
    ));
    std::process::Command::new(binary())
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap()
}

fn at(ms_ago: i64) -> String {
    let ms = chrono::Utc::now().timestamp_millis() - ms_ago;
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A signup credited to `click_id` and its first payment, 300.00 USD a
/// month: 60.00 of commission for the click's partner.
fn signup_and_payment(click_id: &str) -> Value {
    json!([
        {"id": "s1", "type": "signup", "customer": "cus_1", "at": at(60_000),
         "billing": "referral", "attribution": {"click_id": click_id}},
        {"id": "p1", "type": "payment", "customer": "cus_1", "at": at(50_000),
         "amount": "300.00", "currency": "USD", "period": "month"}
    ])
}

/// Waits until `check` holds of `GET path` (as `token`), answers the body.
async fn when(app: &TestApp, path: &str, token: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.get(path, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn usd(balance: &Value, field: &str) -> String {
    balance["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["currency"] == "USD"))
        .map(|b| b[field].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_restart_keeps_partners_clicks_money_tokens_and_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("lastclick.db");
    let app = TestApp::spawn_env(bare_env(&db)).await;
    let admin = kept_setting(&db, "auth.admin_token");
    let merchant = kept_setting(&db, "auth.merchant_token");

    // A partner, a campaign, two clicks; a signup and a payment.
    let (status, created) = app
        .send_json(
            "POST",
            "/v1/partners",
            Some(&admin),
            json!({"id": "acme", "name": "Acme", "paypal_email": "pay@acme.example"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let partner_token = created["token"].as_str().unwrap().to_owned();
    let (status, campaign) = app
        .send_json(
            "POST",
            "/v1/partners/acme/campaigns",
            Some(&partner_token),
            json!({"slug": "spring-sale", "name": "Spring_Sale"}),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    let first = app.click("/r/acme/spring-sale", None, None).await;
    let cookie = first.cookie_value().expect("a cookie");
    let click_id = first.param("lc_click").unwrap();
    app.click("/r/acme", None, None).await;
    when(&app, "/v1/partners/acme/report", &admin, |r| {
        r["totals"]["clicks"] == 2
    })
    .await;
    let events = signup_and_payment(&click_id);
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(&merchant), events.clone())
        .await;
    assert_eq!(status, 202, "{body}");
    let balance = when(&app, "/v1/partners/acme/balance", &admin, |b| {
        usd(b, "available") == "60.00"
    })
    .await;
    let ledger = app.get("/v1/partners/acme/ledger", Some(&admin)).await.1;
    let report = app.get("/v1/partners/acme/report", Some(&admin)).await.1;

    assert!(app.terminate().success());
    let app = TestApp::spawn_env(bare_env(&db)).await;
    assert_eq!(kept_setting(&db, "auth.admin_token"), admin);

    // Everything is there, with the same tokens.
    let (status, partner) = app.get("/v1/partners/acme", Some(&partner_token)).await;
    assert_eq!(status, 200, "{partner}");
    let (status, campaigns) = app
        .get("/v1/partners/acme/campaigns", Some(&partner_token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        campaigns["campaigns"][0]["slug"], "spring-sale",
        "{campaigns}"
    );
    assert_eq!(
        app.get("/v1/partners/acme/balance", Some(&admin)).await.1,
        balance
    );
    assert_eq!(
        app.get("/v1/partners/acme/ledger", Some(&admin)).await.1,
        ledger
    );
    assert_eq!(
        app.get("/v1/partners/acme/report", Some(&admin)).await.1,
        report
    );
    assert_eq!(report["totals"]["clicks"], 2, "{report}");
    // The campaign link still redirects with its campaign.
    let again = app.click("/r/acme/spring-sale", None, None).await;
    assert_eq!(again.status, 302);
    assert!(
        again.location.contains("utm_campaign=Spring_Sale"),
        "{}",
        again.location
    );

    // Event ids sent before the restart are duplicates.
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(&merchant), events)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["duplicates"], 2, "{body}");

    // A cookie issued before the restart still verifies: a signup naming
    // it is credited to the partner.
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/events",
            Some(&merchant),
            json!([{"id": "s2", "type": "signup", "customer": "cus_2", "at": at(1_000),
                    "billing": "referral", "attribution": {"cookie": cookie}}]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    when(&app, "/v1/partners/acme/report", &admin, |r| {
        r["totals"]["signups"] == 2
    })
    .await;
}

#[tokio::test]
async fn a_sigkill_after_an_accepted_event_and_its_application_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db");
    let mut env = bare_env(&db);
    // Events the killed process had taken must not wait for reclaim_after.
    env.push(("LASTCLICK_WORKER__RECLAIM_AFTER".into(), "1h".into()));
    env.push(("LASTCLICK_AUTH__ADMIN_TOKEN".into(), common::ADMIN.into()));
    env.push((
        "LASTCLICK_AUTH__MERCHANT_TOKEN".into(),
        common::MERCHANT.into(),
    ));
    let app = TestApp::spawn_env(env.clone()).await;
    app.create_partner("acme").await;
    let click = app.click("/r/acme", None, None).await;
    app.report_when("acme", "", 1).await;
    let click_id = click.param("lc_click").unwrap();
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/events",
            Some(common::MERCHANT),
            signup_and_payment(&click_id),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let balance = when(&app, "/v1/partners/acme/balance", common::ADMIN, |b| {
        usd(b, "available") == "60.00"
    })
    .await;
    // An event accepted and killed before any worker could look at it.
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/events",
            Some(common::MERCHANT),
            json!([{"id": "p2", "type": "payment", "customer": "cus_1", "at": at(40_000),
                    "amount": "100.00", "currency": "USD", "period": "month"}]),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    app.kill();

    let app = TestApp::spawn_env(env).await;
    let after = app
        .get("/v1/partners/acme/balance", Some(common::ADMIN))
        .await
        .1;
    assert!(
        usd(&after, "available") == "60.00" || usd(&after, "available") == "80.00",
        "{after} vs {balance}"
    );
    // The second payment, accepted before the kill, is applied after it.
    when(&app, "/v1/partners/acme/balance", common::ADMIN, |b| {
        usd(b, "available") == "80.00"
    })
    .await;
    let report = app.report_when("acme", "", 1).await;
    assert_eq!(report["totals"]["clicks"], 1, "{report}");
}

#[test]
fn an_unusable_embedded_path_stops_startup_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be.
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let out = lastclick(&["serve".as_ref()], &taken);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`embedded.path`"), "{stderr}");
}

#[test]
fn a_database_from_a_newer_schema_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let out = lastclick(&["serve".as_ref()], &db);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`embedded.path`") && stderr.contains("newer"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn the_database_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new").join("lastclick.db");
    let store =
        lastclick::store::sqlite::SqliteStore::open(&db, Duration::from_secs(3600)).unwrap();
    drop(store);
    let mode = std::fs::metadata(&db).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_backup_under_click_load_opens_with_the_same_partners_and_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db");
    let copy = dir.path().join("copy.db");
    let db_env = db.to_string_lossy().into_owned();
    let app = TestApp::spawn_with(&[("LASTCLICK_EMBEDDED__PATH", &db_env)]).await;
    for id in ["acme", "globex"] {
        app.create_partner(id).await;
    }
    let click = app.click("/r/acme", None, None).await;
    app.report_when("acme", "", 1).await;
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/events",
            Some(common::MERCHANT),
            signup_and_payment(&click.param("lc_click").unwrap()),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    when(&app, "/v1/partners/acme/balance", common::ADMIN, |b| {
        usd(b, "available") == "60.00"
    })
    .await;

    // Clicks keep coming while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, client, url) = (stop.clone(), app.client.clone(), app.url("/r/globex"));
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.get(&url).send().await.unwrap();
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let source = db.clone();
    let out = tokio::task::spawn_blocking(move || {
        lastclick(&["backup".as_ref(), copy.as_os_str()], &source)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sent > 0);

    // The copy serves the same partners and ledgers.
    let copy_env = dir.path().join("copy.db").to_string_lossy().into_owned();
    let restored = TestApp::spawn_with(&[("LASTCLICK_EMBEDDED__PATH", &copy_env)]).await;
    for path in [
        "/v1/partners/acme",
        "/v1/partners/globex",
        "/v1/partners/acme/ledger",
        "/v1/partners/acme/balance",
    ] {
        assert_eq!(
            restored.get(path, Some(common::ADMIN)).await,
            app.get(path, Some(common::ADMIN)).await,
            "{path}"
        );
    }
    let clicks = restored
        .get("/v1/partners/globex/report", Some(common::ADMIN))
        .await
        .1;
    assert!(
        clicks["totals"]["clicks"].as_u64().unwrap() <= sent,
        "{clicks}"
    );
}

#[test]
fn backup_without_a_database_names_embedded_path() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let out = lastclick(
        &["backup".as_ref(), copy.as_os_str()],
        &dir.path().join("none.db"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`embedded.path`"));
}

#[tokio::test]
async fn ingest_queues_events_into_a_running_embedded_service() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir
        .path()
        .join("lastclick.db")
        .to_string_lossy()
        .into_owned();
    let app = TestApp::spawn_with(&[("LASTCLICK_EMBEDDED__PATH", &db)]).await;
    app.create_partner("acme").await;
    let click = app.click("/r/acme", None, None).await;
    app.report_when("acme", "", 1).await;
    let file = dir.path().join("events.jsonl");
    let lines = [
        json!({"id": "s1", "type": "signup", "customer": "cus_1", "at": at(60_000),
               "billing": "referral", "attribution": {"click_id": click.param("lc_click").unwrap()}}),
        json!({"id": "p1", "type": "payment", "customer": "cus_1", "at": at(50_000),
               "amount": "300.00", "currency": "USD", "period": "month"}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let out = lastclick(
        &["ingest".as_ref(), file.as_os_str()],
        &dir.path().join("lastclick.db"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 2"));
    when(&app, "/v1/partners/acme/balance", common::ADMIN, |b| {
        usd(b, "available") == "60.00"
    })
    .await;
}

/// Runs `serve` on `db` with JSON logs until it has answered a request
/// and a SIGTERM; answers its log lines.
fn json_log_lines(db: &std::path::Path) -> Vec<Value> {
    use std::io::{BufRead, BufReader, Read};
    let mut env = bare_env(db);
    // `log.level`, not the tests' RUST_LOG=warn, decides.
    env.retain(|(k, _)| k != "RUST_LOG");
    env.push(("LASTCLICK_LOG__FORMAT".into(), "json".into()));
    env.push(("LASTCLICK_LOG__LEVEL".into(), "info".into()));
    let mut child = std::process::Command::new(binary())
        .arg("serve")
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut listening = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut listening)
        .unwrap();
    let public = listening
        .split_whitespace()
        .find_map(|f| f.strip_prefix("public="))
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let answer = common::raw_exchange(
        &public,
        b"GET /v1/partners HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with(b"HTTP/1.1 401"));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// `log.format = "json"`: one object per line, with its time, level,
/// target and message; a token the first start generates is logged by that
/// start only, never again.
#[test]
fn json_logs_are_one_object_a_line_and_name_a_generated_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db");
    let first = json_log_lines(&db);
    let admin = kept_setting(&db, "auth.admin_token");
    let merchant = kept_setting(&db, "auth.merchant_token");
    for line in &first {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "no {field}: {line}");
        }
    }
    let shown = |lines: &[Value], token: &str| {
        lines
            .iter()
            .filter(|l| l.to_string().contains(token))
            .count()
    };
    assert_eq!(shown(&first, &admin), 1, "{first:?}");
    assert_eq!(shown(&first, &merchant), 1);
    let generated = first
        .iter()
        .find(|l| l.to_string().contains(&admin))
        .unwrap();
    assert_eq!(generated["level"], "WARN");
    assert_eq!(generated["token"], admin.as_str());
    let again = json_log_lines(&db);
    assert!(
        again.iter().any(|l| l["message"] == "listening"),
        "{again:?}"
    );
    assert_eq!(
        shown(&again, &admin) + shown(&again, &merchant),
        0,
        "{again:?}"
    );
}
