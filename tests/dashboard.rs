//! End-to-end: the dashboard page in headless Chromium against a running
//! server, with a partner that has clicks, signups and commission. The
//! screenshots are saved under `target/` for a person to look at.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestApp, ADMIN, MERCHANT};
use serde_json::json;

fn chromium() -> &'static str {
    for candidate in ["chromium", "chromium-browser"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return candidate;
        }
    }
    panic!(
        "Chromium is not installed: scripts/test installs Debian's `chromium` (apt-get, as root)"
    );
}

/// Runs headless Chromium on `url` until the page's scripts settle; with
/// `screenshot`, saves a PNG of `size` there, else answers the DOM.
fn headless(url: &str, screenshot: Option<(&PathBuf, &str)>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some((path, size)) => {
            command.arg(format!("--screenshot={}", path.display()));
            command.arg(format!("--window-size={size}"));
        }
        None => {
            command.arg("--dump-dom");
        }
    }
    let output = command.arg(url).output().expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The part of the DOM before the page's script (whose source mentions
/// the same markup).
fn rendered(dom: &str) -> &str {
    dom.split("<script>").next().unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_partners_table_chart_and_status() {
    let app = TestApp::spawn().await;
    let token = app.create_partner("acme").await;
    app.create_campaign("acme", json!({"slug": "bf", "name": "black.friday"}))
        .await;
    let mut click_ids = Vec::new();
    for path in [
        "/r/acme/bf?utm_term=mail",
        "/r/acme/bf?utm_term=mail",
        "/r/acme",
        "/r/acme/bf",
    ] {
        click_ids.push(app.click(path, None, None).await.param("lc_click").unwrap());
    }
    app.report_when("acme", "", 4).await;
    let now = chrono::Utc::now().to_rfc3339();
    let events = json!([
        {"id": "s1", "type": "signup", "customer": "c1", "at": now, "billing": "referral",
         "attribution": {"click_id": click_ids[0]}},
        {"id": "s2", "type": "signup", "customer": "c2", "at": now, "billing": "referral",
         "attribution": {"click_id": click_ids[2]}},
        {"id": "p1", "type": "payment", "customer": "c1", "at": now, "amount": "300.00",
         "currency": "USD", "period": "month"},
    ]);
    let (status, body) = app
        .send_json("POST", "/v1/events", Some(MERCHANT), events)
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, report) = app.get("/v1/partners/acme/report", Some(ADMIN)).await;
        if report["totals"]["signups"] == 2 && report["totals"]["customers"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The token travels in the fragment, which the browser never sends.
    let url = app.url(&format!("/dashboard#partner=acme&token={token}"));
    let dom = headless(&url, None);
    let page = rendered(&dom);
    assert!(
        page.contains(r#"data-loaded="true""#),
        "the page did not load: {page}"
    );
    let totals = page
        .split(r#"<tr id="totals">"#)
        .nth(1)
        .and_then(|t| t.split("</tr>").next())
        .expect("a totals row");
    for cell in [
        r#"<td data-col="clicks">4</td>"#,
        r#"<td data-col="signups">2</td>"#,
        r#"<td data-col="conversion_rate">50.00 %</td>"#,
        r#"<td data-col="customers">1</td>"#,
        r#"<td data-col="revenue">300.00 USD</td>"#,
        r#"<td data-col="commission">60.00 USD</td>"#,
    ] {
        assert!(totals.contains(cell), "{cell} not in {totals}");
    }
    assert!(page.contains("black.friday"), "the campaign row is missing");
    let today = chrono::Utc::now().date_naive();
    let bar = format!(r#"data-day="{today}" data-clicks="4" data-signups="2""#);
    assert!(page.contains(&bar), "the chart has no bar {bar}");
    assert_eq!(
        page.matches("data-day=").count(),
        30,
        "one bar per day of the range"
    );
    assert!(page.contains(r#"id="tier">bronze<"#));
    assert!(page.contains(r#"id="arr">2880.00<"#));
    assert!(page.contains("60.00 USD"));

    // Without credentials it asks for them.
    let login = headless(&app.url("/dashboard"), None);
    assert!(rendered(&login).contains("Sign in"));

    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    for (name, size) in [
        ("dashboard.png", "1100,1300"),
        ("dashboard-phone.png", "390,1800"),
    ] {
        let path = target.join(name);
        let _ = std::fs::remove_file(&path);
        headless(&url, Some((&path, size)));
        assert!(
            std::fs::metadata(&path)
                .map(|m| m.len() > 10_000)
                .unwrap_or(false),
            "{name}"
        );
    }
}
