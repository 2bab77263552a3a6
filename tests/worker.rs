//! Exactly-once on Redis: a worker killed with SIGKILL in the middle of
//! thousands of events, and two workers on one stream, leave every balance
//! and every ledger as if each event had been applied once.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{TestApp, WorkerProcess, ADMIN, MERCHANT};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const PARTNERS: usize = 3;
const CUSTOMERS: usize = 300;
const PAYMENTS: usize = 10;

/// Signups of every customer, then yearly payments small enough that no
/// partner leaves bronze (so every rate is 20 % whatever the order), and
/// refunds of some. Answers the events and each partner's expected
/// commission total and ledger length.
/// Times are milliseconds after `now` (seconds), all within the clock
/// skew, so none is refused as being in the future. Callers pass a `now`
/// a few seconds back, so every payment has happened and its commission is
/// available when checked (availability follows the payment's date).
fn scenario(clicks: &[String], now: i64) -> (Vec<Value>, Vec<(Decimal, usize)>) {
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(now * 1000 + ms)
            .unwrap()
            .to_rfc3339()
    };
    let mut events = Vec::new();
    let mut expected = vec![(Decimal::ZERO, 0usize); PARTNERS];
    for c in 0..CUSTOMERS {
        events.push(
            json!({"id": format!("s{c}"), "type": "signup", "customer": format!("c{c}"),
            "at": at(c as i64), "billing": "referral",
            "attribution": {"click_id": clicks[c % PARTNERS]}}),
        );
    }
    for c in 0..CUSTOMERS {
        for p in 0..PAYMENTS {
            let cents = 1000 + ((c * 7 + p * 13) % 2000) as i64;
            let amount = Decimal::new(cents, 2);
            events.push(json!({"id": format!("p{c}_{p}"), "type": "payment",
                "customer": format!("c{c}"), "at": at(1000 + p as i64), "amount": amount.to_string(),
                "currency": "USD", "period": "year"}));
            let commission = (amount * Decimal::new(20, 2))
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            expected[c % PARTNERS].0 += commission;
            expected[c % PARTNERS].1 += 1;
            if p == 0 && c % 10 == 0 {
                events.push(json!({"id": format!("r{c}"), "type": "refund",
                    "customer": format!("c{c}"), "at": at(2000), "payment": format!("p{c}_0"),
                    "amount": amount.to_string(), "currency": "USD"}));
                expected[c % PARTNERS].0 -= commission;
                expected[c % PARTNERS].1 += 1;
            }
        }
    }
    (events, expected)
}

async fn setup(redis: &RedisServer) -> (TestApp, Vec<String>) {
    let url = redis.url();
    let app = TestApp::spawn_with(&[("LASTCLICK_REDIS__URL", url.as_str())]).await;
    let mut clicks = Vec::new();
    for p in 0..PARTNERS {
        let id = format!("p{p}");
        app.create_partner(&id).await;
        clicks.push(
            app.click(&format!("/r/{id}"), None, None)
                .await
                .param("lc_click")
                .unwrap(),
        );
        app.report_when(&id, "", 1).await;
    }
    (app, clicks)
}

async fn post_all(app: &TestApp, events: &[Value]) {
    for chunk in events.chunks(1000) {
        let (status, body) = app
            .send_json("POST", "/v1/events", Some(MERCHANT), json!(chunk))
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

async fn available(app: &TestApp, partner: &str) -> Decimal {
    let (_, body) = app
        .get(&format!("/v1/partners/{partner}/balance"), Some(ADMIN))
        .await;
    body["balances"]
        .as_array()
        .and_then(|b| b.first())
        .map(|b| b["available"].as_str().unwrap().parse().unwrap())
        .unwrap_or_default()
}

async fn ledger_len(app: &TestApp, partner: &str) -> usize {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
        let (_, page) = app
            .get(
                &format!("/v1/partners/{partner}/ledger?limit=500{query}"),
                Some(ADMIN),
            )
            .await;
        count += page["entries"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return count,
        }
    }
}

/// Waits until every partner's ledger has its expected length, then checks
/// the balances to the cent.
async fn assert_applied_once(app: &TestApp, expected: &[(Decimal, usize)]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for (p, (total, entries)) in expected.iter().enumerate() {
        let partner = format!("p{p}");
        loop {
            let len = ledger_len(app, &partner).await;
            assert!(
                len <= *entries,
                "{partner}: {len} ledger entries, more than {entries}"
            );
            if len == *entries {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{partner}: only {len} of {entries} entries"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(available(app, &partner).await, *total, "{partner}");
    }
}

const WORKER_ENV: [(&str, &str); 1] = [("LASTCLICK_WORKER__RECLAIM_AFTER", "1s")];

#[tokio::test]
async fn a_worker_killed_mid_stream_leaves_every_commission_applied_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [WORKER_ENV[0], ("LASTCLICK_REDIS__URL", url.as_str())];
    let (app, clicks) = setup(&redis).await;
    let (events, expected) = scenario(&clicks, chrono::Utc::now().timestamp() - 5);
    assert!(events.len() > 3000);
    let first = WorkerProcess::spawn(&env);
    // Kill it once it is under way, not before and not after: once it has
    // applied some of the first events, while it takes the rest (a worker
    // takes up to 2,000 events at once, so waiting for its first
    // commission with the whole stream queued could find it done).
    let (head, rest) = events.split_at(1000);
    post_all(&app, head).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while available(&app, "p0").await.is_zero() {
        assert!(Instant::now() < deadline, "the first worker never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    post_all(&app, rest).await;
    first.kill();
    assert!(
        ledger_len(&app, "p0").await < expected[0].1,
        "the first worker finished before it was killed; the test proves nothing"
    );
    let _second = WorkerProcess::spawn(&env);
    assert_applied_once(&app, &expected).await;
}

#[tokio::test]
async fn two_workers_on_one_stream_apply_each_event_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [WORKER_ENV[0], ("LASTCLICK_REDIS__URL", url.as_str())];
    let (app, clicks) = setup(&redis).await;
    let (events, expected) = scenario(&clicks, chrono::Utc::now().timestamp() - 5);
    let _a = WorkerProcess::spawn(&env);
    let _b = WorkerProcess::spawn(&env);
    post_all(&app, &events).await;
    assert_applied_once(&app, &expected).await;
    // Sent again, every event is a duplicate and nothing moves.
    post_all(&app, &events).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_applied_once(&app, &expected).await;
}

#[tokio::test]
async fn ingest_queues_a_file_and_names_the_lines_it_rejects() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [WORKER_ENV[0], ("LASTCLICK_REDIS__URL", url.as_str())];
    let (app, clicks) = setup(&redis).await;
    let now = chrono::Utc::now().timestamp();
    let at = chrono::DateTime::from_timestamp(now, 0)
        .unwrap()
        .to_rfc3339();
    let lines = [
        json!({"id": "s1", "type": "signup", "customer": "c1", "at": at, "billing": "referral",
               "attribution": {"click_id": clicks[0]}})
        .to_string(),
        json!({"id": "p1", "type": "payment", "customer": "c1", "at": at, "amount": "50.00",
               "currency": "USD", "period": "month"})
        .to_string(),
        r#"{"id": "p2", "type": "payment", "amount": 5}"#.to_owned(),
        // One line: a JSON Lines file.
        format!(
            r#"{{"id": "p3", "type": "payment", "customer": "c1", "at": "{at}", "amount": "1.00", "currency": "USD", "period": "month", "amount": "900.00"}}"#
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let run = || {
        let mut all = common::base_env();
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        std::process::Command::new(common::binary())
            .arg("ingest")
            .arg(&file)
            .env_clear()
            .envs(all)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(!first.status.success(), "a rejected line fails the run");
    assert!(
        stdout.contains("accepted 2, duplicates 0, rejected 2"),
        "{stdout}"
    );
    assert!(stdout.contains("line 3: "), "{stdout}");
    assert!(
        stdout.contains("line 4: duplicate_key") && stdout.contains("`amount`"),
        "{stdout}"
    );
    let _worker = WorkerProcess::spawn(&env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while available(&app, "p0").await != Decimal::new(1000, 2) {
        assert!(
            Instant::now() < deadline,
            "the ingested events were never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = r#"lastclick_events_processed_total{outcome="applied",type="payment"}"#;
    assert_eq!(_worker.metric(applied).await, 1.0);
    assert_eq!(app.metric("lastclick_worker_lag_events").await, 0.0);
    assert_eq!(app.metric("lastclick_worker_pending_events").await, 0.0);
    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("accepted 0, duplicates 2, rejected 2"),
        "{stdout}"
    );
    // Embedded, ingest writes the database: tests/persistence.rs.
}

/// An entry of the Redis event stream that cannot be read (a broken
/// producer, a hand-written `XADD`) was skipped without being
/// acknowledged, so it came back every `worker.reclaim_after` and
/// `lastclick_worker_pending_events` never drained. It goes to the dead
/// letter: acknowledged, counted, listed for an admin; the good events
/// around it are applied.
#[tokio::test]
async fn an_unreadable_stream_entry_is_dead_lettered_and_the_pending_count_drains() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [WORKER_ENV[0], ("LASTCLICK_REDIS__URL", url.as_str())];
    let (app, clicks) = setup(&redis).await;
    let reply =
        common::redis_server::command(redis.port, "XADD lc:{events}:stream * e not-an-event")
            .expect("redis answers");
    assert!(!reply.starts_with('-'), "{reply}");
    let (events, expected) = scenario(&clicks, chrono::Utc::now().timestamp() - 5);
    post_all(&app, &events).await;
    let worker = WorkerProcess::spawn(&env);
    let dead = "lastclick_events_dead_lettered_total";
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.metric(dead).await < 1.0
        || app.metric("lastclick_worker_pending_events").await > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "dead-lettered {}, pending {}",
            worker.metric(dead).await,
            app.metric("lastclick_worker_pending_events").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past reclaim_after, nothing comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(worker.metric(dead).await, 1.0);
    assert_eq!(app.metric("lastclick_worker_pending_events").await, 0.0);
    let (status, listed) = app.get("/v1/events/unreadable", Some(ADMIN)).await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed["events"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["raw"], "not-an-event");
    assert!(
        entries[0]["reason"].as_str().unwrap().contains("expected"),
        "{listed}"
    );
    assert_applied_once(&app, &expected).await;
}

/// An entry of a partner's inbox that is not a routed event (a damaged
/// entry, one written by hand) would stop the partner's book step for
/// good: it goes to the dead letter as the step takes it off the inbox,
/// and the events behind it are applied.
#[tokio::test]
async fn an_unreadable_inbox_entry_is_dead_lettered_and_the_book_step_goes_on() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [WORKER_ENV[0], ("LASTCLICK_REDIS__URL", url.as_str())];
    let (app, clicks) = setup(&redis).await;
    for command in [
        "RPUSH lc:{p:p0}:inbox not-an-item",
        "SADD lc:{events}:ready p0",
    ] {
        let reply = common::redis_server::command(redis.port, command).expect("redis answers");
        assert!(!reply.starts_with('-'), "{command}: {reply}");
    }
    let (events, expected) = scenario(&clicks, chrono::Utc::now().timestamp() - 5);
    post_all(&app, &events).await;
    let worker = WorkerProcess::spawn(&env);
    assert_applied_once(&app, &expected).await;
    assert_eq!(
        worker.metric("lastclick_events_dead_lettered_total").await,
        1.0
    );
    let (status, listed) = app.get("/v1/events/unreadable", Some(ADMIN)).await;
    assert_eq!(status, 200, "{listed}");
    let entries = listed["events"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["delivery"], "inbox:p0");
    assert_eq!(entries[0]["raw"], "not-an-item");
    let left = common::redis_server::command(redis.port, "LLEN lc:{p:p0}:inbox").unwrap();
    assert_eq!(left.trim(), ":0", "the inbox drained");
}

/// An event whose routing meets a stored record that cannot be read (here
/// its customer's claim, damaged on disk) would be retried forever, every
/// `worker.reclaim_after`. After three such attempts it goes to the dead
/// letter, with the reason; the queue drains. (A store that is down is
/// not a reason: those events wait.)
#[tokio::test]
async fn an_event_that_meets_a_corrupt_record_three_times_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db");
    let db_text = db.to_string_lossy().into_owned();
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_EMBEDDED__PATH", db_text.as_str()),
        WORKER_ENV[0],
    ])
    .await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "INSERT INTO claims (customer, referral) VALUES ('cus_bad', 'not json')",
        [],
    )
    .unwrap();
    let now = chrono::Utc::now();
    let payment = json!({"id": "pay_1", "type": "payment", "customer": "cus_bad",
        "at": now.to_rfc3339(), "amount": "10.00", "currency": "USD", "period": "month"});
    post_all(&app, &[payment]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = app.get("/v1/events/unreadable", Some(ADMIN)).await;
        if listed["events"].as_array().is_some_and(|e| !e.is_empty()) {
            let entry = &listed["events"][0];
            assert!(entry["raw"].as_str().unwrap().contains("pay_1"), "{listed}");
            assert!(
                entry["reason"].as_str().unwrap().contains("corrupt"),
                "{listed}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.metric("lastclick_events_dead_lettered_total").await,
        1.0
    );
    let attempts = r#"lastclick_store_errors_total{operation="apply_event"}"#;
    assert_eq!(app.metric(attempts).await, 3.0, "three attempts, not one");
    assert_eq!(app.metric("lastclick_worker_pending_events").await, 0.0);
    assert_eq!(app.metric("lastclick_worker_lag_events").await, 0.0);
}
