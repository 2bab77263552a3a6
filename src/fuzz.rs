//! What the fuzz targets (`fuzz/`) and the corpus replay
//! (`tests/fuzz_corpus.rs`) run: each entry point takes arbitrary bytes,
//! feeds them to one parser the way the service does, and panics only when
//! a rule a visitor or partner relies on breaks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Config;
use crate::edge::cache::RouteCache;
use crate::edge::clicks::{self, ClickReceiver};
use crate::edge::connections::{answer_one, PublicInner, Step};
use crate::edge::cookie::{find_cookies, CookieSigner, VerifiedCookie};
use crate::edge::landing::LandingPolicy;
use crate::edge::redirect::{build_location, RedirectSettings, Redirector, UtmParams};
use crate::edge::traffic::TrafficCounts;
use crate::ids::{CampaignName, CampaignSlug, ClickId, PartnerId};
use crate::metrics::Metrics;
use crate::store::{Campaign, CatalogSnapshot, Partner};

const SECRET: &str = "fuzz-secret-0123456789";
const LANDING_HOST: &str = "www.example.com";
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The public listener's redirect path with one partner, `acme`, whose
/// campaign `spring` lands on a URL with a query and a fragment.
struct Fixture {
    public: PublicInner,
    routes: Arc<RouteCache>,
    signer: CookieSigner,
    /// Kept so the click queue stays open; never read (a full queue drops
    /// clicks and counts them, as in the service).
    _clicks: ClickReceiver,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let policy = LandingPolicy::new(&[LANDING_HOST.to_owned()], false);
        let landing = policy.parse("https://www.example.com/signup").unwrap();
        let routes = Arc::new(RouteCache::new(policy, landing));
        routes.apply(catalog());
        let metrics = Arc::new(Metrics::new());
        let (queue, receiver) = clicks::queue(1024, Arc::clone(&metrics));
        let signer = CookieSigner::new(&[SECRET]);
        let redirector = Redirector::new(
            Arc::clone(&routes),
            signer.clone(),
            queue,
            Arc::new(TrafficCounts::new(Arc::clone(&metrics))),
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
        let public = PublicInner {
            redirector,
            metrics,
            api: axum::Router::new(),
            write_timeout: Duration::from_secs(30),
        };
        Fixture {
            public,
            routes,
            signer,
            _clicks: receiver,
        }
    })
}

fn catalog() -> CatalogSnapshot {
    let acme = PartnerId::parse("acme").unwrap();
    CatalogSnapshot {
        version: 1,
        partners: vec![Partner {
            id: acme.clone(),
            name: "Acme".into(),
            paypal_email: None,
            disabled: false,
            token_hash: String::new(),
            created_at: Utc::now(),
        }],
        campaigns: vec![Campaign {
            partner: acme,
            slug: CampaignSlug::parse("spring").unwrap(),
            name: CampaignName::parse("spring-sale").unwrap(),
            trial_days: Some(30),
            discount: Some(20),
            landing: Some("https://www.example.com/p?x=1#frag".into()),
            utm_term: None,
            created_at: Utc::now(),
        }],
    }
}

/// Request heads, pipelined, through the redirect's own parser: every
/// request answered there gets a well-formed 302 to the allowlisted host,
/// with a cookie that verifies; the rest is left to hyper untouched.
pub fn request_head(data: &[u8]) {
    let fixture = fixture();
    let mut consumed = 0;
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let step = answer_one(&fixture.public, &data[consumed..], MAX_HEAD_BYTES, &mut out);
        let (len, last) = match step {
            Step::Answered(len) => (len, false),
            Step::AnsweredLast(len) => (len, true),
            Step::Partial | Step::HandOff => {
                assert_eq!(
                    out.len(),
                    before,
                    "nothing written for a request not answered"
                );
                return;
            }
        };
        assert!(
            len > 0 && consumed + len <= data.len(),
            "a head is within the buffer"
        );
        check_redirect(&out[before..]);
        consumed += len;
        if last {
            return;
        }
    }
}

fn check_redirect(answer: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response
        .parse(answer)
        .expect("an answer parses as HTTP/1.1");
    assert_eq!(parsed, httparse::Status::Complete(answer.len()));
    assert_eq!(response.code, Some(302));
    let value = |name: &str| {
        let mut found = response.headers.iter().filter(|h| h.name == name);
        let first = found.next().map(|h| std::str::from_utf8(h.value).unwrap());
        assert!(found.next().is_none(), "one {name} header");
        first
    };
    check_location(value("location").expect("a 302 has a location"));
    if let Some(cookie) = value("set-cookie") {
        let signed = cookie
            .strip_prefix("lc_attr=")
            .and_then(|c| c.split(';').next())
            .expect("the cookie is lc_attr");
        let verified = fixture().signer.verify(signed.as_bytes());
        round_trip(&verified.expect("a cookie the redirect sets verifies"));
    }
}

/// An absolute https URL on the allowlisted host, printable ASCII only.
fn check_location(location: &str) {
    assert!(
        location.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "header-safe: {location:?}"
    );
    let url = url::Url::parse(location).expect("the location is a URL");
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some(LANDING_HOST), "{location}");
}

/// A query string as a visitor's link carries it: the Location built from
/// it stays on the campaign's landing, with each parameter once and the
/// visitor's term back exactly as parsed (nothing broke out of its value).
pub fn utm_location(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let utm = UtmParams::parse(Some(query));
    let partner = fixture().routes.get("acme").expect("acme is cached");
    let campaign = partner.campaign(Some("spring"));
    let click = ClickId::random();
    let location = build_location(&partner, campaign, &utm, utm.term(), Some(click));
    check_location(&location);
    let url = url::Url::parse(&location).unwrap();
    assert_eq!(url.path(), "/p");
    assert_eq!(url.fragment(), Some("frag"));
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let values = |key: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x"), ["1"]);
    assert_eq!(values("utm_campaign"), ["spring-sale"]);
    assert_eq!(values("trial_days"), ["30"]);
    assert_eq!(values("discount"), ["20"]);
    assert_eq!(values("lc_click"), [click.text().as_str()]);
    assert_eq!(values("utm_source").len(), 1);
    assert_eq!(values("utm_medium").len(), 1);
    assert_eq!(
        values("utm_term"),
        utm.term().into_iter().collect::<Vec<_>>()
    );
}

/// A `Cookie` header: every `lc_attr` value in it is verified; and the
/// bytes themselves as a payload signed with the right key, which takes
/// them past the signature to the decoder. A cookie that verifies carries
/// an attribution that signs and verifies back to itself.
pub fn cookie(data: &[u8]) {
    let signer = &fixture().signer;
    for value in find_cookies(data, "lc_attr") {
        if let Some(verified) = signer.verify(value) {
            round_trip(&verified);
        }
    }
    if let Some(verified) = signer.verify(signed_as_ours(data).as_bytes()) {
        round_trip(&verified);
    }
}

fn signed_as_ours(payload: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(payload);
    let tag = mac.finalize().into_bytes();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

fn round_trip(verified: &VerifiedCookie) {
    let signer = &fixture().signer;
    let attribution = verified.attribution().expect("verified means readable");
    let again = signer.sign(&attribution);
    let back = signer
        .verify(again.as_bytes())
        .expect("our own cookie verifies");
    assert_eq!(back.attribution(), Some(attribution));
}

/// One event as `POST /v1/events` and `lastclick ingest` take it: strict
/// JSON, then the event rules. An accepted event survives the queue's
/// encoding unchanged.
pub fn event_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if crate::json::refuse_repeated_keys(data).is_err() {
        return;
    }
    let latest = Utc::now() + chrono::Duration::minutes(5);
    if let Ok(event) = crate::conversions::events::validate_event(&value, latest) {
        let stored = serde_json::to_string(&event).unwrap();
        let back: crate::conversions::events::Event = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, event);
    }
}

/// A configuration file: refused with a message, or valid, and then
/// everything `serve` builds from it builds.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text) {
        let _ = config.landing_policy();
        let _ = config.default_landing();
        let _ = config.rules();
    }
}
