//! The attribution cookie: a compact binary payload, HMAC-SHA256 signed with
//! rotating secrets, encoded and verified without touching the heap.
//!
//! Value: `base64url(payload) "." base64url(hmac(payload))`. Payload, big
//! endian: version (1), click id (16), visitor id (16), click time in unix
//! seconds (8), trial days (2), discount (1), then partner, campaign and term
//! each as a length (1, 1 and 2 bytes) and UTF-8 bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::ids::{ClickId, VisitorId};

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Longest utm_term in bytes (128 characters of up to 4 bytes).
pub const MAX_TERM_BYTES: usize = 512;
const MAX_PAYLOAD: usize = 1 + 16 + 16 + 8 + 2 + 1 + 1 + 64 + 1 + 64 + 2 + MAX_TERM_BYTES;
/// Longest cookie value this module writes or reads.
pub const MAX_VALUE_LEN: usize = (MAX_PAYLOAD * 4).div_ceil(3) + 1 + (MAC_LEN * 4).div_ceil(3);

type HmacSha256 = Hmac<Sha256>;

/// What the cookie says, borrowed from a verified payload or from the
/// request being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution<'a> {
    pub click_id: ClickId,
    pub visitor_id: VisitorId,
    pub partner: &'a str,
    pub campaign: &'a str,
    pub term: Option<&'a str>,
    /// 0 when the campaign grants no trial extension.
    pub trial_days: u16,
    /// 0 when the campaign grants no discount.
    pub discount: u8,
    /// Unix seconds.
    pub clicked_at: i64,
}

/// Signs with the first secret, verifies with any.
#[derive(Clone)]
pub struct CookieSigner {
    /// Keyed MAC states, cloned per use so the key is hashed only once.
    keys: Vec<HmacSha256>,
}

/// A payload that has been checked: kept on the stack, read through
/// [`VerifiedCookie::attribution`].
pub struct VerifiedCookie {
    payload: [u8; MAX_PAYLOAD],
    len: usize,
}

impl CookieSigner {
    /// `secrets` must not be empty (configuration guarantees it).
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        assert!(!secrets.is_empty(), "a cookie signer needs a secret");
        let keys = secrets
            .iter()
            .map(|s| HmacSha256::new_from_slice(s.as_ref()).expect("HMAC takes keys of any length"))
            .collect();
        CookieSigner { keys }
    }

    /// Appends the signed cookie value for `attr` to `out`. Fields over
    /// their limits are cut (the redirect never passes such values).
    pub fn sign_into(&self, attr: &Attribution<'_>, out: &mut String) {
        let mut payload = [0u8; MAX_PAYLOAD];
        let len = encode_payload(attr, &mut payload);
        let mut mac = self.keys[0].clone();
        mac.update(&payload[..len]);
        let tag = mac.finalize().into_bytes();
        push_base64(&payload[..len], out);
        out.push('.');
        push_base64(&tag, out);
    }

    /// A signed cookie value as a new string.
    pub fn sign(&self, attr: &Attribution<'_>) -> String {
        let mut out = String::with_capacity(256);
        self.sign_into(attr, &mut out);
        out
    }

    /// Checks the signature against every secret and the payload's shape.
    pub fn verify(&self, value: &[u8]) -> Option<VerifiedCookie> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        let dot = value.iter().position(|&b| b == b'.')?;
        let (body, tag) = (&value[..dot], &value[dot + 1..]);
        let mut payload = [0u8; MAX_PAYLOAD];
        let len = URL_SAFE_NO_PAD.decode_slice(body, &mut payload).ok()?;
        let mut tag_bytes = [0u8; MAC_LEN + 3];
        if URL_SAFE_NO_PAD.decode_slice(tag, &mut tag_bytes).ok()? != MAC_LEN {
            return None;
        }
        let signed = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(&payload[..len]);
            mac.verify_slice(&tag_bytes[..MAC_LEN]).is_ok()
        });
        let cookie = VerifiedCookie { payload, len };
        (signed && cookie.attribution().is_some()).then_some(cookie)
    }
}

impl VerifiedCookie {
    /// The attribution the cookie carries (always `Some` once verified).
    pub fn attribution(&self) -> Option<Attribution<'_>> {
        decode_payload(&self.payload[..self.len])
    }
}

/// Appends base64url of `bytes` (at most a payload's length) to `out`
/// through a stack buffer: `Engine::encode_string` goes through a chunked
/// writer that costs more than the encoding itself.
fn push_base64(bytes: &[u8], out: &mut String) {
    let mut buf = [0u8; (MAX_PAYLOAD * 4).div_ceil(3)];
    let n = URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut buf)
        .expect("the buffer fits the longest payload");
    out.push_str(std::str::from_utf8(&buf[..n]).expect("base64 is ASCII"));
}

/// Every value of cookie `name` in a `Cookie` request header, in order: a
/// browser sends one per domain and path it holds, so after a change of
/// `cookie.domain` an old one may come first.
pub fn find_cookies<'h>(header: &'h [u8], name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii_start();
        let rest = pair.strip_prefix(name.as_bytes())?;
        rest.strip_prefix(b"=").map(|v| v.trim_ascii_end())
    })
}

fn cut(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

fn encode_payload(attr: &Attribution<'_>, out: &mut [u8; MAX_PAYLOAD]) -> usize {
    let mut w = Writer { buf: out, pos: 0 };
    w.put(&[VERSION]);
    w.put(&attr.click_id.0);
    w.put(&attr.visitor_id.0);
    w.put(&attr.clicked_at.to_be_bytes());
    w.put(&attr.trial_days.to_be_bytes());
    w.put(&[attr.discount]);
    let partner = cut(attr.partner, 64);
    w.put(&[partner.len() as u8]);
    w.put(partner);
    let campaign = cut(attr.campaign, 64);
    w.put(&[campaign.len() as u8]);
    w.put(campaign);
    let term = cut(attr.term.unwrap_or(""), MAX_TERM_BYTES);
    w.put(&(term.len() as u16).to_be_bytes());
    w.put(term);
    w.pos
}

struct Writer<'b> {
    buf: &'b mut [u8; MAX_PAYLOAD],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

struct Reader<'b> {
    buf: &'b [u8],
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn text(&mut self, len: usize) -> Option<&'b str> {
        std::str::from_utf8(self.take(len)?).ok()
    }
}

fn decode_payload(payload: &[u8]) -> Option<Attribution<'_>> {
    let mut r = Reader { buf: payload };
    if r.array::<1>()? != [VERSION] {
        return None;
    }
    let click_id = ClickId(r.array()?);
    let visitor_id = VisitorId(r.array()?);
    let clicked_at = i64::from_be_bytes(r.array()?);
    let trial_days = u16::from_be_bytes(r.array()?);
    let [discount] = r.array()?;
    let [partner_len] = r.array()?;
    let partner = r.text(partner_len as usize)?;
    let [campaign_len] = r.array()?;
    let campaign = r.text(campaign_len as usize)?;
    let term_len = u16::from_be_bytes(r.array()?);
    let term = r.text(term_len as usize)?;
    // Only what `encode_payload` writes: a field over its cut is no
    // cookie of ours, signed or not.
    let within_cuts = partner.len() <= 64 && campaign.len() <= 64 && term.len() <= MAX_TERM_BYTES;
    if !r.buf.is_empty() || partner.is_empty() || campaign.is_empty() || !within_cuts {
        return None;
    }
    Some(Attribution {
        click_id,
        visitor_id,
        partner,
        campaign,
        term: (!term.is_empty()).then_some(term),
        trial_days,
        discount,
        clicked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attribution<'static> {
        Attribution {
            click_id: ClickId([1; 16]),
            visitor_id: VisitorId([2; 16]),
            partner: "acme",
            campaign: "spring.sale",
            term: Some("blog-sidebar"),
            trial_days: 30,
            discount: 20,
            clicked_at: 1_795_000_000,
        }
    }

    #[test]
    fn a_signed_cookie_verifies_and_round_trips_every_field() {
        let signer = CookieSigner::new(&["0123456789abcdef"]);
        let value = signer.sign(&sample());
        let verified = signer.verify(value.as_bytes()).expect("verifies");
        assert_eq!(verified.attribution(), Some(sample()));
    }

    /// A payload signed with the right key but with a field longer than
    /// the encoder writes is not a cookie of ours: it would sign back to a
    /// different cookie (the `cookie` fuzz target checks the round trip).
    #[test]
    fn a_signed_payload_over_the_encoders_cuts_is_refused() {
        let signer = CookieSigner::new(&["0123456789abcdef"]);
        let long = "p".repeat(65);
        let mut payload = vec![VERSION];
        payload.extend_from_slice(&[0; 16 + 16 + 8 + 2 + 1]);
        payload.push(65);
        payload.extend_from_slice(long.as_bytes());
        payload.extend_from_slice(&[1, b'c', 0, 0]);
        let mut mac = signer.keys[0].clone();
        mac.update(&payload);
        let mut value = String::new();
        push_base64(&payload, &mut value);
        value.push('.');
        push_base64(&mac.finalize().into_bytes(), &mut value);
        assert!(signer.verify(value.as_bytes()).is_none());
        payload[44] = 64;
        payload.remove(45);
        assert!(
            decode_payload(&payload).is_some(),
            "64 bytes is within the cut"
        );
    }

    #[test]
    fn rotation_keeps_old_cookies_valid_and_refuses_unknown_secrets() {
        let old = CookieSigner::new(&["old-secret-0123456"]);
        let rotated = CookieSigner::new(&["new-secret-0123456", "old-secret-0123456"]);
        let stranger = CookieSigner::new(&["someone-elses-key"]);
        let value = old.sign(&sample());
        assert!(rotated.verify(value.as_bytes()).is_some());
        assert!(stranger.verify(value.as_bytes()).is_none());
        let fresh = rotated.sign(&sample());
        assert!(
            old.verify(fresh.as_bytes()).is_none(),
            "the first secret signs"
        );
    }

    #[test]
    fn any_flipped_character_breaks_the_signature() {
        let signer = CookieSigner::new(&["0123456789abcdef"]);
        let value = signer.sign(&sample());
        for i in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if bytes != value.as_bytes() {
                assert!(signer.verify(&bytes).is_none(), "flip at {i} verified");
            }
        }
    }

    #[test]
    fn the_largest_cookie_stays_well_under_4096_bytes() {
        let signer = CookieSigner::new(&["0123456789abcdef"]);
        let long = "é".repeat(128);
        let partner = "p".repeat(64);
        let campaign = "c".repeat(64);
        let attr = Attribution {
            partner: &partner,
            campaign: &campaign,
            term: Some(&long),
            ..sample()
        };
        let value = signer.sign(&attr);
        assert!(
            value.len() <= MAX_VALUE_LEN && value.len() < 2048,
            "{}",
            value.len()
        );
        assert_eq!(
            signer.verify(value.as_bytes()).unwrap().attribution(),
            Some(attr)
        );
    }

    #[test]
    fn junk_never_verifies() {
        let signer = CookieSigner::new(&["0123456789abcdef"]);
        for junk in [
            &b""[..],
            b".",
            b"abc",
            b"abc.def",
            &[0xff; 40],
            &[b'A'; 5000],
        ] {
            assert!(signer.verify(junk).is_none());
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let header = b"other=1; lc_attrx=2; lc_attr=value.sig ; x=y; lc_attr=second";
        let found: Vec<&[u8]> = find_cookies(header, "lc_attr").collect();
        assert_eq!(found, [&b"value.sig"[..], &b"second"[..]]);
        assert_eq!(find_cookies(b"a=b", "lc_attr").next(), None);
    }

    #[test]
    fn ids_round_trip_through_their_text_form() {
        let id = ClickId::random();
        assert_eq!(ClickId::parse(&id.to_string()), Some(id));
        assert_eq!(ClickId::parse("short"), None);
    }
}
