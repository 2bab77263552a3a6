//! Domain identifiers parsed at the edge: partner ids, campaign slugs and
//! names, currency codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `utm_campaign` of a partner's plain link; no campaign may take the name.
pub const DEFAULT_LINK: &str = "default_link";

/// `[A-Za-z0-9_-]{1,64}`: partner ids and campaign slugs, the path segments
/// of an affiliate link.
pub fn is_path_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `[A-Za-z0-9_.-]{1,64}` and not `default_link`: campaign names, which
/// become `utm_campaign`.
pub fn is_campaign_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text != DEFAULT_LINK
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Three upper-case ASCII letters, the shape of an ISO 4217 code.
pub fn is_currency_code(text: &str) -> bool {
    text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase())
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
checked_string!(
    /// A campaign name, reported as `utm_campaign`.
    CampaignName,
    is_campaign_name,
    "a campaign name ([A-Za-z0-9_.-], 1 to 64 characters, not default_link)"
);

#[cfg(test)]
mod tests {
    use super::*;

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
    fn campaign_names_allow_dots_but_never_default_link() {
        assert!(is_campaign_name("black.friday-2026"));
        assert!(!is_campaign_name("default_link"));
        assert!(!is_campaign_name("has space"));
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert!(is_currency_code("USD"));
        assert!(!is_currency_code("usd"));
        assert!(!is_currency_code("USDT"));
    }
}
