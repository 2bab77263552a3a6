//! End-to-end: the UTM performance report's figures from a scripted
//! scenario (clicks on several campaigns and terms, signups, payments and a
//! refund), in JSON and CSV, on the embedded store and on Redis.

mod common;

use std::time::{Duration, Instant};

use common::{Stack, TestApp, ADMIN, MERCHANT};
use serde_json::{json, Value};

fn at(offset: i64) -> String {
    chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + offset, 0)
        .unwrap()
        .to_rfc3339()
}

/// An admin's GET of `path`.
async fn admin_get(app: &TestApp, path: &str) -> reqwest::Response {
    let request = app.client.get(app.url(path)).bearer_auth(ADMIN);
    request.send().await.unwrap()
}

/// The body of an admin's GET of `path` (a CSV report).
async fn admin_csv(app: &TestApp, path: &str) -> String {
    admin_get(app, path).await.text().await.unwrap()
}

/// Clicks `path` as a new visitor; answers the click id.
async fn click(app: &TestApp, path: &str) -> String {
    let redirect = app.click(path, None, None).await;
    assert_eq!(redirect.status, 302, "{path}");
    redirect.param("lc_click").unwrap()
}

fn signup(customer: &str, click_id: &str) -> Value {
    json!({"id": format!("s_{customer}"), "type": "signup", "customer": customer, "at": at(0),
           "billing": "referral", "attribution": {"click_id": click_id}})
}

fn payment(id: &str, customer: &str, amount: &str, currency: &str) -> Value {
    json!({"id": id, "type": "payment", "customer": customer, "at": at(10), "amount": amount,
           "currency": currency, "period": "month"})
}

fn row<'r>(report: &'r Value, campaign: &str, term: Option<&str>) -> &'r Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["utm_campaign"] == campaign && r["utm_term"] == json!(term))
        .unwrap_or_else(|| panic!("no row {campaign}/{term:?} in {report}"))
}

async fn the_report_joins_clicks_and_conversions(setup: Stack) {
    let app = &setup.app;
    let partner_token = app.create_partner("acme").await;
    app.create_partner("rival").await;
    app.create_campaign("acme", json!({"slug": "c1", "name": "spring"}))
        .await;
    app.create_campaign("acme", json!({"slug": "c2", "name": "summer"}))
        .await;
    let a1 = click(app, "/r/acme/c1?utm_term=a").await;
    let a2 = click(app, "/r/acme/c1?utm_term=a").await;
    click(app, "/r/acme/c1?utm_term=a").await;
    click(app, "/r/acme/c1").await;
    let s1 = click(app, "/r/acme/c2").await;
    click(app, "/r/acme/c2").await;
    let d1 = click(app, "/r/acme").await;
    click(app, "/r/acme/c1?utm_term=x%2C%22y%22").await;
    app.report_when("acme", "", 8).await;

    let events = json!([
        signup("cus1", &a1),
        signup("cus2", &a2),
        signup("cus3", &s1),
        signup("cus4", &d1),
        payment("p1", "cus1", "100.00", "USD"),
        payment("p2", "cus1", "50.00", "USD"),
        payment("p3", "cus2", "30.00", "EUR"),
        payment("p4", "cus4", "1000", "JPY"),
        {"id": "r1", "type": "refund", "customer": "cus1", "at": at(20), "payment": "p1",
         "amount": "40.00", "currency": "USD"},
    ]);
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await;
    assert_eq!(status, 202, "{body}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (status, report) = app
            .get("/v1/partners/acme/report", Some(&partner_token))
            .await;
        assert_eq!(status, 200, "{report}");
        if report["totals"]["commission"]["USD"] == "22.00" && report["totals"]["customers"] == 3 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "conversions never reached the report: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spring_a = row(&report, "spring", Some("a"));
    assert_eq!(spring_a["clicks"], 3);
    assert_eq!(spring_a["unique_visitors"], 3);
    assert_eq!(spring_a["signups"], 2);
    assert_eq!(spring_a["conversion_rate"], 0.6667);
    assert_eq!(spring_a["customers"], 2);
    assert_eq!(
        spring_a["revenue"],
        json!({"EUR": "30.00", "USD": "110.00"})
    );
    assert_eq!(
        spring_a["commission"],
        json!({"EUR": "6.00", "USD": "22.00"})
    );
    let summer = row(&report, "summer", None);
    assert_eq!(
        (summer["clicks"].as_u64(), summer["signups"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(summer["customers"], 0);
    assert_eq!(summer["revenue"], json!({}));
    let plain = row(&report, "default_link", None);
    assert_eq!(plain["revenue"], json!({"JPY": "1000"}));
    assert_eq!(plain["commission"], json!({"JPY": "200"}));
    assert_eq!(row(&report, "spring", None)["signups"], 0);
    let totals = &report["totals"];
    assert_eq!(totals["clicks"], 8);
    assert_eq!(totals["signups"], 4);
    assert_eq!(totals["conversion_rate"], 0.5);
    assert_eq!(
        totals["revenue"],
        json!({"EUR": "30.00", "JPY": "1000", "USD": "110.00"})
    );

    // CSV, asked for either way, RFC 4180 quoted.
    let csv = |query: &'static str, accept: Option<&'static str>| async move {
        let mut req = reqwest::Client::new()
            .get(app.url(&format!("/v1/partners/acme/report{query}")))
            .bearer_auth(ADMIN);
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/csv"), "{kind}");
        response.text().await.unwrap()
    };
    let text = csv("?format=csv", None).await;
    assert_eq!(text, csv("", Some("text/csv")).await);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "utm_campaign,utm_term,clicks,unique_visitors,signups,conversion_rate,customers,\
         revenue_EUR,revenue_JPY,revenue_USD,commission_EUR,commission_JPY,commission_USD,\
         bot_clicks,suspect_clicks,overwrites_won,overwrites_lost"
    );
    assert!(
        lines.contains(&"spring,a,3,3,2,0.6667,2,30.00,,110.00,6.00,,22.00,0,0,0,0"),
        "{text}"
    );
    assert!(
        lines.contains(&"spring,\"x,\"\"y\"\"\",1,1,0,0,0,,,,,,,0,0,0,0"),
        "{text}"
    );
    assert!(
        lines.contains(&"total,,8,8,4,0.5,3,30.00,1000,110.00,6.00,200,22.00,0,0,0,0"),
        "{text}"
    );

    // By day, and across partners for the admin.
    let (_, by_day) = app
        .get("/v1/partners/acme/report?group_by=day", Some(ADMIN))
        .await;
    assert_eq!(by_day["rows"].as_array().unwrap().len(), 1);
    assert_eq!(by_day["rows"][0]["signups"], 4);
    let (status, all) = app.get("/v1/report", Some(ADMIN)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["partners"].as_array().unwrap().len(), 2);
    assert_eq!(all["totals"]["clicks"], 8);
    let (status, _) = app.get("/v1/report", Some(&partner_token)).await;
    assert_eq!(status, 403);
    let all_csv = admin_csv(app, "/v1/report?format=csv").await;
    let lines: Vec<&str> = all_csv.split("\r\n").collect();
    assert!(
        lines[0].starts_with("partner,utm_campaign,utm_term,clicks,"),
        "{all_csv}"
    );
    assert!(
        lines.contains(&"acme,spring,a,3,3,2,0.6667,2,30.00,,110.00,6.00,,22.00,0,0,0,0"),
        "{all_csv}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("total,,,8,8,4,")),
        "{all_csv}"
    );
    let (status, body) = app
        .get("/v1/partners/acme/report?format=xml", Some(ADMIN))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_format"))
    );
}

#[tokio::test]
async fn embedded_store_report() {
    the_report_joins_clicks_and_conversions(Stack::embedded().await).await;
}

#[tokio::test]
async fn redis_store_report() {
    the_report_joins_clicks_and_conversions(Stack::redis().await).await;
}

/// A `utm_term` anyone can put in a public link lands in the partner's
/// spreadsheet: a formula in it arrives as text (a leading `'`), while
/// figures stay numbers.
#[tokio::test]
async fn a_formula_in_a_link_reaches_the_csv_as_text() {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    let formulas = [
        "=HYPERLINK(\"https://evil.example/\",\"click\")",
        "+cmd|'/C calc'!A0",
        "@SUM(1+1)",
        "-2+3",
    ];
    for term in formulas {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("utm_term", term)
            .finish();
        click(&app, &format!("/r/acme?{query}")).await;
    }
    app.report_when("acme", "", formulas.len() as u64).await;
    let text = admin_csv(&app, "/v1/partners/acme/report?format=csv").await;
    for term in formulas {
        let safe = format!("\"'{}\"", term.replace('"', "\"\""));
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("default_link,{safe},1,"))),
            "{term}: {text}"
        );
    }
    for line in text.lines() {
        for field in line.split(',') {
            assert!(
                !field.starts_with(['=', '+', '@']),
                "a live formula: {field} in {text}"
            );
        }
    }
}

/// Every distinct `utm_term` in a public link used to become its own
/// report row, so anyone could grow a partner's report without bound.
/// Past `report.max_terms_per_day` a click counts under `(other)`: counted,
/// attributed, never dropped; terms already seen that day still count.
#[tokio::test]
async fn past_the_days_term_cap_clicks_count_under_other() {
    let app = TestApp::spawn_with(&[("LASTCLICK_REPORT__MAX_TERMS_PER_DAY", "3")]).await;
    app.create_partner("acme").await;
    // Bots are redirected but never counted: they take no room in the cap.
    for i in 0..5 {
        let path = format!("/r/acme?utm_term=bot{i}");
        let bot = app.click(&path, None, Some("Googlebot/2.1")).await;
        assert!(bot.location.contains(&format!("utm_term=bot{i}")));
    }
    for i in 0..10 {
        click(&app, &format!("/r/acme?utm_term=t{i}")).await;
    }
    let again = app.click("/r/acme?utm_term=t1", None, None).await;
    assert!(again.location.contains("utm_term=t1"), "{}", again.location);
    let capped = app.click("/r/acme?utm_term=t9", None, None).await;
    assert!(
        capped.location.contains("utm_term=%28other%29"),
        "{}",
        capped.location
    );
    let report = app.report_when("acme", "", 12).await;
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "three terms and (other): {report}");
    assert_eq!(row(&report, "default_link", Some("t1"))["clicks"], 2);
    assert_eq!(row(&report, "default_link", Some("(other)"))["clicks"], 8);
    assert_eq!(report["totals"]["clicks"], 12);
}

/// A report is built a page of `report.max_rows` rows at a time: the
/// totals cover every row, `next_page` (and `X-Next-Page`) says what is
/// left, and a page past the end is empty.
#[tokio::test]
async fn a_report_comes_a_page_of_rows_at_a_time() {
    let app = TestApp::spawn_with(&[("LASTCLICK_REPORT__MAX_ROWS", "2")]).await;
    app.create_partner("acme").await;
    for i in 0..5 {
        click(&app, &format!("/r/acme?utm_term=t{i}")).await;
    }
    let first = app.report_when("acme", "", 5).await;
    assert_eq!(
        (&first["page"], &first["next_page"], &first["rows_total"]),
        (&json!(1), &json!(2), &json!(5)),
        "{first}"
    );
    assert_eq!(first["rows"].as_array().unwrap().len(), 2);
    assert_eq!(first["totals"]["clicks"], 5, "totals of every row");
    let mut seen: Vec<Value> = first["rows"].as_array().unwrap().clone();
    for page in [2, 3] {
        let (status, body) = app
            .get(
                &format!("/v1/partners/acme/report?page={page}"),
                Some(ADMIN),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totals"]["clicks"], 5);
        seen.extend(body["rows"].as_array().unwrap().iter().cloned());
    }
    let terms: Vec<&str> = seen
        .iter()
        .map(|r| r["utm_term"].as_str().unwrap())
        .collect();
    assert_eq!(
        terms,
        ["t0", "t1", "t2", "t3", "t4"],
        "each row once, in order"
    );
    let (_, last) = app
        .get("/v1/partners/acme/report?page=3", Some(ADMIN))
        .await;
    assert_eq!(last["next_page"], Value::Null);
    let (_, past) = app
        .get("/v1/partners/acme/report?page=9", Some(ADMIN))
        .await;
    assert!(past["rows"].as_array().unwrap().is_empty(), "{past}");
    let csv = admin_get(&app, "/v1/partners/acme/report?format=csv").await;
    assert_eq!(csv.headers()["x-next-page"], "2");
    assert_eq!(
        csv.text().await.unwrap().lines().count(),
        4,
        "header, 2 rows, total"
    );
    for bad in ["0", "x", "1000001"] {
        let (status, body) = app
            .get(&format!("/v1/partners/acme/report?page={bad}"), Some(ADMIN))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_page")),
            "{bad}"
        );
    }
}

/// 300,000 clicks with made-up terms once made a partner's report 48.7 MB
/// and seconds to build, and six such reports at once held redirects for
/// seconds. Here 100,000 clicks with distinct terms: the day's term cap
/// keeps the report at 1,001 rows, pages keep each answer small, and while
/// six reports are asked for at once redirects keep answering (their
/// latency is the load test's to measure, not this test's).
#[tokio::test]
async fn a_flood_of_distinct_terms_keeps_the_report_bounded_and_redirects_answering() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    app.create_partner("acme").await;
    let senders: Vec<_> = (0..16)
        .map(|sender| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                for i in 0..6_250 {
                    let path = format!("/r/acme?utm_term=flood-{sender}-{i}");
                    let response = app.client.get(app.url(&path)).send().await.unwrap();
                    assert_eq!(response.status(), 302);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let first = app.report_when("acme", "", 100_000).await;
    assert_eq!(first["rows_total"], 1_001, "1,000 terms and (other)");
    assert_eq!(first["rows"].as_array().unwrap().len(), 1_000);
    assert_eq!(first["next_page"], 2);
    let reports: Vec<_> = (0..6)
        .map(|_| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                let csv = admin_get(&app, "/v1/partners/acme/report?format=csv").await;
                assert_eq!(csv.status(), 200);
                csv.text().await.unwrap().len()
            })
        })
        .collect();
    let mut latencies = Vec::new();
    while reports.iter().any(|r| !r.is_finished()) || latencies.len() < 100 {
        let sent = std::time::Instant::now();
        let redirect = app.click("/r/acme?utm_term=flood-0-0", None, None).await;
        latencies.push(sent.elapsed());
        assert_eq!(redirect.status, 302, "a redirect while reports are built");
    }
    // Measured by this client, printed, not asserted (a shared machine is
    // noisy; `loadtest/reports` measures it): the rule here is only that
    // redirects keep answering.
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{} redirects while six reports were built: p50 {:?}, p99 {:?}, slowest {:?}",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().unwrap()
    );
    for report in reports {
        let bytes = report.await.unwrap();
        assert!(bytes < 200_000, "a page of the CSV is {bytes} bytes");
    }
}

/// Past `report.max_concurrent` reports at once, a report waits up to
/// `report.slot_wait`, then is answered 503 `reports_busy` with
/// `Retry-After`: here one slot and no wait, and eight large reports asked
/// for at once.
#[tokio::test]
async fn reports_past_the_concurrent_limit_are_answered_503_reports_busy() {
    let app = std::sync::Arc::new(
        TestApp::spawn_with(&[
            ("LASTCLICK_REPORT__MAX_CONCURRENT", "1"),
            ("LASTCLICK_REPORT__SLOT_WAIT", "0s"),
        ])
        .await,
    );
    app.create_partner("acme").await;
    for i in 0..1_100 {
        let path = format!("/r/acme?utm_term=t{i}");
        assert_eq!(app.click(&path, None, None).await.status, 302);
    }
    app.report_when("acme", "", 1_100).await;
    let reports: Vec<_> = (0..8)
        .map(|_| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                let answer = admin_get(&app, "/v1/partners/acme/report?format=csv").await;
                let retry = answer.headers().get("retry-after").cloned();
                (
                    answer.status().as_u16(),
                    retry,
                    answer.text().await.unwrap(),
                )
            })
        })
        .collect();
    let mut answered = Vec::new();
    for report in reports {
        answered.push(report.await.unwrap());
    }
    assert!(answered.iter().any(|(status, ..)| *status == 200));
    let busy: Vec<_> = answered.iter().filter(|(s, ..)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "eight reports at once, one slot: {answered:?}"
    );
    for (_, retry, body) in busy {
        assert!(body.contains("reports_busy"), "{body}");
        assert!(retry.is_some());
    }
    let refused = "lastclick_requests_refused_total{reason=\"reports_busy\"}";
    assert!(app.metric(refused).await >= 1.0);
}
