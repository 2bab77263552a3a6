//! The cookie-stuffing guard against the real binary, on the embedded
//! store and on Redis: a link loaded in an iframe, as an image or script,
//! or prefetched, gets its 302 but no cookie and no counted click, and is
//! counted as `suspect` with its reason; a top-level navigation, and a
//! request that says nothing (curl, older browsers), count as before. Both
//! ways a request reaches the redirect are covered: straight off the
//! socket, and through hyper (`Connection: close` on HTTP/1.0).

mod common;

use common::{Stack, TestApp};

/// `GET path` with `headers`; answers the status, whether a cookie was
/// set, and whether the location carries a click id.
async fn visit(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (u16, bool, bool) {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    (
        response.status().as_u16(),
        response.headers().contains_key("set-cookie"),
        location.contains("lc_click="),
    )
}

/// The same over HTTP/1.0, which hyper answers.
fn visit_through_hyper(app: &TestApp, path: &str, header: &str) -> (u16, bool) {
    let host = app.public.trim_start_matches("http://");
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n\r\n");
    let answer = String::from_utf8(common::raw_exchange(host, request.as_bytes())).unwrap();
    let (status, headers) = common::parse_head(answer.split("\r\n\r\n").next().unwrap());
    (status, headers.iter().any(|(n, _)| n == "set-cookie"))
}

async fn suspect_requests_are_redirected_without_a_cookie_and_not_counted(setup: Stack) {
    let app = &setup.app;
    app.create_partner("acme").await;
    let suspects: [(&[(&str, &str)], &str); 6] = [
        (
            &[("sec-fetch-dest", "iframe"), ("sec-fetch-mode", "navigate")],
            "iframe",
        ),
        (
            &[("Sec-Fetch-Dest", "image"), ("Sec-Fetch-Mode", "no-cors")],
            "subresource",
        ),
        (&[("sec-fetch-dest", "script")], "subresource"),
        (
            &[("sec-fetch-dest", "empty"), ("sec-fetch-mode", "cors")],
            "subresource",
        ),
        (&[("sec-purpose", "prefetch;prerender")], "prefetch"),
        (&[("purpose", "prefetch")], "prefetch"),
    ];
    for (headers, _) in suspects {
        assert_eq!(
            visit(app, "/r/acme", headers).await,
            (302, false, false),
            "{headers:?}"
        );
    }
    assert_eq!(
        visit_through_hyper(app, "/r/acme", "Sec-Fetch-Dest: iframe"),
        (302, false)
    );
    let navigation = [
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-user", "?1"),
    ];
    assert_eq!(visit(app, "/r/acme", &navigation).await, (302, true, true));
    assert_eq!(
        visit(app, "/r/acme?utm_term=curl", &[]).await,
        (302, true, true)
    );
    assert_eq!(
        visit_through_hyper(app, "/r/acme?utm_term=old", "Sec-Fetch-Dest: document"),
        (302, true)
    );

    // Only the three clicks count; the others are suspects, by reason.
    app.report_when("acme", "", 3).await;
    let suspect = app.metric("lastclick_redirects_total{outcome=\"suspect\"}");
    assert_eq!(suspect.await, 7.0);
    let counted = app.metric("lastclick_redirects_total{outcome=\"counted\"}");
    assert_eq!(counted.await, 3.0);
    for (reason, count) in [("iframe", 2.0), ("subresource", 3.0), ("prefetch", 2.0)] {
        let series = format!("lastclick_suspect_redirects_total{{reason=\"{reason}\"}}");
        assert_eq!(app.metric(&series).await, count, "{reason}");
    }
}

#[tokio::test]
async fn embedded_suspect_requests_are_redirected_without_a_cookie_and_not_counted() {
    suspect_requests_are_redirected_without_a_cookie_and_not_counted(Stack::embedded().await).await;
}

#[tokio::test]
async fn redis_suspect_requests_are_redirected_without_a_cookie_and_not_counted() {
    suspect_requests_are_redirected_without_a_cookie_and_not_counted(Stack::redis().await).await;
}

/// The report of `partner` once its totals show `clicks` clicks and
/// `bots` bots (both are written in the background, apart).
async fn report_when(app: &TestApp, partner: &str, clicks: u64, bots: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, report) = app
            .get(
                &format!("/v1/partners/{partner}/report"),
                Some(common::ADMIN),
            )
            .await;
        assert_eq!(status, 200, "{report}");
        if report["totals"]["bot_clicks"] == bots && report["totals"]["clicks"] == clicks {
            return report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A scripted mix: each row's `bot_clicks` and `suspect_clicks` are
/// exact, in the cell a click would have counted in; a bot's term the
/// partner's day has not seen counts under `(other)`, taking no room.
async fn bots_and_suspects_are_counted_in_the_reports_cells(setup: Stack) {
    let app = &setup.app;
    app.create_partner("acme").await;
    app.create_campaign(
        "acme",
        serde_json::json!({"slug": "bf", "name": "black.friday"}),
    )
    .await;
    let slack = [("user-agent", "Slackbot-LinkExpanding 1.0")];
    let iframe = [("sec-fetch-dest", "iframe")];
    let prefetch = [("sec-purpose", "prefetch")];
    let mix: [(&str, &[(&str, &str)]); 8] = [
        ("/r/acme/bf?utm_term=mail", &[]),
        ("/r/acme/bf?utm_term=mail", &slack),
        ("/r/acme/bf?utm_term=mail", &slack),
        ("/r/acme/bf?utm_term=mail", &prefetch),
        ("/r/acme/bf?utm_term=never", &slack),
        ("/r/acme", &iframe),
        ("/r/acme", &iframe),
        ("/r/acme", &slack),
    ];
    for (path, headers) in mix {
        visit(app, path, headers).await;
    }
    let report = report_when(app, "acme", 1, 4).await;
    let row = |campaign: &str, term: Option<&str>| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["utm_campaign"] == campaign && r["utm_term"].as_str() == term)
            .cloned()
            .unwrap_or_else(|| panic!("no row {campaign} {term:?}: {report}"))
    };
    let figures = |r: serde_json::Value| {
        (
            r["clicks"].clone(),
            r["bot_clicks"].clone(),
            r["suspect_clicks"].clone(),
        )
    };
    let n = |v: u64| serde_json::json!(v);
    assert_eq!(
        figures(row("black.friday", Some("mail"))),
        (n(1), n(2), n(1))
    );
    assert_eq!(
        figures(row("black.friday", Some("(other)"))),
        (n(0), n(1), n(0))
    );
    assert_eq!(figures(row("default_link", None)), (n(0), n(1), n(2)));
    let totals = report["totals"].clone();
    assert_eq!(figures(totals), (n(1), n(4), n(3)));
    let csv = app
        .client
        .get(app.url("/v1/partners/acme/report?format=csv"))
        .bearer_auth(common::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",bot_clicks,suspect_clicks,overwrites_won,overwrites_lost"),
        "{csv}"
    );
    assert!(
        csv.contains("black.friday,mail,1,1,0,0,0,2,1,0,0\r\n"),
        "{csv}"
    );
}

#[tokio::test]
async fn embedded_bots_and_suspects_are_counted_in_the_reports_cells() {
    bots_and_suspects_are_counted_in_the_reports_cells(Stack::embedded().await).await;
}

#[tokio::test]
async fn redis_bots_and_suspects_are_counted_in_the_reports_cells() {
    bots_and_suspects_are_counted_in_the_reports_cells(Stack::redis().await).await;
}

/// A counted click carrying another partner's valid cookie is an
/// overwrite, counted once on each side: won in the new click's cell,
/// lost in the cell of the click it replaced. A repeat of the same
/// partner's link, or another of its campaigns, is not one.
async fn an_overwrite_is_counted_once_on_each_side(setup: Stack) {
    let app = &setup.app;
    for partner in ["acme", "rival"] {
        app.create_partner(partner).await;
    }
    let first = app.click("/r/acme?utm_term=mail", None, None).await;
    let cookie = first.cookie_value().unwrap();
    let taken = app.click("/r/rival", Some(&cookie), None).await;
    assert!(taken.param("lc_click").is_some());
    let rivals = taken.cookie_value().unwrap();
    // The rival's own visitor again (a repeat), then through another of
    // its links: no more overwrites.
    app.click("/r/rival", Some(&rivals), None).await;
    app.click("/r/rival?utm_term=x", Some(&rivals), None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (acme, rival) = loop {
        let (_, acme) = app
            .get("/v1/partners/acme/report", Some(common::ADMIN))
            .await;
        let (_, rival) = app
            .get("/v1/partners/rival/report", Some(common::ADMIN))
            .await;
        let written = acme["totals"]["clicks"] == 1 && rival["totals"]["clicks"] == 2;
        if written
            && acme["totals"]["overwrites_lost"] == 1
            && rival["totals"]["overwrites_won"] == 1
        {
            break (acme, rival);
        }
        assert!(std::time::Instant::now() < deadline, "{acme}\n{rival}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let n = |v: u64| serde_json::json!(v);
    let sides = |r: &serde_json::Value| (r["overwrites_won"].clone(), r["overwrites_lost"].clone());
    assert_eq!(sides(&acme["totals"]), (n(0), n(1)));
    assert_eq!(sides(&rival["totals"]), (n(1), n(0)));
    let lost_row = &acme["rows"][0];
    assert_eq!(
        (&lost_row["utm_term"], &lost_row["clicks"]),
        (&serde_json::json!("mail"), &n(1))
    );
    assert_eq!(sides(lost_row), (n(0), n(1)), "{acme}");
    let (_, status) = app.get("/v1/partners/rival", Some(common::ADMIN)).await;
    assert_eq!(
        status["overwrites_30_days"],
        serde_json::json!({"won": 1, "lost": 0})
    );
    let (_, status) = app.get("/v1/partners/acme", Some(common::ADMIN)).await;
    assert_eq!(
        status["overwrites_30_days"],
        serde_json::json!({"won": 0, "lost": 1})
    );
}

#[tokio::test]
async fn embedded_an_overwrite_is_counted_once_on_each_side() {
    an_overwrite_is_counted_once_on_each_side(Stack::embedded().await).await;
}

#[tokio::test]
async fn redis_an_overwrite_is_counted_once_on_each_side() {
    an_overwrite_is_counted_once_on_each_side(Stack::redis().await).await;
}
