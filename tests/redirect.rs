//! End-to-end: the redirect, its cookie and its counting, against the real
//! binary.

mod common;

use common::{Redirect, TestApp, SECRET};
use serde_json::json;

async fn app_with_campaign() -> TestApp {
    let app = TestApp::spawn().await;
    app.create_partner("acme").await;
    app.create_campaign(
        "acme",
        json!({"slug": "spring", "name": "spring.sale", "trial_days": 30, "discount": 20,
               "landing": "https://promo.example.com/offer?plan=pro#pricing", "utm_term": "newsletter"}),
    )
    .await;
    app
}

#[tokio::test]
async fn a_counted_click_answers_302_with_every_cookie_attribute() {
    let app = app_with_campaign().await;
    let r = app.click("/r/acme/spring", None, Some("Mozilla/5.0")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.cache_control, "no-store");
    let cookie = r
        .set_cookie
        .clone()
        .expect("a counted click sets the cookie");
    let attrs: Vec<&str> = cookie.split("; ").collect();
    assert!(attrs[0].starts_with("lc_attr="), "{cookie}");
    for attr in [
        "Max-Age=10368000",
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ] {
        assert!(attrs.contains(&attr), "{attr} missing in {cookie}");
    }
    assert!(!cookie.contains("Domain="), "no Domain unless configured");
    assert!(cookie.len() < 4096);
}

#[tokio::test]
async fn the_cookie_domain_and_secure_flag_follow_configuration() {
    let app = TestApp::spawn_with(&[
        ("LASTCLICK_COOKIE__DOMAIN", "example.com"),
        ("LASTCLICK_COOKIE__SECURE", "false"),
        ("LASTCLICK_COOKIE__NAME", "lc_attr"),
        ("LASTCLICK_ATTRIBUTION__WINDOW", "2d"),
    ])
    .await;
    app.create_partner("acme").await;
    let cookie = app
        .click("/r/acme", None, None)
        .await
        .set_cookie
        .expect("cookie");
    assert!(cookie.contains("; Domain=example.com"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("Max-Age=172800"), "{cookie}");
}

#[tokio::test]
async fn the_location_carries_campaign_parameters_before_the_fragment() {
    let app = app_with_campaign().await;
    let r = app.click("/r/acme/spring", None, None).await;
    assert!(
        r.location.starts_with("https://promo.example.com/offer?plan=pro&utm_source=acme&utm_medium=affiliate&utm_campaign=spring.sale&utm_term=newsletter&lc_click="),
        "{}",
        r.location
    );
    assert!(
        r.location.ends_with("&trial_days=30&discount=20#pricing"),
        "{}",
        r.location
    );
    assert_eq!(r.param("lc_click").unwrap().len(), 22);
}

#[tokio::test]
async fn the_visitors_utm_values_are_used_but_never_deal_terms() {
    let app = app_with_campaign().await;
    let r = app
        .click(
            "/r/acme/spring?utm_term=sidebar&utm_source=blog&utm_medium=cpc&utm_content=banner&trial_days=365&discount=100&landing=https://evil.com",
            None,
            None,
        )
        .await;
    assert_eq!(r.param("utm_term").as_deref(), Some("sidebar"));
    assert_eq!(r.param("utm_source").as_deref(), Some("blog"));
    assert_eq!(r.param("utm_medium").as_deref(), Some("cpc"));
    assert_eq!(r.param("utm_content").as_deref(), Some("banner"));
    assert_eq!(r.param("trial_days").as_deref(), Some("30"));
    assert_eq!(r.param("discount").as_deref(), Some("20"));
    assert!(r.location.starts_with("https://promo.example.com/"));

    app.create_partner("plain").await;
    let plain = app
        .click("/r/plain?trial_days=60&discount=50", None, None)
        .await;
    assert_eq!(plain.param("utm_campaign").as_deref(), Some("default_link"));
    assert_eq!(plain.param("trial_days"), None);
    assert_eq!(plain.param("discount"), None);
    assert!(plain.location.starts_with("https://www.example.com/start?"));
}

#[tokio::test]
async fn an_unknown_campaign_counts_as_the_default_link() {
    let app = app_with_campaign().await;
    let r = app.click("/r/acme/no-such-campaign", None, None).await;
    assert!(r.set_cookie.is_some());
    assert_eq!(r.param("utm_campaign").as_deref(), Some("default_link"));
    assert!(r.location.starts_with("https://www.example.com/start?"));
    let report = app.report_when("acme", "", 1).await;
    assert_eq!(report["rows"][0]["utm_campaign"], "default_link");
}

#[tokio::test]
async fn bots_previews_head_and_unknown_or_disabled_partners_are_redirected_uncounted() {
    let app = app_with_campaign().await;
    for ua in [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "facebookexternalhit/1.1",
        "Twitterbot/1.0",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ] {
        let r = app.click("/r/acme/spring", None, Some(ua)).await;
        assert_eq!(r.status, 302);
        assert!(r.set_cookie.is_none(), "{ua} got a cookie");
        assert!(
            r.location.starts_with("https://promo.example.com/offer"),
            "bots go to the usual landing"
        );
        assert_eq!(r.param("lc_click"), None);
    }
    let head = app
        .client
        .head(app.url("/r/acme/spring"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 302);
    assert!(head.headers().get("set-cookie").is_none());

    let unknown = app.click("/r/nobody", None, None).await;
    assert_eq!((unknown.status, unknown.set_cookie.is_none()), (302, true));
    assert_eq!(unknown.location, "https://www.example.com/start");

    app.create_partner("gone").await;
    let (status, _) = app
        .send_json(
            "PATCH",
            "/v1/partners/gone",
            Some(common::ADMIN),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    let disabled = app.click("/r/gone", None, None).await;
    assert_eq!(
        (disabled.status, disabled.set_cookie.is_none()),
        (302, true)
    );
    assert_eq!(disabled.location, "https://www.example.com/start");

    let counted = app.click("/r/acme/spring", None, None).await;
    assert!(counted.set_cookie.is_some());
    let report = app.report_when("acme", "", 1).await;
    assert_eq!(
        report["totals"]["clicks"], 1,
        "only the human click counts: {report}"
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"bot\"}")
            .await,
        4.0
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"head\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"unknown_partner\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"disabled_partner\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"counted\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_repeat_click_within_the_dedup_window_refreshes_the_cookie_but_counts_once() {
    let app = app_with_campaign().await;
    let first = app.click("/r/acme/spring", None, None).await;
    let cookie = first.cookie_value().unwrap();
    let again = app.click("/r/acme/spring", Some(&cookie), None).await;
    assert!(again.set_cookie.is_some(), "the cookie is refreshed");
    assert_eq!(
        again.param("lc_click"),
        first.param("lc_click"),
        "same click"
    );
    // A different term is a different link: counted.
    let other = app
        .click("/r/acme/spring?utm_term=footer", Some(&cookie), None)
        .await;
    assert_ne!(other.param("lc_click"), first.param("lc_click"));
    let report = app.report_when("acme", "", 2).await;
    assert_eq!(report["totals"]["clicks"], 2, "{report}");
    assert_eq!(report["totals"]["unique_visitors"], 1, "{report}");
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"duplicate\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn after_the_dedup_window_the_same_link_counts_again() {
    let app = TestApp::spawn_with(&[("LASTCLICK_CLICKS__DEDUP_WINDOW", "1s")]).await;
    app.create_partner("acme").await;
    let first = app.click("/r/acme", None, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let second = app
        .click("/r/acme", Some(&first.cookie_value().unwrap()), None)
        .await;
    assert_ne!(second.param("lc_click"), first.param("lc_click"));
    let report = app.report_when("acme", "", 2).await;
    assert_eq!(report["totals"]["clicks"], 2, "{report}");
}

#[tokio::test]
async fn the_last_click_wins_and_keeps_the_visitor() {
    let app = app_with_campaign().await;
    app.create_partner("rival").await;
    let first = app.click("/r/acme/spring", None, None).await;
    let second = app
        .click("/r/rival", Some(&first.cookie_value().unwrap()), None)
        .await;
    assert!(second.set_cookie.is_some());
    assert_ne!(second.cookie_value(), first.cookie_value());
    // The newest cookie names the rival: a third click on acme is a new
    // link for this cookie, so it counts again and replaces it.
    let third = app
        .click(
            "/r/acme/spring",
            Some(&second.cookie_value().unwrap()),
            None,
        )
        .await;
    assert_ne!(third.param("lc_click"), first.param("lc_click"));
    let acme = app.report_when("acme", "", 2).await;
    assert_eq!(acme["totals"]["clicks"], 2);
    assert_eq!(
        acme["totals"]["unique_visitors"], 1,
        "the visitor id is kept across clicks"
    );
    let rival = app.report_when("rival", "", 1).await;
    assert_eq!(rival["totals"]["unique_visitors"], 1);
}

/// A browser sends every `lc_attr` it holds (one per domain and path):
/// after a change of `cookie.domain` or of the secrets, a leftover may come
/// first. Every one is tried and the newest valid one wins.
#[tokio::test]
async fn every_attribution_cookie_is_tried_and_the_newest_valid_one_wins() {
    let app = app_with_campaign().await;
    app.create_partner("rival").await;
    let older = app.click("/r/acme/spring", None, None).await;
    // Click times are in seconds: the second click must be a later one.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer = app.click("/r/rival", None, None).await;
    let (older, newer) = (older.cookie_value().unwrap(), newer.cookie_value().unwrap());
    let leftover = "bm90LXNpZ25lZA.bm90LWEtdGFn";
    let click_with = |cookies: String| {
        let request = app
            .client
            .get(app.url("/r/rival"))
            .header("cookie", cookies);
        async move { Redirect::from(request.send().await.unwrap()) }
    };
    for cookies in [
        format!("lc_attr={leftover}; lc_attr={newer}"),
        format!("lc_attr={older}; lc_attr={newer}"),
        format!("lc_attr={newer}; lc_attr={older}; lc_attr={leftover}"),
    ] {
        click_with(cookies.clone()).await;
    }
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"duplicate\"}")
            .await,
        3.0,
        "each was a repeat of the newest click, on rival"
    );
    assert_eq!(
        app.metric("lastclick_redirects_total{outcome=\"counted\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn cookies_signed_with_a_rotated_out_secret_still_verify_and_unknown_ones_do_not() {
    let old = TestApp::spawn_with(&[("LASTCLICK_COOKIE__SECRETS", "old-secret-0123456789")]).await;
    old.create_partner("acme").await;
    let cookie = old
        .click("/r/acme", None, None)
        .await
        .cookie_value()
        .unwrap();
    drop(old);

    // The same visitor, clicking within the dedup window, on a server that
    // rotated: the old cookie still verifies, so the click is a repeat.
    let rotated = TestApp::spawn_with(&[(
        "LASTCLICK_COOKIE__SECRETS",
        "new-secret-0123456789,old-secret-0123456789",
    )])
    .await;
    rotated.create_partner("acme").await;
    let r = rotated.click("/r/acme", Some(&cookie), None).await;
    assert_eq!(
        rotated
            .metric("lastclick_redirects_total{outcome=\"duplicate\"}")
            .await,
        1.0,
        "{r:?}"
    );

    let stranger = TestApp::spawn_with(&[("LASTCLICK_COOKIE__SECRETS", SECRET)]).await;
    stranger.create_partner("acme").await;
    stranger.click("/r/acme", Some(&cookie), None).await;
    assert_eq!(
        stranger
            .metric("lastclick_redirects_total{outcome=\"counted\"}")
            .await,
        1.0
    );
    assert_eq!(
        stranger
            .metric("lastclick_redirects_total{outcome=\"duplicate\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_tampered_cookie_is_ignored_and_a_new_visitor_starts() {
    let app = app_with_campaign().await;
    let first = app.click("/r/acme/spring", None, None).await;
    let mut forged = first.cookie_value().unwrap();
    forged.replace_range(5..6, if &forged[5..6] == "A" { "B" } else { "A" });
    let r = app.click("/r/acme/spring", Some(&forged), None).await;
    assert_ne!(
        r.param("lc_click"),
        first.param("lc_click"),
        "a forged cookie is no repeat"
    );
    let report = app.report_when("acme", "", 2).await;
    assert_eq!(report["totals"]["unique_visitors"], 2, "{report}");
}
