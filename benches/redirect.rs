//! The redirect's hot path without sockets: what one counted redirect
//! costs in CPU, next to a reference measured in the same run.

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, Mac};
use lastclick::cache::RouteCache;
use lastclick::clicks;
use lastclick::cookie::CookieSigner;
use lastclick::ids::{CampaignName, CampaignSlug, PartnerId};
use lastclick::landing::LandingPolicy;
use lastclick::metrics::Metrics;
use lastclick::redirect::{RedirectRequest, RedirectSettings, Redirector};
use lastclick::store::{Campaign, CatalogSnapshot, Partner};
use sha2::Sha256;

const NOW: i64 = 1_795_000_000;

fn redirector() -> (Redirector, clicks::ClickReceiver) {
    let policy = LandingPolicy::new(&["www.example.com".to_owned()], false);
    let default_landing = policy.parse("https://www.example.com/signup").unwrap();
    let routes = Arc::new(RouteCache::new(policy, default_landing));
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
    routes.apply(CatalogSnapshot {
        version: 1,
        partners,
        campaigns,
    });
    let (queue, receiver) = clicks::queue(1024, Arc::new(Metrics::new()));
    let redirector = Redirector::new(
        routes,
        CookieSigner::new(&["bench-secret-0123456789"]),
        queue,
        RedirectSettings {
            cookie_name: "lc_attr".into(),
            cookie_domain: String::new(),
            cookie_secure: true,
            window_secs: 10_368_000,
            dedup_secs: 30,
            default_location: "https://www.example.com/signup".into(),
        },
    );
    (redirector, receiver)
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
        now: NOW,
    }
}

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

criterion_group!(benches, bench_redirect);
criterion_main!(benches);
