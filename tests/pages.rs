//! The partner dashboard and the admin console, clicked through in
//! headless Chromium (over WebDriver) against the real binary, as a new
//! program would use them: a partner earns 60.00 USD, requests a payout
//! on its dashboard, the admin downloads the PayPal file and marks the
//! payout paid in `/admin`, and the partner sees it paid with the
//! reference and a statement that adds up; a held signup is explained on
//! the dashboard and released in the console. Screenshots go to
//! `target/screenshots/` (the README's are copied from there).

mod common;

use std::path::PathBuf;

use common::browser::Browser;
use common::{TestApp, ADMIN};
use serde_json::json;

fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

async fn open_dashboard(browser: &Browser, app: &TestApp, partner: &str, token: &str) {
    // A fresh load, not a fragment change of the page already open. The
    // token travels in the fragment, which the browser never sends.
    browser.goto("about:blank").await;
    browser
        .goto(&app.url(&format!("/dashboard#partner={partner}&token={token}")))
        .await;
    browser
        .wait_for("the dashboard", "return document.body.dataset.loaded")
        .await;
}

async fn open_console(browser: &Browser, app: &TestApp) {
    browser.goto(&app.url("/admin")).await;
    browser.type_into("#token", ADMIN).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_for("the console", "return document.body.dataset.loaded")
        .await;
}

#[tokio::test]
async fn a_new_partner_is_paid_through_the_dashboard_and_the_console() {
    let app = TestApp::spawn().await;
    let acme = app.partner_earning("acme", &["300.00"]).await;
    app.usd_when("acme", "available", "60.00").await;
    let browser = Browser::open(1200, 1400).await;

    // The partner requests its payout on the dashboard.
    open_dashboard(&browser, &app, "acme", &acme).await;
    let button = "button[data-request=USD]";
    assert_eq!(browser.text_of(button).await, "Request payout of 60.00 USD");
    browser.click(button).await;
    let status = browser
        .wait_for(
            "the payout in the history",
            "const s = document.querySelector('#payouts [data-status]'); return s && s.textContent",
        )
        .await;
    assert_eq!(status, "requested");
    let why = browser.text_of("[data-why=USD]").await;
    assert_eq!(
        why, "0.00 of 50.00 USD",
        "the button says why it is disabled"
    );
    let (_, payouts) = app.get("/v1/partners/acme/payouts", Some(ADMIN)).await;
    let payout = payouts["payouts"][0].clone();
    let id = payout["id"].as_str().unwrap().to_owned();
    assert_eq!(payout["amount"], "60.00");

    // The admin creates another partner, downloads the PayPal file and
    // marks the payout paid with PayPal's reference.
    let console = Browser::open(1200, 1400).await;
    open_console(&console, &app).await;
    console.type_into("#create input[name=id]", "newco").await;
    console
        .type_into("#create input[name=name]", "New Co")
        .await;
    console
        .type_into("#create input[name=paypal_email]", "pay@newco.example")
        .await;
    console.click("#create button[type=submit]").await;
    let token = console
        .wait_for(
            "the new partner's token",
            "const t = document.getElementById('new-token'); return t && t.textContent",
        )
        .await;
    assert!(token.as_str().unwrap().len() > 20, "{token}");
    console
        .wait_for(
            "newco in the table",
            "return document.querySelector('tr[data-partner=newco]')",
        )
        .await;
    let (status, _) = app.get("/v1/partners/newco", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let in_payout = console
        .text_of("tr[data-partner=acme] [data-col=in_payout]")
        .await;
    assert_eq!(in_payout, "60.00 USD");

    console.click("button[data-paypal=USD]").await;
    let file = console.downloaded("paypal-payouts-USD").await;
    let csv = std::fs::read_to_string(file).unwrap();
    assert_eq!(
        csv,
        format!("acme@example.org,60.00,USD,{id},Partner program commission for acme,PAYPAL\r\n")
    );
    console
        .full_page_screenshot(&screenshot_path("admin.png"), 1200)
        .await;

    console.click(&format!("button[data-paid='{id}']")).await;
    console.type_into("#ask-value", "7XK21834LB").await;
    console.click("#ask-confirm").await;
    console
        .wait_for(
            "an empty queue",
            "return document.body.dataset.queue === '0'",
        )
        .await;
    let (_, paid) = app.get("/v1/payouts?status=paid", Some(ADMIN)).await;
    assert_eq!(paid["payouts"][0]["id"], id.as_str());
    assert_eq!(paid["payouts"][0]["reference"], "7XK21834LB");

    // The partner sees it paid, with the reference, and a statement that
    // adds up.
    open_dashboard(&browser, &app, "acme", &acme).await;
    assert_eq!(browser.text_of("#payouts [data-status]").await, "paid");
    let row = browser.text_of(&format!("tr[data-payout='{id}']")).await;
    assert!(row.contains("7XK21834LB"), "{row}");
    let closing = browser
        .wait_for(
            "the statement",
            "const c = document.querySelector('#statement [data-figure=closing]'); return c && c.textContent",
        )
        .await;
    assert_eq!(closing, "0.00");
    let statement = browser.text_of("#statement tbody tr").await;
    for figure in ["USD", "0.00", "60.00", "-60.00"] {
        assert!(statement.contains(figure), "{figure} not in {statement}");
    }
    browser
        .full_page_screenshot(&screenshot_path("dashboard.png"), 1200)
        .await;
}

#[tokio::test]
async fn the_dashboard_range_grouping_and_downloads_follow_the_picker() {
    let app = TestApp::spawn().await;
    let token = app.create_partner("acme").await;
    app.create_campaign("acme", json!({"slug": "bf", "name": "black.friday"}))
        .await;
    for path in ["/r/acme/bf?utm_term=mail", "/r/acme/bf", "/r/acme"] {
        app.click(path, None, None).await;
    }
    app.report_when("acme", "", 3).await;
    let browser = Browser::open(1200, 1400).await;
    open_dashboard(&browser, &app, "acme", &token).await;
    let clicks = "#totals [data-col=clicks]";
    assert_eq!(browser.text_of(clicks).await, "3");
    let campaign_link = browser.text_of("#campaign-link-0").await;
    assert!(campaign_link.ends_with("/r/acme/bf"), "{campaign_link}");

    // A range before the clicks: the table empties.
    let day = |ago: i64| (chrono::Utc::now() - chrono::Duration::days(ago)).date_naive();
    browser.set_value("#from", &day(60).to_string()).await;
    browser.set_value("#to", &day(31).to_string()).await;
    browser.click("#range button[type=submit]").await;
    browser
        .wait_for(
            "the empty range",
            &format!(
                "return document.getElementById('range').dataset.shown === '{}..{}'",
                day(60),
                day(31)
            ),
        )
        .await;
    assert_eq!(browser.text_of(clicks).await, "0");
    assert!(browser
        .text_of("#report tbody")
        .await
        .contains("No clicks in this range"));

    // The 7-day preset, grouped by day: today's row.
    browser.set_value("#group", "day").await;
    browser.click("button[data-days='7']").await;
    browser
        .wait_for(
            "the 7-day range",
            &format!(
                "return document.getElementById('range').dataset.shown === '{}..{}'",
                day(6),
                day(0)
            ),
        )
        .await;
    assert_eq!(browser.text_of("#first-col").await, "Day");
    assert_eq!(browser.text_of(clicks).await, "3");
    assert!(browser
        .text_of("#report tbody")
        .await
        .contains(&day(0).to_string()));

    // The CSV of what the table shows.
    browser.click("#download").await;
    let csv = std::fs::read_to_string(browser.downloaded("report-acme").await).unwrap();
    assert!(csv.starts_with("day,"), "{csv}");
    assert!(csv.contains(&day(0).to_string()), "{csv}");

    // No PayPal email: the button says so.
    let (status, _) = app
        .send_json(
            "PATCH",
            "/v1/partners/acme",
            Some(ADMIN),
            json!({"paypal_email": null}),
        )
        .await;
    assert_eq!(status, 200);
    open_dashboard(&browser, &app, "acme", &token).await;
    assert_eq!(
        browser.text_of("[data-why=USD]").await,
        "add a PayPal email"
    );
    browser.type_into("#paypal-email", "me@acme.example").await;
    browser.click("#email-form button").await;
    browser
        .wait_for(
            "the saved email",
            "return document.getElementById('email-note').textContent",
        )
        .await;
    let (_, partner) = app.get("/v1/partners/acme", Some(ADMIN)).await;
    assert_eq!(partner["paypal_email"], "me@acme.example");
    let phone = Browser::open(390, 900).await;
    open_dashboard(&phone, &app, "acme", &token).await;
    phone
        .full_page_screenshot(&screenshot_path("dashboard-phone.png"), 390)
        .await;
}

#[tokio::test]
async fn a_held_signup_is_released_in_the_console() {
    // The helper's signup is dated before its click: well under 5 s.
    let app = TestApp::spawn_with(&[("LASTCLICK_ATTRIBUTION__MIN_CLICK_AGE", "5s")]).await;
    let acme = app.partner_earning("acme", &["100.00"]).await;
    app.usd_when("acme", "on_hold", "20.00").await;
    let console = Browser::open(1200, 1000).await;
    // The partner sees why its money is pending.
    open_dashboard(&console, &app, "acme", &acme).await;
    let status = console.text_of("#status").await;
    assert!(status.contains("20.00 on hold for review"), "{status}");
    open_console(&console, &app).await;
    let row = console.text_of("tr[data-hold=cus_acme]").await;
    for shown in ["acme", "20.00 USD", "0 s"] {
        assert!(row.contains(shown), "{shown} not in {row}");
    }
    console.click("button[data-release=cus_acme]").await;
    console
        .wait_for("no hold left", "return document.body.dataset.holds === '0'")
        .await;
    let usd = app.usd_when("acme", "available", "20.00").await;
    assert_eq!(usd["on_hold"], "0.00");
}

#[tokio::test]
async fn both_pages_are_self_contained() {
    let app = TestApp::spawn().await;
    for page in ["/dashboard", "/admin"] {
        let response = reqwest::get(app.url(page)).await.unwrap();
        assert_eq!(response.status(), 200);
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{page}: {policy}"
        );
        let html = response.text().await.unwrap();
        for external in ["<script src", "<link", "http://", "https://", "@import"] {
            assert!(!html.contains(external), "{page} loads {external}");
        }
    }
}

#[tokio::test]
async fn a_failed_webhook_delivery_is_shown_and_resent_in_the_console() {
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_WEBHOOKS__ALLOW_HTTP", "true"),
        ("LASTCLICK_WEBHOOKS__RETRY_FIRST", "100ms"),
        ("LASTCLICK_WEBHOOKS__RETRY_MAX", "200ms"),
        ("LASTCLICK_WEBHOOKS__GIVE_UP_AFTER", "1s"),
    ])
    .await;
    // Nothing listens on this port (a listener bound, then closed): every
    // attempt fails, and the delivery is given up after a second.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let (status, endpoint) = app
        .send_json(
            "POST",
            "/v1/webhooks",
            Some(ADMIN),
            json!({"url": url, "events": ["commission.created"]}),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap().to_owned();
    app.partner_earning("acme", &["100.00"]).await;
    let path = format!("/v1/webhooks/{id}/deliveries");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, list) = app.get(&path, Some(ADMIN)).await;
        if list["deliveries"][0]["status"] == "failed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never failed: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, list) = app.get(&path, Some(ADMIN)).await;
    let attempts = list["deliveries"][0]["attempts"].as_u64().unwrap();
    let console = Browser::open(1200, 1000).await;
    open_console(&console, &app).await;
    let row = console.text_of(&format!("tr[data-webhook={id}]")).await;
    for shown in ["failed: commission.created", "could not connect"] {
        assert!(row.contains(shown), "{shown} not in {row}");
    }
    console.click(&format!("button[data-resend={id}]")).await;
    // Sent again (and failed again): one attempt more, shown.
    let again = attempts + 1;
    console
        .wait_for(
            "the resend's attempt",
            &format!("return document.querySelector('tr[data-webhook={id}]').cells[3].textContent === '{again}'"),
        )
        .await;
    let (_, list) = app.get(&path, Some(ADMIN)).await;
    assert_eq!(list["deliveries"][0]["attempts"], again, "{list}");
}
