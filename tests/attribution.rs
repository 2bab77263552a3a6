//! The attribution explanation against the real binary, on the embedded
//! store and on Redis (a `lastclick worker` process): one visitor clicks
//! four partners' links in turn; a customer credited by the cookie of the
//! second click is explained with the winner, how it was found, the
//! locked rate and billing, and the three other clicks with why each
//! lost; a customer credited by the visitor id is explained the same way
//! around its last click.

mod common;

use std::time::{Duration, Instant};

use common::{rfc3339, Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

/// The explanation of `customer` once the worker has applied its signup.
async fn explained(app: &TestApp, customer: &str) -> Value {
    let path = format!("/v1/customers/{customer}/attribution");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get(&path, Some(MERCHANT)).await;
        if status == 200 && !body["signed_up_at"].is_null() {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never explained: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reasons(explanation: &Value) -> Vec<(String, String)> {
    explanation["other_clicks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let partner = c["partner"].as_str().unwrap().to_owned();
            (partner, c["reason"].as_str().unwrap().to_owned())
        })
        .collect()
}

async fn signup(app: &TestApp, customer: &str, attribution: Value) {
    let at = chrono::Utc::now().timestamp() + 60;
    let event = json!({"id": format!("s_{customer}"), "type": "signup",
        "customer": customer, "at": rfc3339(at), "billing": "referral",
        "attribution": attribution});
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), event)
        .await;
    assert_eq!(status, 202, "{body}");
}

async fn the_winner_and_the_losers_are_explained(setup: Stack) {
    let app = &setup.app;
    for partner in ["rival", "acme", "gone"] {
        app.create_partner(partner).await;
    }
    // One visitor: rival, then acme (the click the first signup names),
    // then gone, then rival again.
    // Which of two clicks came later is told by their ids, which carry
    // their millisecond: a real visitor never clicks twice in one, a test
    // on loopback might.
    let pause = || tokio::time::sleep(Duration::from_millis(3));
    let first = app.click("/r/rival", None, None).await;
    pause().await;
    let winner = app
        .click("/r/acme", first.cookie_value().as_deref(), None)
        .await;
    pause().await;
    let third = app
        .click("/r/gone", winner.cookie_value().as_deref(), None)
        .await;
    pause().await;
    let last = app
        .click("/r/rival", third.cookie_value().as_deref(), None)
        .await;
    assert!(last.cookie_value().is_some());
    for (partner, clicks) in [("rival", 2), ("acme", 1), ("gone", 1)] {
        app.report_when(partner, "", clicks).await;
    }
    let (status, body) = app
        .send_json(
            "PATCH",
            "/v1/partners/gone",
            Some(ADMIN),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let cookie = winner.cookie_value().unwrap();
    signup(app, "cus_cookie", json!({ "cookie": cookie })).await;
    let explanation = explained(app, "cus_cookie").await;
    assert_eq!(explanation["credited"], true, "{explanation}");
    assert_eq!(explanation["partner"], "acme");
    assert_eq!(explanation["campaign"], "default_link");
    assert_eq!(explanation["billing"], "referral");
    assert_eq!(explanation["rate"], "0.20");
    let click = &explanation["click"];
    assert_eq!(click["found_by"], "cookie");
    assert_eq!(click["id"].as_str(), winner.param("lc_click").as_deref());
    assert!(click["visitor_id"].is_string(), "{explanation}");
    let expected = [
        ("rival", "not_named"),
        ("gone", "disabled_partner"),
        ("rival", "earlier_click"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(reasons(&explanation), expected, "{explanation}");

    // By the visitor id: its last click, rival's, wins.
    signup(
        app,
        "cus_visitor",
        json!({ "visitor_id": click["visitor_id"] }),
    )
    .await;
    let explanation = explained(app, "cus_visitor").await;
    assert_eq!(explanation["partner"], "rival", "{explanation}");
    assert_eq!(explanation["click"]["found_by"], "visitor_id");
    assert_eq!(
        explanation["click"]["id"].as_str(),
        last.param("lc_click").as_deref()
    );
    let losers: Vec<String> = reasons(&explanation).into_iter().map(|(_, r)| r).collect();
    assert_eq!(losers, ["earlier_click"; 3], "{explanation}");

    // Nobody credited, nobody known, and who may ask.
    signup(app, "cus_nobody", json!({ "cookie": "forged.value" })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let nobody = loop {
        let (status, body) = app
            .get("/v1/customers/cus_nobody/attribution", Some(ADMIN))
            .await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&nobody["credited"], &nobody["reason"]),
        (&json!(false), &json!("no_valid_click"))
    );
    let (status, body) = app
        .get("/v1/customers/cus_unknown/attribution", Some(ADMIN))
        .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let acme = app.create_partner("other").await;
    let (status, _) = app
        .get("/v1/customers/cus_cookie/attribution", Some(&acme))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn embedded_the_winner_and_the_losers_are_explained() {
    the_winner_and_the_losers_are_explained(Stack::embedded().await).await;
}

#[tokio::test]
async fn redis_the_winner_and_the_losers_are_explained() {
    the_winner_and_the_losers_are_explained(Stack::redis().await).await;
}
