//! The redirect, the product's hot path: `/r/{partner}[/{campaign}]` to a
//! `302` on the allowlist, with the signed attribution cookie and the click
//! queued. No store access, no locks held, no allocation beyond the two
//! header strings it answers with.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::AhoCorasick;

use crate::edge::cache::{CampaignRoute, PartnerRoute, RouteCache};
use crate::edge::clicks::ClickQueue;
use crate::edge::cookie::{
    find_cookies, Attribution, ClickId, CookieSigner, VerifiedCookie, VisitorId,
};
use crate::edge::fetch::{FetchSignals, SuspectReason};
use crate::edge::terms::TermCap;
use crate::edge::traffic::{Traffic, TrafficCounts};
use crate::ids::{is_path_id, MAX_UTM_CHARS};
use crate::metrics::RedirectOutcome;
use crate::store::Click;

/// Most attribution cookies of one request checked: a browser holds one
/// per domain and path; more is a forged header making the server hash.
const MAX_COOKIES_TRIED: usize = 4;

/// User agents of crawlers and link previews: redirected, never counted.
const BOT_MARKERS: [&str; 24] = [
    "bot/",
    "bot;",
    "crawler",
    "spider",
    "slackbot",
    "slack-imgproxy",
    "facebookexternalhit",
    "facebookcatalog",
    "twitterbot",
    "googlebot",
    "bingbot",
    "linkedinbot",
    "discordbot",
    "telegrambot",
    "whatsapp",
    "skypeuripreview",
    "applebot",
    "embedly",
    "pinterest",
    "redditbot",
    "yandex",
    "baiduspider",
    "duckduckbot",
    "headlesschrome",
];

/// Every marker above contains one of these.
const BOT_HINTS: [&str; 11] = [
    "bot",
    "crawler",
    "spider",
    "slack-imgproxy",
    "facebook",
    "whatsapp",
    "skypeuripreview",
    "embedly",
    "pinterest",
    "yandex",
    "headlesschrome",
];

/// Finds the bot markers in a user agent, ignoring ASCII case.
struct BotCheck {
    markers: AhoCorasick,
    /// [`BOT_HINTS`]: one SIMD pass over a user agent (lower-cased on the
    /// stack) clears most browsers; `None` where the CPU has no SIMD.
    hints: Option<aho_corasick::packed::Searcher>,
}

impl BotCheck {
    fn new() -> Self {
        BotCheck {
            markers: AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(BOT_MARKERS)
                .expect("the bot markers are valid patterns"),
            hints: aho_corasick::packed::Searcher::new(BOT_HINTS),
        }
    }

    fn matches(&self, user_agent: &[u8]) -> bool {
        let mut lower = [0u8; 256];
        if let (Some(hints), Some(lower)) = (&self.hints, lower.get_mut(..user_agent.len())) {
            lower.copy_from_slice(user_agent);
            lower.make_ascii_lowercase();
            if hints.find(&*lower).is_none() {
                return false;
            }
        }
        self.markers.is_match(user_agent)
    }
}

/// The parts of a request the redirect reads.
#[derive(Debug, Clone, Copy)]
pub struct RedirectRequest<'a> {
    pub head: bool,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Every `Cookie` header value, in order.
    pub cookies: &'a [&'a [u8]],
    pub user_agent: Option<&'a [u8]>,
    /// What the browser says about how the request was made.
    pub fetch: FetchSignals<'a>,
    /// Unix seconds.
    pub now: i64,
}

/// What to answer: always a 302 to `location`.
#[derive(Debug)]
pub struct RedirectResponse {
    pub location: Cow<'static, str>,
    pub set_cookie: Option<String>,
    pub outcome: RedirectOutcome,
    /// Why, when the outcome is `Suspect`.
    pub suspect: Option<SuspectReason>,
}

/// Settings of the redirect, from configuration.
pub struct RedirectSettings {
    pub cookie_name: String,
    pub cookie_domain: String,
    pub cookie_secure: bool,
    pub window_secs: u64,
    pub dedup_secs: i64,
    /// Location for links that credit nobody: `landing.default` as is.
    pub default_location: String,
    /// `report.max_terms_per_day`.
    pub max_terms_per_day: usize,
}

pub struct Redirector {
    routes: Arc<RouteCache>,
    signer: CookieSigner,
    bots: BotCheck,
    clicks: ClickQueue,
    /// Bots and suspects, tallied for the report.
    traffic: Arc<TrafficCounts>,
    cookie_name: Box<str>,
    /// `; Max-Age=…; Path=/; HttpOnly; SameSite=Lax[; Secure][; Domain=…]`
    cookie_attributes: Box<str>,
    dedup_secs: i64,
    default_location: &'static str,
    terms: TermCap,
}

/// The utm_* values a visitor's URL may bring.
#[derive(Default)]
pub struct UtmParams<'q> {
    source: Option<Cow<'q, str>>,
    medium: Option<Cow<'q, str>>,
    term: Option<Cow<'q, str>>,
    content: Option<Cow<'q, str>>,
}

impl<'q> UtmParams<'q> {
    /// The visitor's `utm_term`, if it carried an acceptable one.
    pub fn term(&self) -> Option<&str> {
        self.term.as_deref()
    }

    /// Keeps the first acceptable value of each; ignores everything else.
    /// Only the pairs that may be utm_* ones are decoded.
    pub fn parse(query: Option<&'q str>) -> Self {
        let mut utm = UtmParams::default();
        let Some(query) = query else { return utm };
        for pair in query.split('&') {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let plain_key = matches!(
                raw_key,
                "utm_source" | "utm_medium" | "utm_term" | "utm_content"
            );
            let encoded = |text: &str| text.contains(['%', '+']);
            if !plain_key && !encoded(raw_key) {
                continue;
            }
            let (key, value) = if plain_key && !encoded(raw_value) {
                (Cow::Borrowed(raw_key), Cow::Borrowed(raw_value))
            } else {
                match form_urlencoded::parse(pair.as_bytes()).next() {
                    Some(decoded) => decoded,
                    None => continue,
                }
            };
            let slot = match key.as_ref() {
                "utm_source" => &mut utm.source,
                "utm_medium" => &mut utm.medium,
                "utm_term" => &mut utm.term,
                "utm_content" => &mut utm.content,
                _ => continue,
            };
            if slot.is_none() && acceptable_utm(&value) {
                *slot = Some(value);
            }
        }
        utm
    }
}

/// Non-empty, at most 128 characters, no control characters.
fn acceptable_utm(value: &str) -> bool {
    !value.is_empty()
        && (value.len() <= MAX_UTM_CHARS || value.chars().count() <= MAX_UTM_CHARS)
        && !value.chars().any(char::is_control)
}

/// Splits `/r/{partner}[/{campaign}]`; `None` for anything else.
pub fn parse_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/r/")?;
    let (partner, campaign) = match rest.split_once('/') {
        None => (rest, None),
        Some((p, "")) => (p, None),
        Some((p, c)) => (p, Some(c.strip_suffix('/').unwrap_or(c))),
    };
    let campaign_ok = campaign.is_none_or(is_path_id);
    (is_path_id(partner) && campaign_ok).then_some((partner, campaign))
}

impl Redirector {
    pub fn new(
        routes: Arc<RouteCache>,
        signer: CookieSigner,
        clicks: ClickQueue,
        traffic: Arc<TrafficCounts>,
        settings: RedirectSettings,
    ) -> Self {
        let mut attributes = format!(
            "; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
            settings.window_secs
        );
        if settings.cookie_secure {
            attributes.push_str("; Secure");
        }
        if !settings.cookie_domain.is_empty() {
            attributes.push_str("; Domain=");
            attributes.push_str(&settings.cookie_domain);
        }
        Redirector {
            routes,
            signer,
            bots: BotCheck::new(),
            clicks,
            traffic,
            cookie_name: settings.cookie_name.into(),
            cookie_attributes: attributes.into(),
            dedup_secs: settings.dedup_secs,
            // Lives as long as the process; leaked once so every uncounted
            // answer borrows it instead of copying.
            default_location: Box::leak(settings.default_location.into_boxed_str()),
            terms: TermCap::new(settings.max_terms_per_day),
        }
    }

    /// `landing.default` as configured: where links that credit nobody go.
    pub fn default_location(&self) -> &'static str {
        self.default_location
    }

    /// Answers one redirect and queues its click when it counts.
    pub fn handle(&self, req: &RedirectRequest<'_>) -> RedirectResponse {
        let Some((partner_id, slug)) = parse_path(req.path) else {
            return self.to_default(RedirectOutcome::Invalid);
        };
        let Some(partner) = self.routes.get(partner_id) else {
            return self.to_default(RedirectOutcome::UnknownPartner);
        };
        if !partner.enabled {
            return self.to_default(RedirectOutcome::DisabledPartner);
        }
        let campaign = partner.campaign(slug);
        let utm = UtmParams::parse(req.query);
        let term = utm.term.as_deref().or(campaign.term.as_deref());
        // Not a visitor's click: redirected, no cookie, not counted.
        let not_a_click = self.not_a_click(req);
        if let Some((outcome, suspect)) = not_a_click {
            self.tally(
                &partner,
                campaign,
                utm.term.as_deref(),
                term,
                outcome,
                req.now,
            );
            let location = build_location(&partner, campaign, &utm, term, None);
            return RedirectResponse {
                location: Cow::Owned(location),
                set_cookie: None,
                outcome,
                suspect,
            };
        }
        // A campaign's own term is the partner's, bounded by its campaigns;
        // a term from the URL is anyone's, and counts within the day's cap
        // (bots and HEAD requests, never counted, take no room in it).
        let term = match utm.term.as_deref() {
            Some(visitors) => Some(self.terms.admit(&partner.id, visitors, req.now)),
            None => campaign.term.as_deref(),
        };
        let earlier = self.earlier_cookie(req.cookies);
        let earlier = earlier.as_ref().and_then(VerifiedCookie::attribution);
        if let Some(repeat) =
            earlier.filter(|e| self.is_repeat(e, &partner, campaign, term, req.now))
        {
            return self.answer(
                &partner,
                campaign,
                &utm,
                &repeat,
                RedirectOutcome::Duplicate,
            );
        }
        let attribution = Attribution {
            click_id: ClickId::random(),
            visitor_id: earlier.map_or_else(VisitorId::random, |e| e.visitor_id),
            partner: &partner.id,
            campaign: &campaign.name,
            term,
            trial_days: campaign.trial_days,
            discount: campaign.discount,
            clicked_at: req.now,
        };
        if let Some(taken) = earlier.filter(|e| e.partner != &*partner.id) {
            self.tally_overwrite(&partner, campaign, term, &taken, req.now);
        }
        self.clicks.push(Click {
            click_id: attribution.click_id,
            visitor_id: attribution.visitor_id,
            partner: Arc::clone(&partner.id),
            campaign: Arc::clone(&campaign.name),
            term: term.map(Into::into),
            at: req.now,
        });
        self.answer(
            &partner,
            campaign,
            &utm,
            &attribution,
            RedirectOutcome::Counted,
        )
    }

    /// What a request that is not a visitor's click is: a `HEAD`, a bot,
    /// or a suspect by the browser's own account.
    fn not_a_click(
        &self,
        req: &RedirectRequest<'_>,
    ) -> Option<(RedirectOutcome, Option<SuspectReason>)> {
        if req.head {
            Some((RedirectOutcome::Head, None))
        } else if self.is_bot(req.user_agent) {
            Some((RedirectOutcome::Bot, None))
        } else {
            req.fetch
                .suspect()
                .map(|reason| (RedirectOutcome::Suspect, Some(reason)))
        }
    }

    /// A counted click that took `taken`'s visitor (another partner's):
    /// both sides count.
    fn tally_overwrite(
        &self,
        partner: &PartnerRoute,
        campaign: &CampaignRoute,
        term: Option<&str>,
        taken: &Attribution<'_>,
        now: i64,
    ) {
        let won = Traffic::OverwriteWon;
        self.traffic
            .count(&partner.id, &campaign.name, term, now, won);
        self.traffic
            .count_lost(taken.partner, taken.campaign, taken.term, now);
    }

    /// Tallies a bot's or suspect's request in the report cell a click
    /// would have counted in: its term if the partner's day already has
    /// it (they take no room in the day's terms), else `(other)`.
    fn tally(
        &self,
        partner: &PartnerRoute,
        campaign: &CampaignRoute,
        visitors_term: Option<&str>,
        term: Option<&str>,
        outcome: RedirectOutcome,
        now: i64,
    ) {
        let traffic = match outcome {
            RedirectOutcome::Bot => Traffic::Bot,
            RedirectOutcome::Suspect => Traffic::Suspect,
            _ => return,
        };
        let term = match visitors_term {
            Some(term) => Some(self.terms.peek(&partner.id, term, now)),
            None => term,
        };
        self.traffic
            .count(&partner.id, &campaign.name, term, now, traffic);
    }

    fn to_default(&self, outcome: RedirectOutcome) -> RedirectResponse {
        RedirectResponse {
            location: Cow::Borrowed(self.default_location),
            set_cookie: None,
            outcome,
            suspect: None,
        }
    }

    fn answer(
        &self,
        partner: &PartnerRoute,
        campaign: &CampaignRoute,
        utm: &UtmParams<'_>,
        attribution: &Attribution<'_>,
        outcome: RedirectOutcome,
    ) -> RedirectResponse {
        let location = build_location(
            partner,
            campaign,
            utm,
            attribution.term,
            Some(attribution.click_id),
        );
        RedirectResponse {
            location: Cow::Owned(location),
            set_cookie: Some(self.set_cookie(attribution)),
            outcome,
            suspect: None,
        }
    }

    /// Whether the user agent names a known bot: a SIMD prefilter, then
    /// the full match only for user agents that pass it.
    pub fn is_bot(&self, user_agent: Option<&[u8]>) -> bool {
        user_agent.is_some_and(|ua| self.bots.matches(ua))
    }

    /// The newest valid attribution cookie of the request. Every one is
    /// tried, up to `MAX_COOKIES_TRIED` (each costs an HMAC): a leftover
    /// from an earlier `cookie.domain` or secret must not hide the valid
    /// one.
    fn earlier_cookie(&self, headers: &[&[u8]]) -> Option<VerifiedCookie> {
        headers
            .iter()
            .flat_map(|h| find_cookies(h, &self.cookie_name))
            .take(MAX_COOKIES_TRIED)
            .filter_map(|value| self.signer.verify(value))
            .max_by_key(|cookie| cookie.attribution().map(|a| a.clicked_at))
    }

    /// The same visitor on the same link (partner, campaign, term) within
    /// the dedup window.
    fn is_repeat(
        &self,
        earlier: &Attribution<'_>,
        partner: &PartnerRoute,
        campaign: &CampaignRoute,
        term: Option<&str>,
        now: i64,
    ) -> bool {
        let age = now - earlier.clicked_at;
        earlier.partner == &*partner.id
            && earlier.campaign == &*campaign.name
            && earlier.term == term
            && (0..self.dedup_secs).contains(&age)
    }

    fn set_cookie(&self, attribution: &Attribution<'_>) -> String {
        let mut out =
            String::with_capacity(self.cookie_name.len() + 320 + self.cookie_attributes.len());
        out.push_str(&self.cookie_name);
        out.push('=');
        self.signer.sign_into(attribution, &mut out);
        out.push_str(&self.cookie_attributes);
        out
    }
}

/// The campaign's landing with the redirect's parameters appended; every
/// value from the request is percent-encoded, so nothing can break out of
/// its parameter, the URL or the header.
pub fn build_location(
    partner: &PartnerRoute,
    campaign: &CampaignRoute,
    utm: &UtmParams<'_>,
    term: Option<&str>,
    click: Option<ClickId>,
) -> String {
    let mut out = String::with_capacity(campaign.landing_prefix.len() + 192);
    out.push_str(&campaign.landing_prefix);
    out.push_str("utm_source=");
    out.extend(form_urlencoded::byte_serialize(
        utm.source.as_deref().unwrap_or(&partner.id).as_bytes(),
    ));
    out.push_str("&utm_medium=");
    out.extend(form_urlencoded::byte_serialize(
        utm.medium.as_deref().unwrap_or("affiliate").as_bytes(),
    ));
    out.push_str("&utm_campaign=");
    out.push_str(&campaign.name);
    if let Some(term) = term {
        out.push_str("&utm_term=");
        out.extend(form_urlencoded::byte_serialize(term.as_bytes()));
    }
    if let Some(content) = &utm.content {
        out.push_str("&utm_content=");
        out.extend(form_urlencoded::byte_serialize(content.as_bytes()));
    }
    if let Some(click) = click {
        out.push_str("&lc_click=");
        click.write_to(&mut out);
    }
    out.push_str(&campaign.deal_params);
    out.push_str(&campaign.fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_partner_and_campaign() {
        assert_eq!(parse_path("/r/acme"), Some(("acme", None)));
        assert_eq!(parse_path("/r/acme/"), Some(("acme", None)));
        assert_eq!(parse_path("/r/acme/spring"), Some(("acme", Some("spring"))));
        assert_eq!(
            parse_path("/r/acme/spring/"),
            Some(("acme", Some("spring")))
        );
        assert_eq!(parse_path("/r/acme/spring/x"), None);
        assert_eq!(parse_path("/r/"), None);
        assert_eq!(parse_path("/r/a%2Fb"), None);
        assert_eq!(parse_path("/r/..%2F"), None);
        assert_eq!(parse_path("/x/acme"), None);
    }

    #[test]
    fn utm_keys_may_be_encoded_and_other_pairs_are_skipped() {
        let utm = UtmParams::parse(Some("a=1&&utm%5Fterm=x+y&utm_source&utm_source=s%21&b"));
        assert_eq!(utm.term(), Some("x y"));
        assert_eq!(utm.source.as_deref(), Some("s!"));
        let first = UtmParams::parse(Some("utm_term=one&utm_term=two"));
        assert_eq!(first.term(), Some("one"));
    }

    #[test]
    fn every_bot_marker_contains_a_hint() {
        for marker in BOT_MARKERS {
            assert!(BOT_HINTS.iter().any(|h| marker.contains(h)), "{marker}");
        }
    }

    #[test]
    fn bots_are_found_in_any_case_and_any_length() {
        let bots = BotCheck::new();
        let browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0";
        assert!(!bots.matches(browser.as_bytes()));
        assert!(bots.matches(b"Mozilla/5.0 (compatible; GoogleBot/2.1)"));
        assert!(bots.matches(b"FACEBOOKEXTERNALHIT/1.1"));
        let long = format!("{}{}", "x".repeat(300), "Slackbot-LinkExpanding");
        assert!(bots.matches(long.as_bytes()));
        assert!(!bots.matches("x".repeat(300).as_bytes()));
        // A hint alone is not a marker.
        assert!(!bots.matches(b"Mozilla/5.0 robotics-lab"));
    }

    #[test]
    fn utm_values_over_128_characters_or_with_controls_are_ignored() {
        let long = "a".repeat(129);
        let query = format!("utm_term={long}&utm_source=ok&utm_medium=a%0D%0Ab");
        let utm = UtmParams::parse(Some(&query));
        assert!(utm.term.is_none());
        assert_eq!(utm.source.as_deref(), Some("ok"));
        assert!(utm.medium.is_none());
        let exact = "é".repeat(128);
        assert!(acceptable_utm(&exact));
    }
}
