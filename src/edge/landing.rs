//! Landing URLs: the allowlist policy and the pre-split form a redirect
//! appends its parameters to.

use std::fmt;

/// Query parameters the redirect writes itself; a landing URL may not carry
/// them already, or the vendor would read two values.
const RESERVED_PARAMS: [&str; 8] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "lc_click",
    "trial_days",
    "discount",
];

const MAX_LANDING_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LandingError {
    #[error("is not an absolute URL")]
    NotAUrl,
    #[error("must be https{}", if *.0 { " or http" } else { "" })]
    Scheme(bool),
    #[error("host `{0}` is not on landing.allowed_hosts")]
    HostNotAllowed(String),
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must not set `{0}`: the redirect sets it")]
    ReservedParam(String),
    #[error("is longer than {MAX_LANDING_LEN} characters")]
    TooLong,
}

/// Which landing URLs a redirect may point at.
#[derive(Debug, Clone)]
pub struct LandingPolicy {
    hosts: Vec<String>,
    allow_http: bool,
}

impl LandingPolicy {
    pub fn new(hosts: &[String], allow_http: bool) -> Self {
        LandingPolicy {
            hosts: hosts.to_vec(),
            allow_http,
        }
    }

    /// Accepts `raw` only when it is an http(s) URL on an allowed host.
    pub fn parse(&self, raw: &str) -> Result<LandingUrl, LandingError> {
        if raw.len() > MAX_LANDING_LEN {
            return Err(LandingError::TooLong);
        }
        let url = url::Url::parse(raw).map_err(|_| LandingError::NotAUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(LandingError::Scheme(self.allow_http)),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(LandingError::Credentials);
        }
        let host = url.host_str().ok_or(LandingError::NotAUrl)?;
        if !self.hosts.iter().any(|allowed| allowed == host) {
            return Err(LandingError::HostNotAllowed(host.to_owned()));
        }
        if let Some((key, _)) = url
            .query_pairs()
            .find(|(key, _)| RESERVED_PARAMS.contains(&key.as_ref()))
        {
            return Err(LandingError::ReservedParam(key.into_owned()));
        }
        Ok(LandingUrl::split(url))
    }
}

/// A validated landing URL, split where the redirect's parameters go:
/// `prefix` ends in `?` or `&`, `fragment` is empty or starts with `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandingUrl {
    full: String,
    prefix: String,
    fragment: String,
}

impl LandingUrl {
    fn split(mut url: url::Url) -> Self {
        let full = url.to_string();
        let fragment = url.fragment().map(|f| format!("#{f}")).unwrap_or_default();
        url.set_fragment(None);
        let mut prefix = url.to_string();
        match url.query() {
            Some("") => {}
            Some(_) => prefix.push('&'),
            None => prefix.push('?'),
        }
        LandingUrl {
            full,
            prefix,
            fragment,
        }
    }

    /// The URL as given (normalised).
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Everything before the appended parameters, ending in `?` or `&`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The fragment with its `#`, or empty.
    pub fn fragment(&self) -> &str {
        &self.fragment
    }
}

impl fmt::Display for LandingUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_http: bool) -> LandingPolicy {
        LandingPolicy::new(
            &["www.example.com".into(), "example.com".into()],
            allow_http,
        )
    }

    #[test]
    fn an_allowed_https_url_is_split_around_its_query_and_fragment() {
        let url = policy(false)
            .parse("https://www.example.com/signup?plan=pro#top")
            .unwrap();
        assert_eq!(url.prefix(), "https://www.example.com/signup?plan=pro&");
        assert_eq!(url.fragment(), "#top");
        let bare = policy(false).parse("https://example.com").unwrap();
        assert_eq!(bare.prefix(), "https://example.com/?");
        assert_eq!(bare.fragment(), "");
    }

    #[test]
    fn hosts_off_the_allowlist_are_refused_however_they_are_dressed() {
        let p = policy(false);
        for raw in [
            "https://evil.com/",
            "https://www.example.com.evil.com/",
            "https://evil.com\\@www.example.com/",
            "https://www.example.com@evil.com/",
            "//evil.com/",
            "javascript:alert(1)",
            "https://EVIL.com/",
            "https://127.0.0.1/",
            "data:text/html,hi",
        ] {
            assert!(p.parse(raw).is_err(), "{raw} was accepted");
        }
    }

    #[test]
    fn http_needs_allow_http() {
        assert_eq!(
            policy(false).parse("http://example.com/"),
            Err(LandingError::Scheme(false))
        );
        assert!(policy(true).parse("http://example.com/").is_ok());
    }

    #[test]
    fn reserved_parameters_cannot_be_smuggled_in_a_landing_url() {
        assert_eq!(
            policy(false).parse("https://example.com/?discount=90"),
            Err(LandingError::ReservedParam("discount".into()))
        );
    }
}
