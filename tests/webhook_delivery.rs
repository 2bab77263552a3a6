//! Webhook delivery against the real binaries, on the embedded store and
//! on Redis, to a receiver on loopback: each event signed with the
//! endpoint's secret, in the ledger's order; a receiver that fails gets
//! every event again, same id, once it answers; a killed worker (or
//! embedded serve) never makes two ids of one change; a deleted endpoint
//! gets nothing more.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::redis_server::RedisServer;
use common::{rfc3339, Stack, TestApp, WorkerProcess, ADMIN, MERCHANT};
use serde_json::{json, Value};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    signature: String,
    body: String,
    answered: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON event")
    }
}

/// A webhook receiver on loopback that records every request; it answers
/// 200 while up, 503 while down.
struct Receiver {
    url: String,
    up: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Milliseconds each answer takes.
    delay_ms: Arc<AtomicU64>,
    /// The most requests it was answering at once.
    most_at_once: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    up: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    delay_ms: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

async fn record(
    State(state): State<ReceiverState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_at_once.fetch_max(now, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let answered = if state.up.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let signature = headers
        .get("lastclick-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.hits.lock().unwrap().push(Hit {
        path,
        signature,
        body,
        answered: answered.as_u16(),
    });
    answered
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = ReceiverState {
            up: Arc::new(AtomicBool::new(true)),
            hits: Arc::new(Mutex::new(Vec::new())),
            delay_ms: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            most_at_once: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(record))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            up: state.up,
            hits: state.hits,
            delay_ms: state.delay_ms,
            most_at_once: state.most_at_once,
        }
    }

    /// The requests to `/<path>` that were answered 200.
    fn delivered(&self, path: &str) -> Vec<Hit> {
        let hits = self.hits.lock().unwrap();
        hits.iter()
            .filter(|h| h.path == path && h.answered == 200)
            .cloned()
            .collect()
    }

    fn all(&self, path: &str) -> Vec<Hit> {
        let hits = self.hits.lock().unwrap();
        hits.iter().filter(|h| h.path == path).cloned().collect()
    }

    /// Waits until `/<path>` has been delivered `n` events.
    async fn delivered_when(&self, path: &str, n: usize) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let delivered = self.delivered(path);
            if distinct_ids(&delivered).len() >= n {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "/{path} got {} of {n} events: {:?}",
                distinct_ids(&delivered).len(),
                types(&delivered)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn distinct_ids(hits: &[Hit]) -> BTreeSet<String> {
    hits.iter()
        .map(|h| h.json()["id"].as_str().unwrap().to_owned())
        .collect()
}

fn types(hits: &[Hit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.json()["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Registers an endpoint at the receiver's `/<path>`; answers its id and
/// secret.
async fn subscribe(app: &TestApp, receiver: &Receiver, path: &str) -> (String, String) {
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/webhooks",
            Some(ADMIN),
            json!({"url": format!("{}/{path}", receiver.url),
                   "events": ["customer.attributed", "commission.created",
                              "commission.clawed_back", "payout.requested"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

/// A partner with a stored click; answers the click id.
async fn partner_with_click(app: &TestApp, id: &str) -> String {
    app.create_partner(id).await;
    let click = app.click(&format!("/r/{id}"), None, None).await;
    app.report_when(id, "", 1).await;
    click.param("lc_click").unwrap()
}

fn signup(customer: &str, at: i64, click: &str) -> Value {
    json!({"id": format!("s_{customer}"), "type": "signup", "customer": customer,
           "at": rfc3339(at), "billing": "referral", "attribution": {"click_id": click}})
}

fn payment(id: &str, customer: &str, at: i64, amount: &str) -> Value {
    json!({"id": id, "type": "payment", "customer": customer, "at": rfc3339(at),
           "amount": amount, "currency": "USD", "period": "month"})
}

async fn post_events(app: &TestApp, events: Value) {
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await;
    assert_eq!(status, 202, "{body}");
}

const FAST_RETRIES: [(&str, &str); 3] = [
    ("LASTCLICK_WEBHOOKS__ALLOW_HTTP", "true"),
    ("LASTCLICK_WEBHOOKS__RETRY_FIRST", "100ms"),
    ("LASTCLICK_WEBHOOKS__RETRY_MAX", "300ms"),
];

/// A payment then its refund: `customer.attributed`, `commission.created`,
/// `commission.clawed_back`, in that order, each signed with the secret.
/// The deliveries are listed and one is resent with the same id; after
/// the endpoint is deleted, only the other endpoint hears of the next
/// payment.
async fn events_are_signed_in_order_and_stop_when_deleted(app: &TestApp) {
    let receiver = Receiver::start().await;
    let (endpoint, secret) = subscribe(app, &receiver, "a").await;
    let click = partner_with_click(app, "acme").await;
    let now = chrono::Utc::now().timestamp() - 60;
    post_events(
        app,
        json!([
            signup("cus_1", now, &click),
            payment("pay_1", "cus_1", now + 1, "100.00")
        ]),
    )
    .await;
    let refund = json!({"id": "ref_1", "type": "refund", "customer": "cus_1",
        "at": rfc3339(now + 2), "payment": "pay_1", "amount": "100.00", "currency": "USD"});
    receiver.delivered_when("a", 2).await;
    post_events(app, json!([refund])).await;
    let hits = receiver.delivered_when("a", 3).await;
    assert_eq!(
        types(&hits),
        [
            "customer.attributed",
            "commission.created",
            "commission.clawed_back"
        ]
    );
    let now_unix = chrono::Utc::now().timestamp();
    for hit in &hits {
        assert!(
            lastclick::webhooks::verify(
                &secret,
                &hit.signature,
                hit.body.as_bytes(),
                now_unix,
                300
            ),
            "{hit:?}"
        );
        assert!(!lastclick::webhooks::verify(
            "whsec_other",
            &hit.signature,
            hit.body.as_bytes(),
            now_unix,
            300
        ));
    }
    let created = hits[1].json();
    assert_eq!(created["partner"], "acme");
    assert_eq!(created["data"]["amount"], "20.00");
    assert_eq!(created["data"]["customer"], "cus_1");
    assert_eq!(hits[2].json()["data"]["amount"], "-20.00");
    assert_eq!(hits[0].json()["data"]["campaign"], "default_link");

    let path = format!("/v1/webhooks/{endpoint}/deliveries");
    let (status, list) = app.get(&path, Some(ADMIN)).await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["succeeded"; 3], "{list}");
    assert_eq!(
        list["deliveries"][0]["event_type"],
        "commission.clawed_back"
    );
    let (_, page) = app.get(&format!("{path}?limit=1"), Some(ADMIN)).await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, older) = app
        .get(&format!("{path}?limit=5&cursor={cursor}"), Some(ADMIN))
        .await;
    assert_eq!(older["deliveries"].as_array().unwrap().len(), 2, "{older}");

    let first_id = hits[0].json()["id"].as_str().unwrap().to_owned();
    let resend = format!("/v1/webhooks/{endpoint}/deliveries/{first_id}/resend");
    let (status, resent) = app
        .send_json("POST", &resend, Some(ADMIN), json!(null))
        .await;
    assert_eq!(status, 200, "{resent}");
    assert_eq!(
        (&resent["status"], &resent["attempts"]),
        (&json!("succeeded"), &json!(2))
    );
    let again = receiver.delivered("a");
    assert_eq!(again.len(), 4);
    assert_eq!(again[3].body, hits[0].body, "the same event, same id");
    for (path, code) in [
        (
            format!("/v1/webhooks/{endpoint}/deliveries/evt_none/resend"),
            404,
        ),
        (
            "/v1/webhooks/wh_none/deliveries/evt_none/resend".to_owned(),
            404,
        ),
    ] {
        let (status, _) = app.send_json("POST", &path, Some(ADMIN), json!(null)).await;
        assert_eq!(status, code, "{path}");
    }
    let (status, _) = app.get(&format!("{path}?cursor=x"), Some(ADMIN)).await;
    assert_eq!(status, 400);
    let (status, _) = app.get(&path, Some(MERCHANT)).await;
    assert_eq!(status, 403);

    // Deleted: the next payment goes to `b` only.
    subscribe(app, &receiver, "b").await;
    let delete = format!("/v1/webhooks/{endpoint}");
    let (status, _) = app
        .send_json("DELETE", &delete, Some(ADMIN), json!(null))
        .await;
    assert_eq!(status, 204);
    post_events(app, json!([payment("pay_2", "cus_1", now + 3, "50.00")])).await;
    let b = receiver.delivered_when("b", 1).await;
    assert_eq!(types(&b), ["commission.created"]);
    assert_eq!(receiver.all("a").len(), 4, "nothing after the delete");
    let (status, _) = app.get(&path, Some(ADMIN)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn embedded_events_are_signed_in_order_and_stop_when_deleted() {
    let setup = Stack::embedded_with(&FAST_RETRIES).await;
    events_are_signed_in_order_and_stop_when_deleted(&setup.app).await;
}

#[tokio::test]
async fn redis_events_are_signed_in_order_and_stop_when_deleted() {
    let setup = Stack::redis_with(&FAST_RETRIES).await;
    events_are_signed_in_order_and_stop_when_deleted(&setup.app).await;
}

/// The receiver fails for a while: every event is retried, with the same
/// id, and once it answers it gets all of them, in order.
async fn a_receiver_down_then_up_gets_everything_in_order(
    app: &TestApp,
    metrics: impl AsyncMetric,
) {
    let receiver = Receiver::start().await;
    receiver.up.store(false, Ordering::SeqCst);
    let (endpoint, _) = subscribe(app, &receiver, "down").await;
    let click = partner_with_click(app, "acme").await;
    let now = chrono::Utc::now().timestamp() - 60;
    let mut events = vec![signup("cus_1", now, &click)];
    for i in 1..=4 {
        events.push(payment(
            &format!("pay_{i}"),
            "cus_1",
            now + i,
            &format!("{i}0.00"),
        ));
    }
    post_events(app, json!(events)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.all("down").len() < 4 {
        assert!(Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = app
        .get(&format!("/v1/webhooks/{endpoint}/deliveries"), Some(ADMIN))
        .await;
    let pending = &list["deliveries"][0];
    assert_eq!(pending["status"], "pending", "{list}");
    assert!(pending["attempts"].as_u64().unwrap() >= 1, "{list}");
    assert_eq!(pending["response_status"], 503, "{list}");
    assert!(
        metrics
            .value("lastclick_webhook_deliveries_total{outcome=\"retrying\"}")
            .await
            >= 4.0
    );
    let oldest = "lastclick_webhook_oldest_undelivered_seconds";
    metrics.eventually(oldest, |age| age >= 1.0).await;

    receiver.up.store(true, Ordering::SeqCst);
    let delivered = receiver.delivered_when("down", 5).await;
    assert_eq!(
        types(&delivered),
        [
            "customer.attributed",
            "commission.created",
            "commission.created",
            "commission.created",
            "commission.created"
        ]
    );
    let amounts: Vec<Value> = delivered[1..]
        .iter()
        .map(|h| h.json()["data"]["amount"].clone())
        .collect();
    assert_eq!(
        amounts,
        [json!("2.00"), json!("4.00"), json!("6.00"), json!("8.00")]
    );
    let tried = distinct_ids(&receiver.all("down"));
    assert_eq!(tried, distinct_ids(&delivered), "a retry keeps its id");
    assert!(
        metrics
            .value("lastclick_webhook_deliveries_total{outcome=\"succeeded\"}")
            .await
            >= 5.0
    );
    metrics.eventually(oldest, |age| age == 0.0).await;
}

/// Reads one series of the metrics of whichever process delivers.
trait AsyncMetric {
    async fn value(&self, series: &str) -> f64;

    /// Waits until `series` satisfies `check`.
    async fn eventually(&self, series: &str, check: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(series).await;
            if check(value) {
                return;
            }
            assert!(Instant::now() < deadline, "{series} stayed at {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl AsyncMetric for &TestApp {
    async fn value(&self, series: &str) -> f64 {
        self.metric(series).await
    }
}

impl AsyncMetric for &WorkerProcess {
    async fn value(&self, series: &str) -> f64 {
        self.metric(series).await
    }
}

#[tokio::test]
async fn embedded_a_receiver_down_then_up_gets_everything_in_order() {
    let setup = Stack::embedded_with(&FAST_RETRIES).await;
    a_receiver_down_then_up_gets_everything_in_order(&setup.app, &setup.app).await;
}

#[tokio::test]
async fn redis_a_receiver_down_then_up_gets_everything_in_order() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut env = vec![("LASTCLICK_REDIS__URL", url.as_str())];
    env.extend_from_slice(&FAST_RETRIES);
    let app = TestApp::spawn_with(&env).await;
    let worker = WorkerProcess::spawn(&env);
    a_receiver_down_then_up_gets_everything_in_order(&app, &worker).await;
}

/// A delivery still failing `give_up_after` after its event is marked
/// failed, and the next event goes.
#[tokio::test]
async fn a_delivery_failing_too_long_is_marked_failed_and_the_next_goes() {
    let mut env = FAST_RETRIES.to_vec();
    env.push(("LASTCLICK_WEBHOOKS__GIVE_UP_AFTER", "1s"));
    let app = TestApp::spawn_with(&env).await;
    let receiver = Receiver::start().await;
    receiver.up.store(false, Ordering::SeqCst);
    let (endpoint, _) = subscribe(&app, &receiver, "flaky").await;
    let click = partner_with_click(&app, "acme").await;
    let now = chrono::Utc::now().timestamp() - 60;
    post_events(&app, json!([signup("cus_1", now, &click)])).await;
    let path = format!("/v1/webhooks/{endpoint}/deliveries");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = app.get(&path, Some(ADMIN)).await;
        if list["deliveries"][0]["status"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "never failed: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.metric("lastclick_webhook_deliveries_total{outcome=\"failed\"}")
            .await
            >= 1.0
    );
    receiver.up.store(true, Ordering::SeqCst);
    post_events(&app, json!([payment("pay_1", "cus_1", now + 1, "10.00")])).await;
    let delivered = receiver.delivered_when("flaky", 1).await;
    assert_eq!(types(&delivered), ["commission.created"]);
    // Resent by hand, the failed one now arrives.
    let failed = receiver.all("flaky")[0].json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resend = format!("{path}/{failed}/resend");
    let (status, resent) = app
        .send_json("POST", &resend, Some(ADMIN), json!(null))
        .await;
    assert_eq!(
        (status, &resent["status"]),
        (200, &json!("succeeded")),
        "{resent}"
    );
}

/// Events for 40 customers (a signup and a payment each) while the
/// process applying them is killed mid-way and started again: every
/// change arrives under exactly one id (a retry may repeat it).
async fn check_exactly_once(app: &TestApp, receiver: &Receiver) {
    let hits = receiver.delivered_when("once", 80).await;
    let mut ids_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for hit in &hits {
        let event = hit.json();
        let change = match event["type"].as_str().unwrap() {
            "customer.attributed" => format!("attributed {}", event["data"]["customer"]),
            "commission.created" => format!("ledger {}", event["data"]["seq"]),
            other => panic!("unexpected {other}"),
        };
        ids_of
            .entry(change)
            .or_default()
            .insert(event["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids_of.len(), 80, "{ids_of:?}");
    assert!(ids_of.values().all(|ids| ids.len() == 1), "{ids_of:?}");
    let (_, ledger) = app
        .get("/v1/partners/acme/ledger?limit=100", Some(ADMIN))
        .await;
    assert_eq!(ledger["entries"].as_array().unwrap().len(), 40);
}

fn forty_customers(click: &str) -> Value {
    let now = chrono::Utc::now().timestamp() - 100;
    let mut events = Vec::new();
    for i in 0..40 {
        let customer = format!("cus_{i}");
        events.push(signup(&customer, now + i, click));
        events.push(payment(
            &format!("pay_{i}"),
            &customer,
            now + 50 + i,
            "10.00",
        ));
    }
    json!(events)
}

async fn delivered_some(receiver: &Receiver) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.delivered("once").is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn redis_a_killed_worker_sends_each_event_once_by_id() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut env = vec![
        ("LASTCLICK_REDIS__URL", url.as_str()),
        ("LASTCLICK_WORKER__RECLAIM_AFTER", "1s"),
        // The dead worker's delivery lease lasts this and 5 s.
        ("LASTCLICK_WEBHOOKS__TIMEOUT", "1s"),
    ];
    env.extend_from_slice(&FAST_RETRIES);
    let app = TestApp::spawn_with(&env).await;
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver, "once").await;
    let click = partner_with_click(&app, "acme").await;
    let first = WorkerProcess::spawn(&env);
    post_events(&app, forty_customers(&click)).await;
    delivered_some(&receiver).await;
    first.kill();
    let _second = WorkerProcess::spawn(&env);
    check_exactly_once(&app, &receiver).await;
}

#[tokio::test]
async fn embedded_a_killed_serve_sends_each_event_once_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lastclick.db").display().to_string();
    let mut env = vec![("LASTCLICK_EMBEDDED__PATH", db.as_str())];
    env.extend_from_slice(&FAST_RETRIES);
    let app = TestApp::spawn_with(&env).await;
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver, "once").await;
    let click = partner_with_click(&app, "acme").await;
    post_events(&app, forty_customers(&click)).await;
    delivered_some(&receiver).await;
    app.kill();
    let app = TestApp::spawn_with(&env).await;
    check_exactly_once(&app, &receiver).await;
}

/// An endpoint that falls more than `webhooks.max_backlog` events behind
/// skips its oldest, counted, and gets the rest once its receiver is back.
#[tokio::test]
async fn an_endpoint_too_far_behind_skips_its_oldest_events() {
    let mut env = FAST_RETRIES.to_vec();
    env.push(("LASTCLICK_WEBHOOKS__MAX_BACKLOG", "3"));
    let app = TestApp::spawn_with(&env).await;
    let receiver = Receiver::start().await;
    receiver.up.store(false, Ordering::SeqCst);
    subscribe(&app, &receiver, "behind").await;
    let click = partner_with_click(&app, "acme").await;
    let now = chrono::Utc::now().timestamp() - 60;
    let mut events = vec![signup("cus_1", now, &click)];
    for i in 1..=6 {
        events.push(payment(&format!("pay_{i}"), "cus_1", now + i, "10.00"));
    }
    post_events(&app, json!(events)).await;
    let skipped = "lastclick_webhook_events_skipped_total";
    (&app).eventually(skipped, |n| n == 4.0).await;
    receiver.up.store(true, Ordering::SeqCst);
    let delivered = receiver.delivered_when("behind", 3).await;
    let paid: Vec<Value> = delivered
        .iter()
        .map(|h| h.json()["data"]["id"].clone())
        .collect();
    assert_eq!(paid, [json!("pay_4"), json!("pay_5"), json!("pay_6")]);
}

/// A partner whose referral customer pays 600 a month (7,200 a year less
/// the 20 % commission: 5,760 of ARR, silver) and
/// then requests a payout that is paid: `partner.tier_changed`,
/// `payout.requested` and `payout.paid`, each as the API shows it.
async fn payouts_and_tier_changes_are_sent(app: &TestApp) {
    let receiver = Receiver::start().await;
    let (status, _) = app
        .send_json(
            "POST",
            "/v1/webhooks",
            Some(ADMIN),
            json!({"url": format!("{}/money", receiver.url),
                   "events": ["partner.tier_changed", "payout.requested", "payout.paid"]}),
        )
        .await;
    assert_eq!(status, 201);
    let acme = app.partner_earning("acme", &["600.00"]).await;
    app.usd_when("acme", "available", "120.00").await;
    let (status, payout) = app
        .send_json(
            "POST",
            "/v1/partners/acme/payouts",
            Some(&acme),
            json!({"currency": "USD"}),
        )
        .await;
    assert_eq!(status, 201, "{payout}");
    let path = format!("/v1/payouts/{}", payout["id"].as_str().unwrap());
    let (status, settled) = app
        .send_json(
            "PATCH",
            &path,
            Some(ADMIN),
            json!({"status": "paid", "reference": "7XK"}),
        )
        .await;
    assert_eq!(status, 200, "{settled}");
    let hits = receiver.delivered_when("money", 3).await;
    assert_eq!(
        types(&hits),
        ["partner.tier_changed", "payout.requested", "payout.paid"]
    );
    let tier = hits[0].json();
    assert_eq!(
        (&tier["data"]["from"], &tier["data"]["to"]),
        (&json!("bronze"), &json!("silver"))
    );
    assert_eq!(hits[1].json()["data"], payout);
    assert_eq!(hits[2].json()["data"], settled);
}

#[tokio::test]
async fn embedded_payouts_and_tier_changes_are_sent() {
    let setup = Stack::embedded_with(&FAST_RETRIES).await;
    payouts_and_tier_changes_are_sent(&setup.app).await;
}

#[tokio::test]
async fn redis_payouts_and_tier_changes_are_sent() {
    let setup = Stack::redis_with(&FAST_RETRIES).await;
    payouts_and_tier_changes_are_sent(&setup.app).await;
}

/// Two Redis workers, and a receiver slow enough that sending its events
/// takes longer than the delivery lease: the holder renews it before each
/// attempt, so the other never delivers meanwhile, and the receiver never
/// has two requests at once, nor an event out of order.
#[tokio::test]
async fn two_workers_never_deliver_to_one_endpoint_at_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut env = vec![
        ("LASTCLICK_REDIS__URL", url.as_str()),
        // A lease of 1 s and 5 s; sending the events takes about 8 s.
        ("LASTCLICK_WEBHOOKS__TIMEOUT", "1s"),
    ];
    env.extend_from_slice(&FAST_RETRIES);
    let app = TestApp::spawn_with(&env).await;
    let receiver = Receiver::start().await;
    receiver.delay_ms.store(700, Ordering::SeqCst);
    subscribe(&app, &receiver, "slow").await;
    let click = partner_with_click(&app, "acme").await;
    let _first = WorkerProcess::spawn(&env);
    let _second = WorkerProcess::spawn(&env);
    let now = chrono::Utc::now().timestamp() - 60;
    let mut events = vec![signup("cus_1", now, &click)];
    for i in 1..=11 {
        events.push(payment(&format!("pay_{i}"), "cus_1", now + i, "10.00"));
    }
    post_events(&app, json!(events)).await;
    let delivered = receiver.delivered_when("slow", 12).await;
    assert_eq!(receiver.most_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(delivered.len(), 12, "each once: {:?}", types(&delivered));
    let paid: Vec<Value> = delivered[1..]
        .iter()
        .map(|h| h.json()["data"]["id"].clone())
        .collect();
    let expected: Vec<Value> = (1..=11).map(|i| json!(format!("pay_{i}"))).collect();
    assert_eq!(paid, expected);
}
