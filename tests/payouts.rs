//! Payouts end to end, on the embedded store and on Redis (a `lastclick
//! worker` process): requested for the whole available balance, then
//! paid or failed by an admin, every other transition refused; the
//! balance at each step, the PayPal bulk file, roles, metrics, and the
//! monthly statement.

mod common;

use common::{Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

use common::rfc3339;

fn balance_of(usd: &Value) -> [&str; 4] {
    ["pending", "available", "in_payout", "paid"].map(|f| usd[f].as_str().unwrap_or("?"))
}

async fn request(app: &TestApp, partner: &str, token: &str) -> (u16, Value) {
    let path = format!("/v1/partners/{partner}/payouts");
    app.send_json("POST", &path, Some(token), json!({"currency": "USD"}))
        .await
}

async fn settle(app: &TestApp, id: &Value, token: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/payouts/{}", id.as_str().unwrap());
    app.send_json("PATCH", &path, Some(token), body).await
}

fn paid(reference: &str) -> Value {
    json!({"status": "paid", "reference": reference})
}

fn failed(reason: &str) -> Value {
    json!({"status": "failed", "reason": reason})
}

async fn text(app: &TestApp, path: &str, token: &str) -> (u16, String, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

async fn a_payout_is_requested_then_paid_or_failed(setup: Stack) {
    let app = &setup.app;
    let acme = app.partner_earning("acme", &["300.00"]).await;
    let usd = app.usd_when("acme", "available", "60.00").await;
    assert_eq!(balance_of(&usd), ["0.00", "60.00", "0.00", "0.00"]);

    // Requested by the partner itself: the whole available balance.
    let (status, payout) = request(app, "acme", &acme).await;
    assert_eq!(status, 201, "{payout}");
    assert_eq!(payout["status"], "requested");
    assert_eq!(payout["amount"], "60.00");
    assert_eq!(payout["currency"], "USD");
    assert_eq!(payout["partner"], "acme");
    assert_eq!(payout["paypal_email"], "acme@example.org");
    assert!(payout["requested_at"].is_string(), "{payout}");
    let id = payout["id"].clone();
    let usd = app.usd_when("acme", "in_payout", "60.00").await;
    assert_eq!(balance_of(&usd), ["0.00", "0.00", "60.00", "0.00"]);
    let (status, again) = request(app, "acme", &acme).await;
    assert_eq!(
        (status, &again["error"]["code"]),
        (422, &json!("nothing_available"))
    );

    // Only an admin settles, and reads the queue.
    let (status, body) = settle(app, &id, &acme, paid("7XK")).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    let (status, _) = app.get("/v1/payouts?status=requested", Some(&acme)).await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get("/v1/payouts?status=requested", Some(MERCHANT))
        .await;
    assert_eq!(status, 403);
    let (status, queue) = app.get("/v1/payouts?status=requested", Some(ADMIN)).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["payouts"], json!([payout]));

    // Paid: in payout becomes paid; the record keeps the reference. Sent
    // eight times at once (two admins, retries), it is applied once.
    let tries = (0..8).map(|i| {
        let reference = if i == 0 {
            "7XK21834LB".to_owned()
        } else {
            format!("other{i}")
        };
        let id = id.clone();
        async move { settle(app, &id, ADMIN, paid(&reference)).await }
    });
    let answers = futures_util::future::join_all(tries).await;
    let done: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(done.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| [200, 409].contains(s)),
        "{answers:?}"
    );
    let settled = done[0].clone();
    // Whichever came first is the one recorded.
    let reference = settled["reference"].as_str().unwrap().to_owned();
    assert_eq!(settled["status"], "paid");
    let usd = app.usd_when("acme", "paid", "60.00").await;
    assert_eq!(balance_of(&usd), ["0.00", "0.00", "0.00", "60.00"]);
    for (body, code) in [
        (paid("7XK21834LB"), "payout_not_requested"),
        (failed("returned"), "payout_not_requested"),
    ] {
        let (status, refused) = settle(app, &id, ADMIN, body).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (409, &json!(code)),
            "{refused}"
        );
    }
    let (_, queue) = app.get("/v1/payouts?status=requested", Some(ADMIN)).await;
    assert_eq!(queue["payouts"], json!([]));
    let (_, done) = app.get("/v1/payouts?status=paid", Some(ADMIN)).await;
    assert_eq!(done["payouts"], json!([settled]));

    // Failed: the amount is available again, and can be requested again.
    let (_, ledger) = app.get("/v1/partners/acme/ledger", Some(&acme)).await;
    let kinds: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["payout_paid", "payout_requested", "commission"]);
    assert_eq!(ledger["entries"][0]["note"], reference.as_str());
    assert_eq!(ledger["entries"][0]["id"], id);

    let beta = app.partner_earning("beta", &["500.00"]).await;
    app.usd_when("beta", "available", "100.00").await;
    let (status, second) = request(app, "beta", &beta).await;
    assert_eq!(status, 201, "{second}");
    let (status, bounced) = settle(app, &second["id"], ADMIN, failed("account closed")).await;
    assert_eq!(status, 200, "{bounced}");
    assert_eq!(bounced["reason"], "account closed");
    let usd = app.usd_when("beta", "available", "100.00").await;
    assert_eq!(balance_of(&usd), ["0.00", "100.00", "0.00", "0.00"]);
    let (status, refused) = settle(app, &second["id"], ADMIN, paid("late")).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (409, &json!("payout_not_requested"))
    );
    let (status, third) = request(app, "beta", &beta).await;
    assert_eq!(status, 201, "{third}");
    let (_, history) = app.get("/v1/partners/beta/payouts", Some(&beta)).await;
    let statuses: Vec<&str> = history["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["requested", "failed"], "newest first");
    let (status, _) = app.get("/v1/partners/beta/payouts", Some(&acme)).await;
    assert_eq!(status, 403, "another partner's payouts");

    // Unknown payouts and bad bodies.
    let unknown = json!("po_0000000000000000000000000a");
    let (status, body) = settle(app, &unknown, ADMIN, paid("x")).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let (status, _) = settle(app, &json!("nope"), ADMIN, paid("x")).await;
    assert_eq!(status, 404);
    for (body, code) in [
        (json!({"status": "paid"}), "missing_reference"),
        (json!({"status": "failed"}), "missing_reason"),
        (json!({"status": "requested"}), "invalid_status"),
        (
            json!({"status": "paid", "reference": "x", "reason": "y"}),
            "invalid_body",
        ),
        (
            json!({"status": "paid", "reference": " "}),
            "invalid_reference",
        ),
        (
            json!({"status": "paid", "reference": "x", "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (status, refused) = settle(app, &third["id"], ADMIN, body.clone()).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (400, &json!(code)),
            "{body}"
        );
    }

    // The PayPal bulk file: one line per requested payout, oldest first,
    // amounts exact.
    let gamma = app.partner_earning("gamma", &["251.23"]).await;
    app.usd_when("gamma", "available", "50.25").await;
    let (status, fourth) = request(app, "gamma", &gamma).await;
    assert_eq!(status, 201, "{fourth}");
    let (status, kind, file) = text(app, "/v1/payouts?status=requested&format=paypal", ADMIN).await;
    assert_eq!(status, 200, "{file}");
    assert!(kind.starts_with("text/csv"), "{kind}");
    let lines: Vec<Vec<&str>> = file
        .lines()
        .map(|l| l.trim_end_matches('\r').split(',').collect())
        .collect();
    let line = |email, amount, payout: &Value, partner| {
        let note = format!("Partner program commission for {partner}");
        [
            email,
            amount,
            "USD",
            payout["id"].as_str().unwrap(),
            &note,
            "PAYPAL",
        ]
        .map(str::to_owned)
    };
    let expected = vec![
        line("beta@example.org", "100.00", &third, "beta"),
        line("gamma@example.org", "50.25", &fourth, "gamma"),
    ];
    let lines: Vec<Vec<String>> = lines
        .into_iter()
        .map(|l| l.into_iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines, expected);
    let (status, _, _) = text(app, "/v1/payouts?status=paid&format=paypal", ADMIN).await;
    assert_eq!(status, 400);
    // A filter that would be ignored is refused, naming it.
    let (status, body) = app.get("/v1/payouts?currency=USD", Some(ADMIN)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_query"))
    );

    // Metrics: every step counted, the waiting queue read at scrape time.
    let metrics = app.metrics().await;
    for series in [
        "lastclick_payouts_total{currency=\"USD\",status=\"requested\"} 4",
        "lastclick_payouts_total{currency=\"USD\",status=\"paid\"} 1",
        "lastclick_payouts_total{currency=\"USD\",status=\"failed\"} 1",
        "lastclick_payouts_waiting{currency=\"USD\"} 2",
        "lastclick_payouts_waiting_amount{currency=\"USD\"} 150.25",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

/// Every month's statement adds up, a clawback after a paid payout shows
/// in the month it was posted and leaves a negative closing balance.
async fn statements_add_up_and_show_a_late_clawback(setup: Stack) {
    let app = &setup.app;
    let acme = app.partner_earning("acme", &["300.00"]).await;
    app.usd_when("acme", "available", "60.00").await;
    let (_, payout) = request(app, "acme", &acme).await;
    let (status, _) = settle(app, &payout["id"], ADMIN, paid("7XK")).await;
    assert_eq!(status, 200);
    let refund = json!({"id": "r1", "type": "refund", "customer": "cus_acme",
        "at": rfc3339(chrono::Utc::now().timestamp() - 1), "payment": "p_acme_0",
        "amount": "300.00", "currency": "USD"});
    let (status, _) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), refund)
        .await;
    assert_eq!(status, 202);
    app.usd_when("acme", "available", "-60.00").await;

    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let (status, statement) = app
        .get(
            &format!("/v1/partners/acme/statement?month={month}"),
            Some(&acme),
        )
        .await;
    assert_eq!(status, 200, "{statement}");
    let usd = &statement["currencies"][0];
    assert_eq!(usd["currency"], "USD");
    for (field, value) in [
        ("opening_balance", "0.00"),
        ("commissions", "60.00"),
        ("clawbacks", "-60.00"),
        ("payouts_requested", "-60.00"),
        ("payouts_failed", "0.00"),
        ("closing_balance", "-60.00"),
        ("requested", "60.00"),
        ("paid", "60.00"),
        ("closing_in_payout", "0.00"),
    ] {
        assert_eq!(usd[field], value, "{field}: {statement}");
    }
    let kinds: Vec<&str> = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["commission", "payout_requested", "payout_paid", "clawback"]
    );

    // The month before is empty; the next opens where this one closed.
    let next = (chrono::Utc::now().date_naive() + chrono::Months::new(1))
        .format("%Y-%m")
        .to_string();
    let (_, later) = app
        .get(
            &format!("/v1/partners/acme/statement?month={next}"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(
        later["currencies"][0]["opening_balance"], "-60.00",
        "{later}"
    );
    assert_eq!(later["currencies"][0]["closing_balance"], "-60.00");
    assert_eq!(later["lines"], json!([]));

    let path = format!("/v1/partners/acme/statement?month={month}&format=csv");
    let (status, kind, csv) = text(app, &path, &acme).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/csv"), "{kind}");
    let lines: Vec<&str> = csv.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(
        lines[0].starts_with("month,currency,opening_balance"),
        "{csv}"
    );
    assert_eq!(
        lines[1],
        format!("{month},USD,0.00,60.00,-60.00,0.00,-60.00,0.00,-60.00,0.00,60.00,60.00,0.00,0.00")
    );
    assert_eq!(lines.len(), 2 + 2 + 4, "{csv}");

    for bad in ["2026-13", "26-01", "x"] {
        let (status, body) = app
            .get(
                &format!("/v1/partners/acme/statement?month={bad}"),
                Some(ADMIN),
            )
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_month"))
        );
    }
    let (status, _) = app.get("/v1/partners/acme/statement", Some(MERCHANT)).await;
    assert_eq!(status, 403);
}

macro_rules! payout_suite {
    ($name:ident, $setup:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn a_payout_is_requested_then_paid_or_failed() {
                super::a_payout_is_requested_then_paid_or_failed($setup().await).await;
            }

            #[tokio::test]
            async fn statements_add_up_and_show_a_late_clawback() {
                super::statements_add_up_and_show_a_late_clawback($setup().await).await;
            }
        }
    };
}

payout_suite!(embedded_store, Stack::embedded);
payout_suite!(redis_store, Stack::redis);
