//! Coupon codes against the real binary, on the embedded store and on
//! Redis (a `lastclick worker` process): registered per partner, unique
//! whatever their case; a signup naming a code is credited to its partner
//! without a click (never held: there is no click to be too soon after),
//! an unknown code or a disabled partner's credits nobody, and a valid
//! code beats a click. The report and the explanation show it.

mod common;

use std::time::{Duration, Instant};

use common::{rfc3339, Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

async fn add_coupon(app: &TestApp, partner: &str, token: &str, code: &str) -> (u16, Value) {
    let path = format!("/v1/partners/{partner}/coupons");
    app.send_json("POST", &path, Some(token), json!({ "code": code }))
        .await
}

/// The explanation of `customer` once its signup is routed.
async fn explained(app: &TestApp, customer: &str) -> Value {
    let path = format!("/v1/customers/{customer}/attribution");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get(&path, Some(ADMIN)).await;
        let applied = body["credited"] == false || !body["signed_up_at"].is_null();
        if status == 200 && applied {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never explained: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn codes_are_registered_once_whatever_their_case(app: &TestApp) {
    let pod = app.create_partner("pod").await;
    app.create_partner("clicky").await;
    app.create_partner("off").await;
    let (status, coupon) = add_coupon(app, "pod", &pod, "pod-2026").await;
    assert_eq!(status, 201, "{coupon}");
    assert_eq!(
        (&coupon["code"], &coupon["partner"]),
        (&json!("POD-2026"), &json!("pod"))
    );
    let (status, body) = add_coupon(app, "clicky", ADMIN, "Pod-2026").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("coupon_taken"))
    );
    let (status, body) = add_coupon(app, "pod", ADMIN, "no").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_code"))
    );
    let (status, _) = add_coupon(app, "clicky", &pod, "MINE").await;
    assert_eq!(status, 403);
    let (status, body) = add_coupon(app, "off", ADMIN, "off10").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .send_json(
            "PATCH",
            "/v1/partners/off",
            Some(ADMIN),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, list) = app.get("/v1/partners/pod/coupons", Some(&pod)).await;
    assert_eq!(status, 200);
    assert_eq!(list["coupons"].as_array().unwrap().len(), 1, "{list}");
}

async fn a_coupon_credits_its_partner_and_beats_a_click(setup: Stack) {
    let app = &setup.app;
    codes_are_registered_once_whatever_their_case(app).await;
    let click = app.click("/r/clicky", None, None).await;
    app.report_when("clicky", "", 1).await;
    let cookie = click.cookie_value().unwrap();
    let now = chrono::Utc::now().timestamp();
    let signup = |customer: &str, attribution: Value| {
        json!({"id": format!("s_{customer}"), "type": "signup", "customer": customer,
            "at": rfc3339(now), "billing": "referral", "attribution": attribution})
    };
    let events = json!([
        signup("cus_coupon", json!({"coupon": "pod-2026"})),
        {"id": "p_coupon", "type": "payment", "customer": "cus_coupon", "at": rfc3339(now - 1),
         "amount": "100.00", "currency": "USD", "period": "month"},
        signup("cus_both", json!({"coupon": "POD-2026", "cookie": cookie})),
        signup("cus_click", json!({"cookie": cookie})),
        signup("cus_unknown", json!({"coupon": "NOPE"})),
        signup("cus_off", json!({"coupon": "OFF10"})),
    ]);
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await;
    assert_eq!(status, 202, "{body}");

    let coupon = explained(app, "cus_coupon").await;
    assert_eq!(
        (&coupon["partner"], &coupon["coupon"]),
        (&json!("pod"), &json!("POD-2026")),
        "{coupon}"
    );
    assert_eq!(
        (&coupon["campaign"], &coupon["term"]),
        (&json!("coupon"), &json!("POD-2026"))
    );
    assert!(coupon["click"].is_null(), "{coupon}");
    assert!(coupon["hold"].is_null(), "{coupon}");
    assert_eq!(explained(app, "cus_both").await["partner"], "pod");
    assert_eq!(explained(app, "cus_click").await["partner"], "clicky");
    for nobody in ["cus_unknown", "cus_off"] {
        assert_eq!(explained(app, nobody).await["credited"], false, "{nobody}");
    }
    // Not held, though `min_click_age` is on: a coupon has no click.
    let usd = app.usd_when("pod", "available", "20.00").await;
    assert_eq!(usd["on_hold"], "0.00");

    let report = app.get("/v1/partners/pod/report", Some(ADMIN)).await.1;
    let rows = report["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["utm_campaign"] == "coupon")
        .unwrap_or_else(|| panic!("no coupon row: {report}"));
    assert_eq!(
        (&row["utm_term"], &row["signups"], &row["clicks"]),
        (&json!("POD-2026"), &json!(2), &json!(0))
    );
}

#[tokio::test]
async fn embedded_a_coupon_credits_its_partner_and_beats_a_click() {
    let setup = Stack::embedded_with(&[("LASTCLICK_ATTRIBUTION__MIN_CLICK_AGE", "5s")]).await;
    a_coupon_credits_its_partner_and_beats_a_click(setup).await;
}

#[tokio::test]
async fn redis_a_coupon_credits_its_partner_and_beats_a_click() {
    let setup = Stack::redis_with(&[("LASTCLICK_ATTRIBUTION__MIN_CLICK_AGE", "5s")]).await;
    a_coupon_credits_its_partner_and_beats_a_click(setup).await;
}
