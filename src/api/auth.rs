//! Bearer tokens and roles: admin and merchant tokens from configuration,
//! partner tokens issued once and kept only as SHA-256 hashes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::PartnerId;

/// Who is calling, as proven by the bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Admin,
    Merchant,
    Partner(PartnerId),
}

impl Caller {
    /// Only the admin may go on; anyone else is 403.
    pub fn require_admin(&self) -> Result<(), super::ApiError> {
        match self {
            Caller::Admin => Ok(()),
            _ => Err(super::ApiError::Forbidden),
        }
    }
}

/// The configured role tokens, kept as digests so every comparison is of
/// equal length and constant time.
#[derive(Clone)]
pub struct RoleTokens {
    admin: [u8; 32],
    merchant: [u8; 32],
}

impl RoleTokens {
    pub fn new(admin: &str, merchant: &str) -> Self {
        RoleTokens {
            admin: digest(admin),
            merchant: digest(merchant),
        }
    }

    /// The role of `token` when it is the admin or merchant token.
    pub fn role_of(&self, token: &str) -> Option<Caller> {
        let candidate = digest(token);
        if bool::from(candidate.ct_eq(&self.admin)) {
            Some(Caller::Admin)
        } else if bool::from(candidate.ct_eq(&self.merchant)) {
            Some(Caller::Merchant)
        } else {
            None
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Hex SHA-256 of a token: how partner tokens are stored and looked up.
/// Tokens carry 256 random bits, so a fast hash is enough.
pub fn token_hash(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new partner token: `lcp_` and 256 random bits.
pub fn new_partner_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("lcp_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A random token or secret for embedded runs left unconfigured.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_tokens_are_told_apart_and_strangers_get_nothing() {
        let roles = RoleTokens::new("admin-secret", "merchant-secret");
        assert_eq!(roles.role_of("admin-secret"), Some(Caller::Admin));
        assert_eq!(roles.role_of("merchant-secret"), Some(Caller::Merchant));
        assert_eq!(roles.role_of("admin-secre"), None);
        assert_eq!(roles.role_of(""), None);
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn partner_tokens_are_unique_and_hashes_are_stable() {
        let a = new_partner_token();
        assert_ne!(a, new_partner_token());
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_eq!(token_hash(&a).len(), 64);
    }
}
