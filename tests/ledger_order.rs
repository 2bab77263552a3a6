//! End-to-end, on the real binaries: the ledger is right whatever the order
//! events arrive in. Each test reproduces one reported case (Redis mode with
//! two workers where a second worker made it happen) and checks the figures
//! in-order application gives.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{command, RedisServer};
use common::{Stack, TestApp, WorkerProcess, ADMIN, MERCHANT};
use serde_json::{json, Value};

/// An RFC 3339 time `ms` milliseconds from now.
fn at(ms: i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    chrono::DateTime::from_timestamp_millis(now + ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn post(app: &TestApp, events: Value) -> (u16, Value) {
    app.send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await
}

async fn post_ok(app: &TestApp, events: Value) {
    let (status, body) = post(app, events).await;
    assert_eq!(status, 202, "{body}");
}

fn signup(id: &str, customer: &str, at: &str, billing: &str, click: &str) -> Value {
    json!({"id": id, "type": "signup", "customer": customer, "at": at,
           "billing": billing, "attribution": {"click_id": click}})
}

fn payment(id: &str, customer: &str, at: &str, amount: &str) -> Value {
    json!({"id": id, "type": "payment", "customer": customer, "at": at,
           "amount": amount, "currency": "USD", "period": "month"})
}

fn refund(id: &str, customer: &str, at: &str, paid: &str, amount: &str) -> Value {
    json!({"id": id, "type": "refund", "customer": customer, "at": at,
           "payment": paid, "amount": amount, "currency": "USD"})
}

/// Waits until `check` holds of `GET path`, and answers the body.
async fn when(app: &TestApp, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.get(path, Some(ADMIN)).await;
        assert_eq!(status, 200, "{body}");
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn usd(balance: &Value) -> Value {
    balance["balances"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["currency"] == "USD").cloned())
        .unwrap_or(Value::Null)
}

/// A partner with a stored click; answers the click id.
async fn partner_with_click(app: &TestApp, id: &str) -> String {
    app.create_partner(id).await;
    let click = app.click(&format!("/r/{id}"), None, None).await;
    app.report_when(id, "", 1).await;
    click.param("lc_click").unwrap()
}

/// Redis mode: serve, and its Redis; workers are started by the test.
async fn redis_stack(
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> (TestApp, Vec<(String, String)>) {
    let mut env: Vec<(String, String)> = vec![
        ("LASTCLICK_REDIS__URL".into(), redis.url()),
        ("LASTCLICK_WORKER__RECLAIM_AFTER".into(), "2s".into()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (TestApp::spawn_with(&pairs).await, env)
}

fn worker(env: &[(String, String)]) -> WorkerProcess {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    WorkerProcess::spawn(&pairs)
}

/// Case 1: a payment read by a worker that dies before acknowledging it,
/// its full refund applied meanwhile by another worker, the payment taken
/// over later: the clawback is not lost.
#[tokio::test]
async fn a_refund_applied_before_its_payment_still_claws_back() {
    let redis = RedisServer::start();
    let (app, env) = redis_stack(&redis, &[]).await;
    let click = partner_with_click(&app, "acme").await;
    let first = worker(&env);
    post_ok(
        &app,
        json!([signup("s1", "cus_1", &at(-3000), "referral", &click)]),
    )
    .await;
    when(&app, "/v1/partners/acme", |p| {
        p["program"]["new_customers_3_months"] == 1
    })
    .await;
    first.kill();

    // A consumer takes the payment and dies with it.
    post_ok(
        &app,
        json!([payment("pay_1", "cus_1", &at(-2000), "300.00")]),
    )
    .await;
    let taken = command(
        redis.port,
        "XREADGROUP GROUP workers ghost COUNT 10 STREAMS lc:{events}:stream >",
    )
    .unwrap();
    assert!(taken.contains("pay_1"), "{taken}");
    post_ok(
        &app,
        json!([refund("ref_1", "cus_1", &at(-1000), "pay_1", "300.00")]),
    )
    .await;
    let _second = worker(&env);
    let _third = worker(&env);

    let ledger = when(&app, "/v1/partners/acme/ledger", |l| {
        l["entries"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    let amounts: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["-60.00", "60.00"], "{ledger}");
    let balance = app.get("/v1/partners/acme/balance", Some(ADMIN)).await.1;
    assert_eq!(usd(&balance)["available"], "0.00", "{balance}");
    let report = app.get("/v1/partners/acme/report", Some(ADMIN)).await.1;
    assert_eq!(report["totals"]["revenue"]["USD"], "0.00", "{report}");
    assert_eq!(report["totals"]["commission"]["USD"], "0.00", "{report}");
}

/// Case 2: a signup applied before the earlier payment that made its
/// partner silver: the rate is the tier at the signup's time, and the
/// commission already posted is corrected by an adjustment entry.
#[tokio::test]
async fn a_late_payment_rerates_a_later_signup_with_an_adjustment() {
    let redis = RedisServer::start();
    let (app, env) = redis_stack(&redis, &[]).await;
    let click = partner_with_click(&app, "acme").await;
    let _workers = [worker(&env), worker(&env)];
    post_ok(
        &app,
        json!([
            signup("s1", "reseller", &at(-5000), "reseller", &click),
            signup("s2", "referral", &at(-3000), "referral", &click),
            payment("p2", "referral", &at(-2000), "100.00"),
        ]),
    )
    .await;
    when(&app, "/v1/partners/acme/balance", |b| {
        usd(b)["available"] == "20.00"
    })
    .await;
    // The reseller's 1,000 a month, paid before the referral customer
    // signed up, arrives last.
    post_ok(
        &app,
        json!([payment("p1", "reseller", &at(-4000), "1000.00")]),
    )
    .await;
    when(&app, "/v1/partners/acme/balance", |b| {
        usd(b)["available"] == "22.00"
    })
    .await;
    let ledger = app.get("/v1/partners/acme/ledger", Some(ADMIN)).await.1;
    let entries = ledger["entries"].as_array().unwrap();
    let newest = &entries[0];
    assert_eq!(
        (&newest["kind"], &newest["id"], &newest["amount"]),
        (&json!("adjustment"), &json!("p2"), &json!("2.00")),
        "{ledger}"
    );
    assert_eq!(entries[1]["kind"], "commission", "the first entry stays");
    let partner = app.get("/v1/partners/acme", Some(ADMIN)).await.1;
    // 12,000 (reseller) + 12 x 100 x (1 - 0.22).
    assert_eq!(partner["program"]["arr"], "12936.00", "{partner}");
}

/// Case 4: a commission becomes available on its payment's date, and a
/// refund before that date cancels it while pending; a payment dated
/// beyond the clock skew is refused.
#[tokio::test]
async fn availability_follows_the_payments_date() {
    let stack = Stack::embedded().await;
    let app = &stack.app;
    let click = partner_with_click(app, "acme").await;
    let (status, body) = post(
        app,
        json!([
            signup("s1", "cus_1", &at(0), "referral", &click),
            payment("pay_1", "cus_1", &at(30 * 86_400_000), "300.00")
        ]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let details = &body["error"]["details"];
    assert_eq!(
        details,
        &json!([{"index": 1, "code": "at_in_future",
        "message": details[0]["message"]}]),
        "{body}"
    );

    // Four minutes ahead: inside the skew, so taken, and pending until then.
    post_ok(
        app,
        json!([
            signup("s1", "cus_1", &at(0), "referral", &click),
            payment("pay_1", "cus_1", &at(240_000), "300.00")
        ]),
    )
    .await;
    let balance = when(app, "/v1/partners/acme/balance", |b| {
        usd(b)["pending"] == "60.00"
    })
    .await;
    assert_eq!(usd(&balance)["available"], "0.00");
    post_ok(
        app,
        json!([refund("ref_1", "cus_1", &at(1000), "pay_1", "300.00")]),
    )
    .await;
    let balance = when(app, "/v1/partners/acme/balance", |b| {
        usd(b)["pending"] == "0.00"
    })
    .await;
    assert_eq!(usd(&balance)["available"], "0.00");
    let (status, _) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(ADMIN),
            json!({"paypal_email": "pay@acme.example"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, refused) = app
        .send_json(
            "POST",
            "/v1/partners/acme/payouts",
            Some(ADMIN),
            json!({"currency": "USD"}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "nothing_available");
}

/// Case 5: two payments in the same second are ordered by their
/// milliseconds, and the ledger shows them.
#[tokio::test]
async fn milliseconds_order_payments_within_a_second() {
    let redis = RedisServer::start();
    let (app, env) = redis_stack(&redis, &[]).await;
    let click = partner_with_click(&app, "acme").await;
    let _workers = [worker(&env), worker(&env)];
    let second = chrono::Utc::now().timestamp() - 10;
    let at_ms = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(second * 1000 + ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    post_ok(
        &app,
        json!([
            signup("s1", "cus_1", &at_ms(0), "reseller", &click),
            signup("s2", "cus_2", &at_ms(1), "referral", &click),
            // The later one has the lower id: only milliseconds order them.
            payment("pay_a", "cus_1", &at_ms(900), "1000.00"),
            payment("pay_b", "cus_1", &at_ms(100), "10.00"),
            payment("pay_c", "cus_2", &at_ms(500), "10.00"),
        ]),
    )
    .await;
    let partner = when(&app, "/v1/partners/acme", |p| {
        p["program"]["arr"] == "12096.00"
    })
    .await;
    assert_eq!(partner["program"]["tier"], "silver", "{partner}");
    let ledger = app.get("/v1/partners/acme/ledger", Some(ADMIN)).await.1;
    let entry = &ledger["entries"][0];
    assert_eq!(entry["id"], "pay_c", "{ledger}");
    assert!(
        entry["at"].as_str().unwrap().contains(".500"),
        "the ledger keeps milliseconds: {ledger}"
    );
}

/// Case 6: a billing system that sends the signup late: the payment waits
/// (parked, listed, counted), then is applied with the signup. A payment
/// whose customer never signs up goes to the dead letter after
/// `worker.park_for`.
#[tokio::test]
async fn events_before_their_signup_wait_for_it() {
    let stack = Stack::embedded_with(&[("LASTCLICK_WORKER__PARK_FOR", "5s")]).await;
    let app = &stack.app;
    let click = partner_with_click(app, "acme").await;
    post_ok(
        app,
        json!([payment("pay_1", "cus_1", &at(-60_000), "300.00")]),
    )
    .await;
    let parked = when(app, "/v1/events/parked", |p| {
        p["events"].as_array().is_some_and(|e| e.len() == 1)
    })
    .await;
    assert_eq!(parked["events"][0]["event"]["id"], "pay_1");
    assert_eq!(parked["events"][0]["reason"], "no_signup");
    assert_eq!(app.metric("lastclick_events_parked").await, 1.0);
    let (status, _) = app.get("/v1/events/parked", Some(MERCHANT)).await;
    assert_eq!(status, 403, "admin only");
    let (status, body) = app.get("/v1/events/parked?limit=0", Some(ADMIN)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_limit"))
    );
    let (status, body) = app.get("/v1/events/dead?since=1", Some(ADMIN)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_query"))
    );

    post_ok(
        app,
        json!([signup("s1", "cus_1", &at(-120_000), "referral", &click)]),
    )
    .await;
    when(app, "/v1/partners/acme/balance", |b| {
        usd(b)["available"] == "60.00"
    })
    .await;
    when(app, "/v1/events/parked", |p| p["events"] == json!([])).await;

    // Never signed up: dead after park_for, with the reason.
    post_ok(app, json!([payment("pay_2", "cus_2", &at(-1000), "10.00")])).await;
    let dead = when(app, "/v1/events/dead", |d| {
        d["events"].as_array().is_some_and(|e| e.len() == 1)
    })
    .await;
    assert_eq!(dead["events"][0]["event"]["id"], "pay_2");
    assert_eq!(dead["events"][0]["reason"], "no_signup_within_park_for");
    when(app, "/v1/events/parked", |p| p["events"] == json!([])).await;
    // A signup after that changes nothing for the dead event.
    post_ok(
        app,
        json!([signup("s2", "cus_2", &at(0), "referral", &click)]),
    )
    .await;
    let partner = when(app, "/v1/partners/acme", |p| {
        p["program"]["new_customers_3_months"] == 2
    })
    .await;
    assert_eq!(partner["program"]["arr"], "2880.00", "{partner}");
}

/// Case 6 in Redis mode, with two workers: the signup comes a moment after
/// its payments, refund and cancel.
#[tokio::test]
async fn early_events_wait_for_a_late_signup_in_redis_mode() {
    let redis = RedisServer::start();
    let (app, env) = redis_stack(&redis, &[]).await;
    let click = partner_with_click(&app, "acme").await;
    let _workers = [worker(&env), worker(&env)];
    post_ok(
        &app,
        json!([
            payment("pay_1", "cus_1", &at(-50_000), "300.00"),
            payment("pay_2", "cus_1", &at(-40_000), "100.00"),
            refund("ref_1", "cus_1", &at(-30_000), "pay_1", "150.00"),
        ]),
    )
    .await;
    when(&app, "/v1/events/parked", |p| {
        p["events"].as_array().is_some_and(|e| e.len() == 3)
    })
    .await;
    post_ok(
        &app,
        json!([signup("s1", "cus_1", &at(-60_000), "referral", &click)]),
    )
    .await;
    // 60 + 20 - 30.
    when(&app, "/v1/partners/acme/balance", |b| {
        usd(b)["available"] == "50.00"
    })
    .await;
    when(&app, "/v1/events/parked", |p| p["events"] == json!([])).await;
    let partner = app.get("/v1/partners/acme", Some(ADMIN)).await.1;
    assert_eq!(partner["program"]["arr"], "960.00", "{partner}");
}
