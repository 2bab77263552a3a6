//! Webhook endpoints: where the program's events are sent, which ones,
//! and the secret each delivery is signed with.
//!
//! Receivers verify `Lastclick-Signature: t=<unix>,v1=<hex HMAC-SHA256
//! (secret, "<t>.<body>")>`, the scheme payment providers use, so a
//! receiver's existing code checks it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An event a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WebhookEventType {
    #[serde(rename = "customer.attributed")]
    CustomerAttributed,
    #[serde(rename = "commission.created")]
    CommissionCreated,
    #[serde(rename = "commission.clawed_back")]
    CommissionClawedBack,
    #[serde(rename = "commission.held")]
    CommissionHeld,
    #[serde(rename = "payout.requested")]
    PayoutRequested,
    #[serde(rename = "payout.paid")]
    PayoutPaid,
    #[serde(rename = "payout.failed")]
    PayoutFailed,
    #[serde(rename = "partner.tier_changed")]
    PartnerTierChanged,
}

impl WebhookEventType {
    pub const ALL: [WebhookEventType; 8] = [
        WebhookEventType::CustomerAttributed,
        WebhookEventType::CommissionCreated,
        WebhookEventType::CommissionClawedBack,
        WebhookEventType::CommissionHeld,
        WebhookEventType::PayoutRequested,
        WebhookEventType::PayoutPaid,
        WebhookEventType::PayoutFailed,
        WebhookEventType::PartnerTierChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::CustomerAttributed => "customer.attributed",
            WebhookEventType::CommissionCreated => "commission.created",
            WebhookEventType::CommissionClawedBack => "commission.clawed_back",
            WebhookEventType::CommissionHeld => "commission.held",
            WebhookEventType::PayoutRequested => "payout.requested",
            WebhookEventType::PayoutPaid => "payout.paid",
            WebhookEventType::PayoutFailed => "payout.failed",
            WebhookEventType::PartnerTierChanged => "partner.tier_changed",
        }
    }

    pub fn parse(text: &str) -> Option<WebhookEventType> {
        WebhookEventType::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// `wh_` and 24 random hex digits.
pub fn new_endpoint_id() -> String {
    let random: [u8; 12] = rand::random();
    let mut id = String::from("wh_");
    for byte in random {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// `whsec_` and 64 random hex digits (256 bits).
pub fn new_secret() -> String {
    let random: [u8; 32] = rand::random();
    let mut secret = String::from("whsec_");
    for byte in random {
        secret.push_str(&format!("{byte:02x}"));
    }
    secret
}

/// A registered endpoint, as stored. The secret signs every delivery, so
/// the store keeps it as it is; the API shows it once, when created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    /// Sorted, without repeats.
    pub events: Vec<WebhookEventType>,
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// Longest endpoint URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Endpoints a program may register: each is sent every event it names.
pub const MAX_ENDPOINTS: usize = 20;

/// Why an endpoint's URL is refused.
pub fn check_url(text: &str, allow_http: bool) -> Result<url::Url, String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("`url` is longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("`url` is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("`url` must be https (http only with webhooks.allow_http)".into()),
        other => return Err(format!("`url` must be https, not {other}")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("`url` has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`url` may not carry credentials".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host_and_no_credentials_are_taken() {
        assert!(check_url("https://hooks.example.com/lc", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", true).is_ok());
        for bad in [
            "http://hooks.example.com/",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://a.example/{}", "x".repeat(2048)), false).is_err());
    }

    #[test]
    fn event_types_read_back_by_name() {
        for kind in WebhookEventType::ALL {
            assert_eq!(WebhookEventType::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(WebhookEventType::parse("commission.deleted"), None);
    }
}
