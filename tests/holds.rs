//! Click-to-signup timing and holds against the real binary, on the
//! embedded store and on Redis (a `lastclick worker` process), with
//! `attribution.min_click_age = 5s`: signups 2 s after their click are
//! credited but their commissions held; an admin releases one (its money
//! becomes available) and rejects the other (a ledger entry takes it
//! back); a signup later than the minimum is not held; the partner's
//! histogram counts each signup in its bucket.

mod common;

use std::time::{Duration, Instant};

use common::{rfc3339, Stack, TestApp, ADMIN, MERCHANT};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const MIN_CLICK_AGE: (&str, &str) = ("LASTCLICK_ATTRIBUTION__MIN_CLICK_AGE", "5s");

async fn decide(app: &TestApp, customer: &str, token: &str, action: &str) -> (u16, Value) {
    let path = format!("/v1/holds/{customer}");
    app.send_json("POST", &path, Some(token), json!({ "action": action }))
        .await
}

/// The partner's histogram once it counts `signups`.
async fn histogram_when(app: &TestApp, partner: &str, signups: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app
            .get(&format!("/v1/partners/{partner}"), Some(ADMIN))
            .await;
        assert_eq!(status, 200, "{body}");
        let histogram = body["click_to_signup_90_days"].clone();
        let counted: u64 = histogram
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if counted == signups {
            return histogram;
        }
        assert!(Instant::now() < deadline, "never {signups} signups: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn holds(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/holds{query}"), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    body["holds"].as_array().unwrap().clone()
}

/// Signs up `fast1` and `fast2` 2 s after the partner's click, each with a
/// payment, and `slow` 12 s after it.
async fn signups_after_one_click(app: &TestApp) {
    app.create_partner("acme").await;
    let click = app.click("/r/acme", None, None).await;
    let click_id = click.param("lc_click").unwrap();
    app.report_when("acme", "", 1).await;
    let clicked = chrono::Utc::now().timestamp();
    let signup = |customer: &str, after: i64| {
        json!({"id": format!("s_{customer}"), "type": "signup", "customer": customer,
            "at": rfc3339(clicked + after), "billing": "referral",
            "attribution": {"click_id": click_id}})
    };
    let payment = |customer: &str, amount: &str| {
        json!({"id": format!("p_{customer}"), "type": "payment", "customer": customer,
            "at": rfc3339(clicked + 3), "amount": amount, "currency": "USD",
            "period": "month"})
    };
    let events = json!([
        signup("fast1", 2),
        payment("fast1", "100.00"),
        signup("fast2", 2),
        payment("fast2", "50.00"),
        signup("slow", 12),
    ]);
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await;
    assert_eq!(status, 202, "{body}");
}

async fn a_fast_signup_is_held_then_released_or_rejected(setup: Stack) {
    let app = &setup.app;
    signups_after_one_click(app).await;
    let histogram = histogram_when(app, "acme", 3).await;
    assert_eq!(
        (&histogram["under_10s"], &histogram["under_1m"]),
        (&json!(2), &json!(1))
    );
    let usd = app.usd_when("acme", "on_hold", "30.00").await;
    assert_eq!(
        (&usd["pending"], &usd["available"]),
        (&json!("30.00"), &json!("0.00"))
    );

    let held = holds(app, "?status=held").await;
    let ids: Vec<&str> = held.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fast1", "fast2"], "{held:?}");
    for hold in &held {
        assert_eq!(
            (&hold["reason"], &hold["status"]),
            (&json!("fast_signup"), &json!("held"))
        );
        assert_eq!(hold["partner"], "acme");
        let seconds = hold["click_to_signup_seconds"].as_i64().unwrap();
        assert!((2..=3).contains(&seconds), "{hold}");
    }
    assert_eq!(
        held[0]["amounts"],
        json!([{"currency": "USD", "amount": "20.00"}])
    );
    assert_eq!(
        held[1]["amounts"],
        json!([{"currency": "USD", "amount": "10.00"}])
    );

    // Only an admin decides, once, with a known action.
    let (status, body) = decide(app, "fast1", MERCHANT, "release").await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, body) = decide(app, "fast1", ADMIN, "approve").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_action"))
    );
    let (status, body) = decide(app, "slow", ADMIN, "release").await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));

    let (status, released) = decide(app, "fast1", ADMIN, "release").await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["status"], "released");
    assert!(released["decided_at"].is_string(), "{released}");
    let (status, body) = decide(app, "fast1", ADMIN, "reject").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("hold_decided"))
    );
    let (status, rejected) = decide(app, "fast2", ADMIN, "reject").await;
    assert_eq!((status, &rejected["status"]), (200, &json!("rejected")));

    // Released: available once the payment's date is reached. Rejected:
    // gone from the balance, with its entry in the ledger.
    let usd = app.usd_when("acme", "available", "20.00").await;
    assert_eq!(
        (&usd["pending"], &usd["on_hold"]),
        (&json!("0.00"), &json!("0.00"))
    );
    let (_, ledger) = app.get("/v1/partners/acme/ledger", Some(ADMIN)).await;
    let entries = ledger["entries"].as_array().unwrap();
    let of_kind = |kind: &str| entries.iter().find(|e| e["kind"] == kind).cloned();
    let rejected_entry = of_kind("hold_rejected").expect("a hold_rejected entry");
    assert_eq!(
        (&rejected_entry["amount"], &rejected_entry["customer"]),
        (&json!("-10.00"), &json!("fast2"))
    );
    let released_entry = of_kind("hold_released").expect("a hold_released entry");
    assert_eq!(released_entry["customer"], "fast1");
    let net: Decimal = entries
        .iter()
        .map(|e| e["amount"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(net, Decimal::new(20, 0), "{ledger}");

    assert!(holds(app, "?status=held").await.is_empty());
    let rejected = holds(app, "?status=rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["id"], "fast2");
    assert_eq!(holds(app, "").await.len(), 2);
    let (status, _) = app.get("/v1/holds", Some(MERCHANT)).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn embedded_a_fast_signup_is_held_then_released_or_rejected() {
    let setup = Stack::embedded_with(&[MIN_CLICK_AGE]).await;
    a_fast_signup_is_held_then_released_or_rejected(setup).await;
}

#[tokio::test]
async fn redis_a_fast_signup_is_held_then_released_or_rejected() {
    let setup = Stack::redis_with(&[MIN_CLICK_AGE]).await;
    a_fast_signup_is_held_then_released_or_rejected(setup).await;
}
