//! Webhook endpoints: where the program's events are sent, which ones,
//! and the secret each delivery is signed with.
//!
//! Receivers verify `Lastclick-Signature: t=<unix>,v1=<hex HMAC-SHA256
//! (secret, "<t>.<body>")>`, the scheme payment providers use, so a
//! receiver's existing code checks it.
//!
//! - [`outbox`]: the events a book step reports, committed with it
//! - [`delivery`]: the task that sends them, in order per endpoint, with
//!   retries

pub mod delivery;
pub mod outbox;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header a delivery is signed in.
pub const SIGNATURE_HEADER: &str = "Lastclick-Signature";

/// The `Lastclick-Signature` value of `body` sent at `unix` seconds:
/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<unix>.<body>")>`.
pub fn signature(secret: &str, unix: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut header = format!("t={unix},v1=");
    for byte in mac.finalize().into_bytes() {
        header.push_str(&format!("{byte:02x}"));
    }
    header
}

/// Whether `header` signs `body` with `secret`, at most `tolerance_secs`
/// from `now_unix`: what a receiver checks (the README shows it in a few
/// lines of Python). Compared in constant time.
pub fn verify(secret: &str, header: &str, body: &[u8], now_unix: i64, tolerance_secs: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now_unix - t).abs() > tolerance_secs {
        return false;
    }
    let Some(given) = decode_hex(v1) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

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
    fn a_signature_verifies_with_its_secret_only_and_in_time() {
        let body = br#"{"id":"whe_1","type":"payout.paid"}"#;
        let header = signature("whsec_a", 1_800_000_000, body);
        assert!(
            header.starts_with("t=1800000000,v1=") && header.len() == 16 + 64,
            "{header}"
        );
        assert!(verify("whsec_a", &header, body, 1_800_000_100, 300));
        assert!(!verify("whsec_b", &header, body, 1_800_000_100, 300));
        assert!(!verify("whsec_a", &header, b"{}", 1_800_000_100, 300));
        assert!(!verify("whsec_a", &header, body, 1_800_000_400, 300));
        assert!(!verify("whsec_a", "t=1,v1=zz", body, 1, 300));
        // A known value, so receivers in any language can check theirs.
        assert_eq!(signature("secret", 0, b"body"), format!("t=0,v1={KNOWN}"));
    }

    /// HMAC-SHA256("secret", "0.body"), computed apart (Python's `hmac`).
    const KNOWN: &str = "5a5fb86992f15ef304996b793c8b328ede0dd35d46ee020e7bdc1ebc8d9ac6a0";

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
