//! End-to-end: the `/v1` API's roles, validation and error shape.

mod common;

use common::{TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn creating_a_partner_shows_its_token_once() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/partners",
            Some(ADMIN),
            json!({"id": "acme", "name": "Acme Ltd"}),
        )
        .await;
    assert_eq!(status, 201);
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("lcp_"));
    assert_eq!(body["link"], "http://127.0.0.1:8080/r/acme");
    assert_eq!(body["paypal_email"], Value::Null);
    let (status, shown) = app.get("/v1/partners/acme", Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(shown["name"], "Acme Ltd");
    assert!(
        shown.get("token").is_none() && shown.get("token_hash").is_none(),
        "{shown}"
    );
    let (status, again) = app
        .send_json(
            "POST",
            "/v1/partners",
            Some(ADMIN),
            json!({"id": "acme", "name": "Other"}),
        )
        .await;
    assert_eq!((status, code(&again)), (409, "conflict"));
}

#[tokio::test]
async fn tokens_and_roles_are_enforced_401_then_403() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let rival = app.create_partner("rival").await;
    let new_partner = json!({"id": "x", "name": "X"});

    let (status, body) = app.get("/v1/partners/acme", None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let (status, _) = app.get("/v1/partners/acme", Some("not-a-token")).await;
    assert_eq!(status, 401);
    let (status, _) = app
        .get("/v1/partners/acme", Some(&format!("{acme}x")))
        .await;
    assert_eq!(status, 401);

    let (status, body) = app.get("/v1/partners/acme", Some(&rival)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = app.get("/v1/partners/nobody", Some(&rival)).await;
    assert_eq!(status, 403, "a partner cannot probe other ids");
    let (status, _) = app.get("/v1/partners/acme", Some(MERCHANT)).await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send_json("POST", "/v1/partners", Some(&acme), new_partner.clone())
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send_json("POST", "/v1/partners", Some(MERCHANT), new_partner)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get("/v1/partners/rival/campaigns", Some(&acme)).await;
    assert_eq!(status, 403);
    let (status, _) = app.get("/v1/partners/rival/report", Some(&acme)).await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send_json(
            "POST",
            "/v1/partners/rival/campaigns",
            Some(&acme),
            json!({"slug": "s", "name": "n"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get("/v1/partners/nobody", Some(ADMIN)).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/partners/acme/campaigns", Some(&acme)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn partners_update_their_paypal_email_and_only_admins_disable() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let (status, body) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(&acme),
            json!({"paypal_email": "pay@acme.example"}),
        )
        .await;
    assert_eq!(
        (status, &body["paypal_email"]),
        (200, &json!("pay@acme.example"))
    );
    let (status, body) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(&acme),
            json!({"paypal_email": "not an email"}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_paypal_email"));
    let (status, _) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(&acme),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(ADMIN),
            json!({"disabled": true, "paypal_email": null}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["disabled"], true);
    assert_eq!(body["paypal_email"], Value::Null);
}

/// A disabled partner keeps reading its own data, but its token may not
/// create campaigns or request payouts; an admin still may.
#[tokio::test]
async fn a_disabled_partners_token_reads_but_does_not_create_or_pay_out() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let (status, _) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(ADMIN),
            json!({"disabled": true, "paypal_email": "pay@acme.example"}),
        )
        .await;
    assert_eq!(status, 200);
    for path in [
        "/v1/partners/acme",
        "/v1/partners/acme/balance",
        "/v1/partners/acme/ledger",
        "/v1/partners/acme/report",
        "/v1/partners/acme/campaigns",
    ] {
        let (status, body) = app.get(path, Some(&acme)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let campaign = json!({"slug": "spring", "name": "spring"});
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/partners/acme/campaigns",
            Some(&acme),
            campaign.clone(),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "partner_disabled"), "{body}");
    let (status, body) = app
        .send_json(
            "POST",
            "/v1/partners/acme/payouts",
            Some(&acme),
            json!({"currency": "USD"}),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "partner_disabled"), "{body}");
    let (status, body) = app
        .send_json("POST", "/v1/partners/acme/campaigns", Some(ADMIN), campaign)
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn the_campaign_builder_enforces_every_rule_and_names_the_field() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let cases = [
        (
            json!({"slug": "s", "name": "n", "trial_days": 0}),
            "invalid_trial_days",
        ),
        (
            json!({"slug": "s", "name": "n", "trial_days": 61}),
            "invalid_trial_days",
        ),
        (
            json!({"slug": "s", "name": "n", "trial_days": -3}),
            "invalid_trial_days",
        ),
        (
            json!({"slug": "s", "name": "n", "discount": 33}),
            "invalid_discount",
        ),
        (
            json!({"slug": "s", "name": "n", "discount": 500}),
            "invalid_discount",
        ),
        (
            json!({"slug": "s", "name": "n", "landing": "https://evil.com/"}),
            "invalid_landing",
        ),
        (
            json!({"slug": "s", "name": "n", "landing": "http://www.example.com/"}),
            "invalid_landing",
        ),
        (
            json!({"slug": "s", "name": "n", "landing": "https://www.example.com/?discount=90"}),
            "invalid_landing",
        ),
        (
            json!({"slug": "s", "name": "n", "landing": "javascript:alert(1)"}),
            "invalid_landing",
        ),
        (json!({"slug": "s", "name": "default_link"}), "invalid_name"),
        (json!({"slug": "s", "name": "has space"}), "invalid_name"),
        (json!({"slug": "s", "name": "x".repeat(65)}), "invalid_name"),
        (json!({"slug": "bad/slug", "name": "n"}), "invalid_slug"),
        (json!({"slug": "", "name": "n"}), "invalid_slug"),
        (
            json!({"slug": "s", "name": "n", "utm_term": "t".repeat(129)}),
            "invalid_utm_term",
        ),
        (
            json!({"slug": "s", "name": "n", "utm_term": "a\r\nb"}),
            "invalid_utm_term",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = app
            .send_json(
                "POST",
                "/v1/partners/acme/campaigns",
                Some(&acme),
                body.clone(),
            )
            .await;
        assert_eq!((status, code(&answer)), (400, expected), "{body}");
        assert!(answer["error"]["message"].as_str().unwrap().len() > 5);
    }
    let (status, created) = app
        .send_json(
            "POST",
            "/v1/partners/acme/campaigns",
            Some(&acme),
            json!({"slug": "bf", "name": "black.friday", "trial_days": 60, "discount": 50, "utm_term": "my term",
                   "landing": "https://promo.example.com/bf"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["link"],
        "http://127.0.0.1:8080/r/acme/bf?utm_term=my+term"
    );
    assert_eq!(created["landing"], "https://promo.example.com/bf");
    let (status, dup) = app
        .send_json(
            "POST",
            "/v1/partners/acme/campaigns",
            Some(&acme),
            json!({"slug": "bf", "name": "other"}),
        )
        .await;
    assert_eq!((status, code(&dup)), (409, "conflict"));
    let (status, list) = app.get("/v1/partners/acme/campaigns", Some(&acme)).await;
    assert_eq!(status, 200);
    assert_eq!(list["campaigns"].as_array().unwrap().len(), 1);
    assert_eq!(list["campaigns"][0]["link"], created["link"]);
    let (status, _) = app
        .send_json(
            "POST",
            "/v1/partners/nobody/campaigns",
            Some(ADMIN),
            json!({"slug": "s", "name": "n"}),
        )
        .await;
    assert_eq!(status, 404);
}

/// A key named twice in one object is refused wherever JSON comes in:
/// a `Value` would silently keep the last, so an event could mean what the
/// last parser to read it decides.
#[tokio::test]
async fn a_key_named_twice_in_one_object_is_refused_everywhere() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let at = chrono::Utc::now().to_rfc3339();
    let event = format!(
        r#"[{{"id": "pay_1", "type": "payment", "customer": "cus_1", "at": "{at}",
             "amount": "1.00", "currency": "USD", "period": "month", "amount": "1000.00"}}]"#
    );
    let cases = [
        ("POST", "/v1/events", MERCHANT, event, "amount"),
        (
            "POST",
            "/v1/partners",
            ADMIN,
            r#"{"id": "a", "name": "A", "id": "b"}"#.to_owned(),
            "id",
        ),
        (
            "PATCH",
            "/v1/partners/acme",
            acme.as_str(),
            r#"{"name": "A", "name": "B"}"#.to_owned(),
            "name",
        ),
        (
            "POST",
            "/v1/partners/acme/campaigns",
            acme.as_str(),
            r#"{"slug": "s", "name": "n", "utm_term": "a", "utm_term": "b"}"#.to_owned(),
            "utm_term",
        ),
    ];
    for (method, path, token, body, key) in cases {
        let (status, answer) = app.send_raw_body(method, path, Some(token), body).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "duplicate_key"),
            "{path}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{key}`")), "{message}");
    }
    let metrics = app.metrics().await;
    let received: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("lastclick_events_received_total{"))
        .collect();
    assert!(
        received.iter().all(|l| l.ends_with(" 0")),
        "nothing was queued: {received:?}"
    );
}

#[tokio::test]
async fn malformed_json_unknown_fields_wrong_types_and_big_bodies_are_4xx() {
    let app = TestApp::spawn_with(&[("LASTCLICK_API__MAX_BODY_BYTES", "2048")]).await;
    let cases: [(&str, u16, &str); 7] = [
        ("{", 400, "malformed_json"),
        ("", 400, "malformed_json"),
        ("not json", 400, "malformed_json"),
        (
            r#"{"id": "a", "name": "A", "admin": true}"#,
            400,
            "invalid_body",
        ),
        (r#"{"id": 5, "name": "A"}"#, 400, "invalid_body"),
        (r#"{"name": "A"}"#, 400, "invalid_body"),
        (r#"[1, 2, 3]"#, 400, "invalid_body"),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = app
            .send_raw_body("POST", "/v1/partners", Some(ADMIN), body.into())
            .await;
        assert_eq!((got, code(&answer)), (status, expected), "{body}");
    }
    let big = json!({"id": "big", "name": "x".repeat(5000)}).to_string();
    let (status, answer) = app
        .send_raw_body("POST", "/v1/partners", Some(ADMIN), big)
        .await;
    assert_eq!((status, code(&answer)), (413, "payload_too_large"));
    let (status, answer) = app.get("/v1/nothing-here", Some(ADMIN)).await;
    assert_eq!((status, code(&answer)), (404, "not_found"));
    let (status, answer) = app
        .send_json("DELETE", "/v1/partners", Some(ADMIN), json!({}))
        .await;
    assert_eq!((status, code(&answer)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn junk_bodies_on_every_route_never_get_a_5xx() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    let junk: Vec<String> = vec![
        "\u{0}\u{1}\u{2}".into(),
        "{\"slug\": \"\u{202e}\"}".into(),
        "[".repeat(10_000),
        "{\"id\": \"a\", \"name\": \"\\ud800\"}".into(),
        "1e999999".into(),
        "{\"id\": null, \"name\": null}".into(),
        "\"just a string\"".into(),
        "{\"paypal_email\": {\"nested\": true}}".into(),
        "{\"trial_days\": 1.5, \"slug\": \"s\", \"name\": \"n\"}".into(),
        "{\"discount\": 99999999999999999999999, \"slug\": \"s\", \"name\": \"n\"}".into(),
    ];
    for body in junk {
        for (method, path) in [
            ("POST", "/v1/partners"),
            ("PATCH", "/v1/partners/acme"),
            ("POST", "/v1/partners/acme/campaigns"),
        ] {
            for token in [ADMIN, acme.as_str()] {
                let (status, answer) = app
                    .send_raw_body(method, path, Some(token), body.clone())
                    .await;
                assert!(
                    (400..500).contains(&status),
                    "{method} {path} {body:.40}: {status} {answer}"
                );
                assert!(answer["error"]["code"].is_string(), "{answer}");
            }
        }
    }
    for query in [
        "from=2026-02-30",
        "to=%FF",
        "group_by=%00",
        "from=9999999-01-01",
        "group_by=day&from=x",
    ] {
        let (status, answer) = app
            .get(&format!("/v1/partners/acme/report?{query}"), Some(&acme))
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
    }
}

#[tokio::test]
async fn the_report_counts_clicks_by_campaign_term_and_day_with_bad_queries_named() {
    let app = TestApp::spawn().await;
    let acme = app.create_partner("acme").await;
    app.create_campaign("acme", json!({"slug": "s1", "name": "spring"}))
        .await;
    app.create_campaign(
        "acme",
        json!({"slug": "s2", "name": "summer", "utm_term": "preset"}),
    )
    .await;
    // Three visitors: two on spring (terms a and b), one on spring and summer.
    app.click("/r/acme/s1?utm_term=a", None, None).await;
    app.click("/r/acme/s1?utm_term=b", None, None).await;
    let v3 = app.click("/r/acme/s1?utm_term=a", None, None).await;
    app.click("/r/acme/s2", Some(&v3.cookie_value().unwrap()), None)
        .await;
    app.click("/r/acme", None, None).await;
    let report = app.report_when("acme", "", 5).await;
    let rows = report["rows"].as_array().unwrap();
    let find = |campaign: &str, term: Value| {
        rows.iter()
            .find(|r| r["utm_campaign"] == campaign && r["utm_term"] == term)
            .unwrap_or_else(|| panic!("no row {campaign}/{term} in {report}"))
    };
    assert_eq!(find("spring", json!("a"))["clicks"], 2);
    assert_eq!(find("spring", json!("a"))["unique_visitors"], 2);
    assert_eq!(find("spring", json!("b"))["clicks"], 1);
    assert_eq!(find("summer", json!("preset"))["clicks"], 1);
    assert_eq!(find("default_link", Value::Null)["clicks"], 1);
    assert_eq!(report["totals"]["clicks"], 5);
    assert_eq!(
        report["totals"]["unique_visitors"], 4,
        "union, not sum: {report}"
    );

    let by_campaign = app.report_when("acme", "group_by=campaign", 5).await;
    let spring = by_campaign["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["utm_campaign"] == "spring")
        .unwrap();
    assert_eq!(
        (
            spring["clicks"].as_u64(),
            spring["unique_visitors"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert!(spring.get("utm_term").is_none());

    let today = chrono::Utc::now().date_naive();
    let by_day = app
        .report_when("acme", &format!("group_by=day&from={today}&to={today}"), 5)
        .await;
    assert_eq!(by_day["rows"].as_array().unwrap().len(), 1);
    assert_eq!(by_day["rows"][0]["day"], today.to_string());
    let yesterday = today.pred_opt().unwrap();
    let (_, empty) = app
        .get(
            &format!("/v1/partners/acme/report?from={yesterday}&to={yesterday}"),
            Some(&acme),
        )
        .await;
    assert_eq!(empty["totals"]["clicks"], 0);

    for (query, expected) in [
        ("from=2026-13-01", "invalid_from"),
        ("to=tomorrow", "invalid_to"),
        ("from=2026-11-20&to=2026-11-01", "invalid_to"),
        ("from=2024-01-01&to=2026-01-01", "invalid_to"),
        ("group_by=campaign,visitor", "invalid_group_by"),
    ] {
        let (status, body) = app
            .get(&format!("/v1/partners/acme/report?{query}"), Some(&acme))
            .await;
        assert_eq!((status, code(&body)), (400, expected), "{query}");
    }
}

/// Each token has its own bucket: `api.rate_burst` requests at once, then
/// `api.rate_limit` a second; past it, 429 with `Retry-After`. Another
/// token is not slowed by it.
#[tokio::test]
async fn each_token_is_rate_limited_apart_with_retry_after() {
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_API__RATE_LIMIT", "0.001"),
        ("LASTCLICK_API__RATE_BURST", "3"),
    ])
    .await;
    let acme = app.create_partner("acme").await;
    for _ in 0..3 {
        let (status, body) = app.get("/v1/partners/acme", Some(&acme)).await;
        assert_eq!(status, 200, "{body}");
    }
    let response = app
        .client
        .get(app.url("/v1/partners/acme"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "rate_limited");
    let (status, _) = app.get("/v1/partners/acme", Some(ADMIN)).await;
    assert_eq!(status, 200, "the admin's token has its own bucket");
    let refused = r#"lastclick_requests_refused_total{reason="rate_limited"}"#;
    assert_eq!(app.metric(refused).await, 1.0);
}
