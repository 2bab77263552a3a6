//! The redirect's hot path without sockets: what one counted redirect
//! costs in CPU, next to a reference measured in the same run.

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, Mac};
use lastclick::edge::cache::RouteCache;
use lastclick::edge::clicks;
use lastclick::edge::cookie::{find_cookies, Attribution, ClickId, CookieSigner, VisitorId};
use lastclick::edge::fetch::FetchSignals;
use lastclick::edge::landing::LandingPolicy;
use lastclick::edge::redirect::{
    build_location, parse_path, RedirectRequest, RedirectSettings, Redirector, UtmParams,
};
use lastclick::edge::traffic::TrafficCounts;
use lastclick::ids::{CampaignName, CampaignSlug, PartnerId};
use lastclick::metrics::Metrics;
use lastclick::store::{Campaign, CatalogSnapshot, Click, Partner};
use sha2::Sha256;

const NOW: i64 = 1_795_000_000;

fn redirector() -> (Redirector, clicks::ClickReceiver) {
    let policy = LandingPolicy::new(&["www.example.com".to_owned()], false);
    let default_landing = policy.parse("https://www.example.com/signup").unwrap();
    let routes = Arc::new(RouteCache::new(policy, default_landing));
    routes.apply(catalog());
    let metrics = Arc::new(Metrics::new());
    let (queue, receiver) = clicks::queue(1024, Arc::clone(&metrics));
    let redirector = Redirector::new(
        routes,
        CookieSigner::new(&["bench-secret-0123456789"]),
        queue,
        Arc::new(TrafficCounts::new(metrics)),
        RedirectSettings {
            cookie_name: "lc_attr".into(),
            cookie_domain: String::new(),
            cookie_secure: true,
            window_secs: 10_368_000,
            dedup_secs: 30,
            default_location: "https://www.example.com/signup".into(),
            max_terms_per_day: 1000,
        },
    );
    (redirector, receiver)
}

/// 1,000 partners, one with a campaign.
fn catalog() -> CatalogSnapshot {
    let partners = (0..1000)
        .map(|i| Partner {
            id: PartnerId::parse(&format!("partner{i}")).unwrap(),
            name: format!("Partner {i}"),
            paypal_email: None,
            disabled: false,
            token_hash: String::new(),
            created_at: Utc::now(),
        })
        .collect();
    let campaigns = vec![Campaign {
        partner: PartnerId::parse("partner7").unwrap(),
        slug: CampaignSlug::parse("spring").unwrap(),
        name: CampaignName::parse("spring.sale").unwrap(),
        trial_days: Some(30),
        discount: Some(20),
        landing: Some("https://www.example.com/pricing?plan=pro".into()),
        utm_term: None,
        created_at: Utc::now(),
    }];
    CatalogSnapshot {
        version: 1,
        partners,
        campaigns,
    }
}

fn request<'a>(
    path: &'a str,
    query: Option<&'a str>,
    cookies: &'a [&'a [u8]],
    ua: &'a [u8],
) -> RedirectRequest<'a> {
    RedirectRequest {
        head: false,
        path,
        query,
        cookies,
        user_agent: Some(ua),
        fetch: FetchSignals::default(),
        now: NOW,
    }
}

/// What Chrome sends with a click on a link (a top-level navigation).
fn navigation() -> FetchSignals<'static> {
    FetchSignals {
        dest: Some(b"document"),
        mode: Some(b"navigate"),
        purpose: None,
    }
}

/// A request head's header names and values as a browser sends them, for
/// the guard's reading of every header.
const CHROME_HEADERS: [(&str, &[u8]); 14] = [
    ("Host", b"go.example.com"),
    ("Connection", b"keep-alive"),
    ("sec-ch-ua", b"\"Chromium\";v=\"156\""),
    ("sec-ch-ua-mobile", b"?0"),
    ("sec-ch-ua-platform", b"\"Linux\""),
    ("Upgrade-Insecure-Requests", b"1"),
    (
        "User-Agent",
        b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36",
    ),
    ("Accept", b"text/html,application/xhtml+xml"),
    ("Sec-Fetch-Site", b"cross-site"),
    ("Sec-Fetch-Mode", b"navigate"),
    ("Sec-Fetch-User", b"?1"),
    ("Sec-Fetch-Dest", b"document"),
    ("Accept-Encoding", b"gzip, deflate, br"),
    ("Accept-Language", b"en-US,en;q=0.9"),
];

const BROWSER: &[u8] = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15";

fn bench_redirect(c: &mut Criterion) {
    let (redirector, mut receiver) = redirector();
    let mut group = c.benchmark_group("redirect");

    group.bench_function("counted_new_visitor", |b| {
        let req = request("/r/partner7/spring", Some("utm_term=sidebar"), &[], BROWSER);
        b.iter(|| {
            let answer = redirector.handle(black_box(&req));
            black_box(receiver.try_take());
            answer
        })
    });

    let earlier = redirector.handle(&request("/r/partner3", None, &[], BROWSER));
    let cookie_header = format!(
        "_ga=GA1.2.3; {}",
        earlier.set_cookie.unwrap().split(';').next().unwrap()
    );
    receiver.try_take();
    group.bench_function("counted_returning_visitor", |b| {
        let cookies = [cookie_header.as_bytes()];
        let req = request(
            "/r/partner7/spring",
            Some("utm_term=sidebar"),
            &cookies,
            BROWSER,
        );
        b.iter(|| {
            let answer = redirector.handle(black_box(&req));
            black_box(receiver.try_take());
            answer
        })
    });

    group.bench_function("counted_navigation", |b| {
        let mut req = request("/r/partner7/spring", Some("utm_term=sidebar"), &[], BROWSER);
        req.fetch = navigation();
        b.iter(|| {
            let answer = redirector.handle(black_box(&req));
            black_box(receiver.try_take());
            answer
        })
    });

    group.bench_function("suspect_iframe", |b| {
        let mut req = request("/r/partner7/spring", None, &[], BROWSER);
        req.fetch.dest = Some(b"iframe");
        b.iter(|| redirector.handle(black_box(&req)))
    });

    // The guard alone: reading a browser's 14 headers for the four it
    // wants, then judging them.
    group.bench_function("guard_reads_a_browser_head", |b| {
        b.iter(|| {
            let mut signals = FetchSignals::default();
            for (name, value) in black_box(&CHROME_HEADERS) {
                signals.take(name, value);
            }
            signals.suspect()
        })
    });

    group.bench_function("bot", |b| {
        let req = request(
            "/r/partner7/spring",
            None,
            &[],
            b"Slackbot-LinkExpanding 1.0",
        );
        b.iter(|| redirector.handle(black_box(&req)))
    });

    group.bench_function("unknown_partner", |b| {
        let req = request("/r/nobody", None, &[], BROWSER);
        b.iter(|| redirector.handle(black_box(&req)))
    });

    // The reference: one HMAC-SHA256 over a cookie-sized payload, the one
    // cost a signed-cookie redirect cannot avoid.
    let key = Hmac::<Sha256>::new_from_slice(b"bench-secret-0123456789").unwrap();
    let payload = [7u8; 90];
    group.bench_function("reference_hmac_sha256_90_bytes", |b| {
        b.iter(|| {
            let mut mac = key.clone();
            mac.update(black_box(&payload));
            mac.finalize().into_bytes()
        })
    });
    group.finish();
}

/// The pieces of a counted redirect on their own, so that a regression
/// shows where it comes from.
fn bench_pieces(c: &mut Criterion) {
    let (redirector, mut receiver) = redirector();
    let (queue, mut queued) = clicks::queue(1024, Arc::new(Metrics::new()));
    let routes = redirector_routes();
    let signer = CookieSigner::new(&["bench-secret-0123456789"]);
    let earlier = redirector.handle(&request("/r/partner3", None, &[], BROWSER));
    receiver.try_take();
    let cookie_header = format!(
        "_ga=GA1.2.3; {}",
        earlier.set_cookie.unwrap().split(';').next().unwrap()
    );
    let mut group = c.benchmark_group("pieces");

    group.bench_function("route_path", |b| {
        b.iter(|| {
            let (partner, slug) = parse_path(black_box("/r/partner7/spring")).unwrap();
            let route = routes.get(partner).unwrap();
            black_box(route.campaign(slug).name.len())
        })
    });
    group.bench_function("parse_and_verify_cookie", |b| {
        b.iter(|| {
            let value = find_cookies(black_box(cookie_header.as_bytes()), "lc_attr")
                .next()
                .unwrap();
            signer.verify(value).is_some()
        })
    });
    let attribution = Attribution {
        click_id: ClickId([1; 16]),
        visitor_id: VisitorId([2; 16]),
        partner: "partner7",
        campaign: "spring.sale",
        term: Some("sidebar"),
        trial_days: 30,
        discount: 20,
        clicked_at: NOW,
    };
    let mut out = String::with_capacity(512);
    group.bench_function("sign_cookie", |b| {
        b.iter(|| {
            out.clear();
            signer.sign_into(black_box(&attribution), &mut out);
            out.len()
        })
    });
    let route = routes.get("partner7").unwrap();
    let campaign = route.campaign(Some("spring"));
    let query = "utm_term=sidebar&utm_content=banner";
    group.bench_function("parse_utm_and_build_location", |b| {
        b.iter(|| {
            let utm = UtmParams::parse(black_box(Some(query)));
            let term = utm.term();
            build_location(&route, campaign, &utm, term, Some(ClickId([1; 16]))).len()
        })
    });
    group.bench_function("bot_check_browser", |b| {
        b.iter(|| redirector.is_bot(black_box(Some(BROWSER))))
    });
    let partner: Arc<str> = Arc::from("partner7");
    let name: Arc<str> = Arc::from("spring.sale");
    group.bench_function("enqueue_click", |b| {
        b.iter(|| {
            queue.push(Click {
                click_id: ClickId([1; 16]),
                visitor_id: VisitorId([2; 16]),
                partner: Arc::clone(&partner),
                campaign: Arc::clone(&name),
                term: Some("sidebar".into()),
                at: NOW,
            });
            queued.try_take()
        })
    });
    group.finish();
}

/// A route cache like the redirector's, for the pieces on their own.
fn redirector_routes() -> Arc<RouteCache> {
    let policy = LandingPolicy::new(&["www.example.com".to_owned()], false);
    let default_landing = policy.parse("https://www.example.com/signup").unwrap();
    let routes = Arc::new(RouteCache::new(policy, default_landing));
    routes.apply(catalog());
    routes
}

criterion_group!(benches, bench_redirect, bench_pieces);
criterion_main!(benches);
