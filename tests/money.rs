//! End-to-end: conversion events through the API and the worker to
//! commissions, balances, the ledger and payouts, on the embedded store
//! (worker in process) and on Redis (a `lastclick worker` process).

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{rfc3339, Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

async fn post_events(app: &TestApp, events: Value) -> (u16, Value) {
    app.send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await
}

/// The click time inside a cookie value (see `src/edge/cookie.rs`).
fn click_time(cookie: &str) -> i64 {
    let payload = URL_SAFE_NO_PAD
        .decode(cookie.split('.').next().unwrap())
        .unwrap();
    i64::from_be_bytes(payload[33..41].try_into().unwrap())
}

fn signup(id: &str, customer: &str, at: i64, billing: &str, attribution: Value) -> Value {
    json!({"id": id, "type": "signup", "customer": customer, "at": rfc3339(at),
           "billing": billing, "attribution": attribution})
}

fn payment(id: &str, customer: &str, at: i64, amount: &str) -> Value {
    json!({"id": id, "type": "payment", "customer": customer, "at": rfc3339(at),
           "amount": amount, "currency": "USD", "period": "month"})
}

async fn payout_usd(app: &TestApp) -> (u16, Value) {
    app.send_json(
        "POST",
        "/v1/partners/acme/payouts",
        Some(ADMIN),
        json!({"currency": "USD"}),
    )
    .await
}

async fn payments_earn_commission_once_and_pay_out(setup: Stack) {
    let app = &setup.app;
    app.create_partner("acme").await;
    let click = app.click("/r/acme", None, None).await;
    let click_id = click.param("lc_click").unwrap();
    app.report_when("acme", "", 1).await; // the click is stored
    let now = chrono::Utc::now().timestamp();
    let mut events = vec![signup(
        "s1",
        "cus_1",
        now,
        "referral",
        json!({"click_id": click_id}),
    )];
    for month in 0..12 {
        events.push(payment(
            &format!("p{month}"),
            "cus_1",
            // In the past, so every commission is available when checked.
            now - 12 + month,
            "1000.00",
        ));
    }
    let (status, body) = post_events(app, json!(events)).await;
    assert_eq!(
        (status, &body),
        (202, &json!({"accepted": 13, "duplicates": 0}))
    );
    app.usd_when("acme", "available", "2400.00").await;

    // Ids are idempotency keys: the same events again change nothing.
    let (status, body) = post_events(app, json!(events)).await;
    assert_eq!(
        (status, &body),
        (202, &json!({"accepted": 0, "duplicates": 13}))
    );
    let (_, partner) = app.get("/v1/partners/acme", Some(ADMIN)).await;
    assert_eq!(partner["program"]["arr"], "9600.00", "{partner}");
    assert_eq!(partner["program"]["tier"], "silver");

    // The ledger, newest first, in pages.
    let (_, page) = app
        .get("/v1/partners/acme/ledger?limit=5", Some(ADMIN))
        .await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["id"], "p11");
    assert_eq!(entries[0]["amount"], "200.00");
    let mut seen = 5;
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (status, page) = app
            .get(
                &format!("/v1/partners/acme/ledger?limit=5&cursor={c}"),
                Some(ADMIN),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        seen += page["entries"].as_array().unwrap().len();
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, 12);

    // A payout takes the whole available balance, once, however many are
    // asked for at the same moment: the others find nothing available, or
    // (had the book kept changing under them) 409, never a 503.
    let asked = futures_util::future::join_all((0..16).map(|_| payout_usd(app))).await;
    let statuses: Vec<u16> = asked.iter().map(|(status, _)| *status).collect();
    assert!(
        statuses.iter().all(|s| [201, 409, 422].contains(s)),
        "{asked:?}"
    );
    let paid: Vec<&Value> = asked
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(paid.len(), 1, "{asked:?}");
    assert_eq!(paid[0]["amount"], "2400.00");
    assert_eq!(paid[0]["status"], "requested");
    let usd = app.usd_when("acme", "in_payout", "2400.00").await;
    assert_eq!(
        (&usd["available"], &usd["paid"]),
        (&json!("0.00"), &json!("0.00"))
    );

    // A refund after the payout claws its commission back.
    let refund = json!({"id": "r1", "type": "refund", "customer": "cus_1",
        "at": rfc3339(now), "payment": "p0", "amount": "1000.00", "currency": "USD"});
    assert_eq!(post_events(app, refund).await.0, 202);
    app.usd_when("acme", "available", "-200.00").await;
    let (status, refused) = payout_usd(app).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "nothing_available");
}

/// The window test's settings.
const SHORT_WINDOW: &[(&str, &str)] = &[("LASTCLICK_ATTRIBUTION__WINDOW", "60s")];

async fn signups_count_only_inside_the_window(setup: Stack) {
    let app = &setup.app;
    app.create_partner("acme").await;
    let click = app.click("/r/acme", None, None).await;
    let cookie = click.cookie_value().unwrap();
    let visitor_click = app.click("/r/acme?utm_term=v", None, None).await;
    app.report_when("acme", "", 2).await; // both clicks are stored
    let clicked = click_time(&cookie);
    // The suite runs with a 60 s window, so that its last second is not in
    // the future (events later than now and the clock skew are refused).
    let window = 60;
    let skew = 5 * 60;
    let mut forged = cookie.clone();
    forged.replace_range(0..1, if forged.starts_with('A') { "B" } else { "A" });
    let visitor = {
        let value = visitor_click.cookie_value().unwrap();
        let payload = URL_SAFE_NO_PAD
            .decode(value.split('.').next().unwrap())
            .unwrap();
        URL_SAFE_NO_PAD.encode(&payload[17..33])
    };
    let cases = [
        (
            "last_second",
            clicked + window,
            json!({"cookie": cookie}),
            true,
        ),
        (
            "too_late",
            clicked + window + 1,
            json!({"cookie": cookie}),
            false,
        ),
        ("skew_edge", clicked - skew, json!({"cookie": cookie}), true),
        (
            "too_early",
            clicked - skew - 1,
            json!({"cookie": cookie}),
            false,
        ),
        ("forged", clicked + 10, json!({"cookie": forged}), false),
        (
            "unknown_click",
            clicked + 10,
            json!({"click_id": "AAAAAAAAAAAAAAAAAAAAAA"}),
            false,
        ),
        (
            "by_visitor",
            clicked + 10,
            json!({"visitor_id": visitor}),
            true,
        ),
    ];
    let mut events = Vec::new();
    for (customer, at, attribution, _) in &cases {
        events.push(signup(
            &format!("s_{customer}"),
            customer,
            *at,
            "referral",
            attribution.clone(),
        ));
        // Paid in the past, so its commission is available at once (a
        // payment before its signup is applied with the signup).
        events.push(payment(
            &format!("p_{customer}"),
            customer,
            clicked - skew - 10,
            "100.00",
        ));
    }
    // A second signup of a counted customer changes nothing.
    events.push(signup(
        "s_again",
        "last_second",
        clicked,
        "referral",
        json!({"cookie": cookie}),
    ));
    let (status, body) = post_events(app, json!(events)).await;
    assert_eq!(status, 202, "{body}");
    let counted = cases.iter().filter(|c| c.3).count();
    app.usd_when("acme", "available", &format!("{}.00", counted * 20))
        .await;
    let (_, ledger) = app.get("/v1/partners/acme/ledger", Some(ADMIN)).await;
    let mut customers: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["customer"].as_str().unwrap())
        .collect();
    customers.sort();
    assert_eq!(customers, ["by_visitor", "last_second", "skew_edge"]);
}

async fn the_rate_is_locked_at_signup_and_tiers_follow_arr(setup: Stack) {
    let app = &setup.app;
    app.create_partner("acme").await;
    let click_id = app
        .click("/r/acme", None, None)
        .await
        .param("lc_click")
        .unwrap();
    app.report_when("acme", "", 1).await; // the click is stored
                                          // In the recent past, so that "now" has seen every signup.
    let now = chrono::Utc::now().timestamp() - 60;
    let attribution = json!({"click_id": click_id});
    let events = json!([
        signup("s1", "reseller", now, "reseller", attribution.clone()),
        payment("p1", "reseller", now + 1, "1000.00"),
        signup("s2", "referral", now + 2, "referral", attribution),
        payment("p2", "referral", now + 3, "100.00"),
        {"id": "x1", "type": "cancel", "customer": "reseller", "at": rfc3339(now + 4)},
    ]);
    assert_eq!(post_events(app, events).await.0, 202);
    // The reseller earns nothing; the referral customer signed up at silver.
    app.usd_when("acme", "available", "22.00").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, partner) = app.get("/v1/partners/acme", Some(ADMIN)).await;
        let program = &partner["program"];
        // Cancelled: the reseller left ARR; 12 x 100 x (1 - 0.22) remains.
        if program["arr"] == "936.00" {
            assert_eq!(program["tier"], "bronze");
            assert_eq!(program["new_customers_3_months"], 2);
            assert_eq!(program["free_license_months"], 3);
            assert_eq!(program["marketplace_listed"], true);
            assert_eq!(program["next_tier"]["name"], "silver");
            assert_eq!(program["next_tier"]["arr_needed"], "4064.00");
            break;
        }
        assert!(Instant::now() < deadline, "{partner}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bad_events_are_refused_whole_and_roles_hold(setup: Stack) {
    let app = &setup.app;
    let partner_token = app.create_partner("acme").await;
    app.create_partner("rival").await;
    let good = payment("ok", "c", 1_790_000_000, "1.00");
    let bad = payment("bad", "c", 1_790_000_000, "1.001");
    let (status, body) = post_events(app, json!([good, bad, {"type": "nope"}])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_events");
    let details = body["error"]["details"].as_array().unwrap();
    let indexes: Vec<u64> = details
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    assert_eq!(details[0]["code"], "invalid_amount");
    assert_eq!(details[1]["code"], "invalid_type", "an unknown event type");
    // Nothing of the refused batch was queued: the good event is new.
    let (status, body) = post_events(app, json!([good])).await;
    assert_eq!(
        (status, &body),
        (202, &json!({"accepted": 1, "duplicates": 0}))
    );
    for junk in ["[", "{}", "null", "[[]]", "\"x\""] {
        let (status, body) = app
            .send_raw_body("POST", "/v1/events", Some(MERCHANT), junk.to_owned())
            .await;
        assert_eq!(status, 400, "{junk}: {body}");
    }

    for token in [ADMIN, partner_token.as_str()] {
        let (status, _) = app
            .send_json("POST", "/v1/events", Some(token), json!([good]))
            .await;
        assert_eq!(status, 403);
    }
    assert_eq!(
        app.send_json("POST", "/v1/events", None, json!([good]))
            .await
            .0,
        401
    );
    for path in ["balance", "ledger"] {
        let own = app
            .get(&format!("/v1/partners/acme/{path}"), Some(&partner_token))
            .await;
        assert_eq!(own.0, 200, "{path}");
        let other = app
            .get(&format!("/v1/partners/rival/{path}"), Some(&partner_token))
            .await;
        assert_eq!(other.0, 403, "{path}");
        let merchant = app
            .get(&format!("/v1/partners/acme/{path}"), Some(MERCHANT))
            .await;
        assert_eq!(merchant.0, 403, "{path}");
    }
    let payout = |body: Value| {
        app.send_json(
            "POST",
            "/v1/partners/acme/payouts",
            Some(&partner_token),
            body,
        )
    };
    let (status, body) = payout(json!({"currency": "usd"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_currency"))
    );
    let (status, body) = payout(json!({"currency": "JPY"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("currency_not_paid"))
    );
    let (status, body) = payout(json!({"currency": "USD", "extra": 1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .get("/v1/partners/acme/ledger?cursor=abc", Some(ADMIN))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
    let (status, body) = app
        .get("/v1/partners/acme/ledger?limit=0", Some(ADMIN))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_limit"))
    );
}

macro_rules! money_suite {
    ($store:ident, $setup:path, $setup_with:path) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn payments_earn_commission_once_and_pay_out() {
                super::payments_earn_commission_once_and_pay_out($setup().await).await;
            }

            #[tokio::test]
            async fn signups_count_only_inside_the_window() {
                super::signups_count_only_inside_the_window($setup_with(SHORT_WINDOW).await).await;
            }

            #[tokio::test]
            async fn the_rate_is_locked_at_signup_and_tiers_follow_arr() {
                super::the_rate_is_locked_at_signup_and_tiers_follow_arr($setup().await).await;
            }

            #[tokio::test]
            async fn bad_events_are_refused_whole_and_roles_hold() {
                super::bad_events_are_refused_whole_and_roles_hold($setup().await).await;
            }
        }
    };
}

money_suite!(embedded_store, Stack::embedded, Stack::embedded_with);
money_suite!(redis_store, Stack::redis, Stack::redis_with);
