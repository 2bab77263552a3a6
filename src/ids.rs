//! Domain identifiers parsed at the edge: partner ids, campaign slugs and
//! names, click and visitor ids, event and customer ids, and the bound on
//! a partner's `utm_term`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// `utm_campaign` of a partner's plain link; no campaign may take the name.
pub const DEFAULT_LINK: &str = "default_link";

/// Longest accepted utm_* value, in characters: longer values in a link
/// are ignored, and the Campaign Builder refuses them.
pub const MAX_UTM_CHARS: usize = 128;

/// `[A-Za-z0-9_-]{1,64}`: partner ids and campaign slugs, the path segments
/// of an affiliate link.
pub fn is_path_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `utm_campaign` of signups credited by a coupon code (their `utm_term`
/// is the code); no campaign may take the name.
pub const COUPON_CAMPAIGN: &str = "coupon";

/// `[A-Za-z0-9_.-]{1,64}`, neither `default_link` nor `coupon`: campaign
/// names, which become `utm_campaign`.
pub fn is_campaign_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text != DEFAULT_LINK
        && text != COUPON_CAMPAIGN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, String> {
                if $check(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(format!(concat!("`{}` is not ", $what), text.escape_debug()))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_string!(
    /// A partner id, `[A-Za-z0-9_-]{1,64}`.
    PartnerId,
    is_path_id,
    "a partner id ([A-Za-z0-9_-], 1 to 64 characters)"
);
checked_string!(
    /// A campaign slug, the last path segment of a campaign link.
    CampaignSlug,
    is_path_id,
    "a campaign slug ([A-Za-z0-9_-], 1 to 64 characters)"
);
/// Longest event, customer and payment id.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// 1 to `MAX_EVENT_ID_LEN` bytes, printable, no spaces: the ids merchants
/// give events and customers.
pub fn is_merchant_id(text: &str) -> bool {
    (1..=MAX_EVENT_ID_LEN).contains(&text.len())
        && text.chars().all(|c| !c.is_control() && !c.is_whitespace())
}

checked_string!(
    /// An event's id, its idempotency key (a payment's, named by refunds).
    EventId,
    is_merchant_id,
    "an id (1 to 128 printable characters without spaces)"
);
checked_string!(
    /// A merchant's customer id.
    CustomerId,
    is_merchant_id,
    "an id (1 to 128 printable characters without spaces)"
);
checked_string!(
    /// A campaign name, reported as `utm_campaign`.
    CampaignName,
    is_campaign_name,
    "a campaign name ([A-Za-z0-9_.-], 1 to 64 characters, not default_link or coupon)"
);

/// `[A-Z0-9_-]{3,32}` once upper-cased: coupon codes, unique across
/// partners whatever their case.
fn is_coupon_code(text: &str) -> bool {
    (3..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

checked_string!(
    /// A coupon code, kept upper case: [`CouponCode::of`] reads one in any
    /// case.
    CouponCode,
    is_coupon_code,
    "a coupon code ([A-Z0-9_-], 3 to 32 characters, any case)"
);

impl CouponCode {
    /// The code `text` names, whatever its case.
    pub fn of(text: &str) -> Result<Self, String> {
        Self::parse(&text.to_ascii_uppercase())
    }
}

/// `po_`, 12 hex digits of the request's unix milliseconds, 14 random hex
/// digits: 29 characters, within the 30 PayPal allows a payout's unique
/// id, and ordered by time as text, so that listings page by id.
pub fn is_payout_id(text: &str) -> bool {
    text.len() == 29
        && text.starts_with("po_")
        && text[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

checked_string!(
    /// A payout's id, also its unique reference in PayPal's bulk file.
    PayoutId,
    is_payout_id,
    "a payout id"
);

impl PayoutId {
    /// A new id for a payout requested at `unix_ms`.
    pub fn new(unix_ms: i64) -> PayoutId {
        let random: [u8; 7] = rand::random();
        let mut text = format!("po_{:012x}", unix_ms.clamp(0, 0xffff_ffff_ffff));
        for byte in random {
            text.push_str(&format!("{byte:02x}"));
        }
        PayoutId(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payout_ids_fit_paypal_and_sort_by_time() {
        let early = PayoutId::new(1_700_000_000_000);
        let late = PayoutId::new(1_700_000_000_001);
        assert_eq!(early.as_str().len(), 29);
        assert!(early < late);
        assert_eq!(PayoutId::parse(early.as_str()), Ok(early));
        assert!(PayoutId::parse("po_123").is_err());
        assert!(PayoutId::parse(&"po_".repeat(10)[..29]).is_err());
    }

    #[test]
    fn path_ids_follow_the_spec_charset() {
        assert!(is_path_id("acme_partner-1"));
        assert!(is_path_id(&"a".repeat(64)));
        assert!(!is_path_id(&"a".repeat(65)));
        assert!(!is_path_id(""));
        assert!(!is_path_id("a.b"));
        assert!(!is_path_id("a/b"));
        assert!(!is_path_id("é"));
    }

    #[test]
    fn merchant_ids_are_printable_without_spaces_and_bounded() {
        assert!(EventId::parse("evt_1:α").is_ok());
        assert!(CustomerId::parse(&"c".repeat(128)).is_ok());
        for bad in ["", "has space", "tab\t", "nl\n", &"c".repeat(129)] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
            assert!(CustomerId::parse(bad).is_err(), "{bad:?}");
        }
        // Stored and queued as plain strings, as before the types.
        let id = EventId::parse("evt_1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"evt_1\"");
        assert!(serde_json::from_str::<EventId>("\"a b\"").is_err());
    }

    #[test]
    fn campaign_names_allow_dots_but_never_default_link() {
        assert!(is_campaign_name("black.friday-2026"));
        assert!(!is_campaign_name("default_link"));
        assert!(!is_campaign_name("coupon"));
        assert!(!is_campaign_name("has space"));
    }
}

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh id: the current unix time in milliseconds (6 bytes,
            /// big endian), then 10 bytes from the thread's CSPRNG. The 80
            /// random bits keep ids unguessable, so nobody can claim another
            /// visitor's click; the time in front makes ids sort by
            /// creation, so the embedded store appends them to its tables
            /// instead of writing all over them.
            pub fn random() -> Self {
                let mut id: [u8; 16] = rand::random();
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
                Self(id)
            }

            /// Parses the 22-character base64url form.
            pub fn parse(text: &str) -> Option<Self> {
                let mut bytes = [0u8; 16];
                if text.len() != 22 {
                    return None;
                }
                match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
                    Ok(16) => Some(Self(bytes)),
                    _ => None,
                }
            }

            /// Appends the 22-character base64url form to `out`.
            pub fn write_to(&self, out: &mut String) {
                out.push_str(self.text().as_str());
            }

            /// The 22-character base64url form, on the stack.
            pub fn text(&self) -> IdText {
                let mut buf = [0u8; 22];
                URL_SAFE_NO_PAD
                    .encode_slice(self.0, &mut buf)
                    .expect("16 bytes always encode to 22 characters");
                IdText(buf)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.text().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

/// Hashes click and visitor ids by their last eight bytes. Those come from
/// a CSPRNG (visitor ids reach us only inside signed cookies), so they are
/// spread evenly and nobody can pick ids that collide; a keyed hash would
/// only cost time on every click.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut last = [0u8; 8];
        let n = bytes.len().min(8);
        last[..n].copy_from_slice(&bytes[bytes.len() - n..]);
        self.0 ^= u64::from_le_bytes(last);
    }

    /// The length prefix of the id's bytes: the same for every id.
    fn write_usize(&mut self, _: usize) {}
}

/// Builds [`IdHasher`]s, for maps and sets keyed by ids.
pub type IdHashing = std::hash::BuildHasherDefault<IdHasher>;

/// An id's text form, kept on the stack.
#[derive(Clone, Copy)]
pub struct IdText([u8; 22]);

impl IdText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

random_id!(
    /// Identifies one counted click; handed to the landing page as `lc_click`.
    ClickId
);
random_id!(
    /// Identifies one browser across clicks, kept from a valid earlier cookie.
    VisitorId
);
