//! Configuration: typed settings from `config/default.toml`, a user file and
//! `LASTCLICK_<SECTION>__<KEY>` environment overrides, validated at startup.

use crate::conversions::book::Rules;
use crate::conversions::money::{Currency, Tier};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer};

use crate::edge::landing::{LandingPolicy, LandingUrl};

/// The defaults, compiled in so that the binary runs with no file at all and
/// the documented file is the one source of every default.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Keys whose environment override is a comma separated list.
const LIST_KEYS: [&str; 3] = [
    "cookie.secrets",
    "landing.allowed_hosts",
    "campaign.discounts",
];

/// Configuration that failed to load or validate; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn invalid(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("`{key}`: {why}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    pub redis: Redis,
    pub embedded: Embedded,
    pub cookie: Cookie,
    pub attribution: Attribution,
    pub landing: Landing,
    pub link: Link,
    pub campaign: Campaign,
    pub clicks: Clicks,
    pub cache: Cache,
    pub auth: Auth,
    pub tiers: Vec<Tier>,
    pub commission: Commission,
    pub payout: Payout,
    pub api: Api,
    pub report: Report,
    pub worker: Worker,
    pub webhooks: Webhooks,
    pub log: crate::logs::Log,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Allow http:// endpoint URLs. Default false.
    pub allow_http: bool,
    /// Wait before the first retry of a failed delivery; each next wait
    /// doubles, with jitter. Default 10s.
    #[serde(deserialize_with = "duration")]
    pub retry_first: Duration,
    /// Longest wait between retries. Default 1h.
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
    /// A delivery still failing this long after its event was written is
    /// marked failed, and the endpoint's next event goes. Default 3d.
    #[serde(deserialize_with = "duration")]
    pub give_up_after: Duration,
    /// Longest wait for a receiver's answer, at most 30s. Default 10s.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Events an endpoint may fall behind before its oldest are skipped.
    /// Default 1000000.
    pub max_backlog: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Public listener address. Default 127.0.0.1:8080.
    pub http: SocketAddr,
    /// Admin listener address. Default 127.0.0.1:9090.
    pub admin: SocketAddr,
    /// Largest request head in bytes, at least 8192. Default 16384.
    pub max_header_bytes: usize,
    /// Open connections of the public listener past which it answers only
    /// redirects (other requests get 503); past one and a half times it,
    /// new connections are closed at once. Default 10000.
    pub max_connections: usize,
    /// Open connections of an admin listener (`serve`'s and `worker`'s);
    /// past it new ones are closed at once. Default 256.
    pub max_admin_connections: usize,
    /// Longest an answer on the public listener may wait for the client to
    /// read it; then the connection is closed. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// Redis URL; empty selects the embedded store. Default empty.
    pub url: String,
    /// Whether `url` is a Redis Cluster seed. Default false.
    pub cluster: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedded {
    /// The SQLite database of the embedded store, relative to the working
    /// directory. Default `lastclick.db`.
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cookie {
    /// Cookie name. Default `lc_attr`.
    pub name: String,
    /// Domain attribute; empty for host-only. Default empty.
    pub domain: String,
    /// Whether to send `Secure`. Default true.
    pub secure: bool,
    /// Signing secrets: the first signs, all verify. Default none.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    /// Attribution window. Default 120 days.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Clock skew tolerated between vendor and service. Default 5 minutes.
    #[serde(deserialize_with = "duration")]
    pub clock_skew: Duration,
    /// A signup credited sooner than this after its click has its
    /// commissions held (`fast_signup`). Zero: never.
    #[serde(deserialize_with = "duration")]
    pub min_click_age: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landing {
    /// Landing URL used when no campaign landing applies.
    pub default: String,
    /// Host names a redirect may point at.
    pub allowed_hosts: Vec<String>,
    /// Whether http:// landings are allowed. Default false.
    pub allow_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Public base URL of the service for shareable links.
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Longest trial in days. Default 60.
    pub max_trial_days: u32,
    /// Allowed discounts in whole percent.
    pub discounts: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clicks {
    /// Repeat-click window. Default 30 s.
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Bounded click buffer size. Default 100000.
    pub buffer_capacity: usize,
    /// Flush period. Default 50 ms.
    #[serde(deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// Clicks per pipelined batch. Default 500.
    pub batch_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Partner and campaign cache refresh period. Default 1 s.
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Admin bearer token; empty makes one (embedded mode only).
    pub admin_token: String,
    /// Merchant bearer token; empty makes one (embedded mode only).
    pub merchant_token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commission {
    /// Days a commission is held before it is available. Default 0.
    pub hold_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payout {
    /// Smallest payout per ISO 4217 currency.
    pub minimum: BTreeMap<Currency, Decimal>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Events a worker took and left unacknowledged this long are taken
    /// over by another. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub reclaim_after: Duration,
    /// Events whose customer has no signup yet wait (parked) this long for
    /// it, then go to the dead letter. Default 7d.
    #[serde(deserialize_with = "duration")]
    pub park_for: Duration,
    /// Where `lastclick worker` serves `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Distinct `utm_term`s a partner's clicks count under per UTC day;
    /// past it a click counts under `(other)`. Default 1000.
    pub max_terms_per_day: usize,
    /// Rows of a report page. Default 1000.
    pub max_rows: usize,
    /// Reports built at once by one instance. Default 2.
    pub max_concurrent: usize,
    /// How long a report waits for one of those before 503. Default 10s.
    #[serde(deserialize_with = "duration")]
    pub slot_wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Largest /v1 body in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Requests a second each token may make after its burst (fractions
    /// allowed). Default 100.
    pub rate_limit: f64,
    /// Requests a token may make at once. Default 200.
    pub rate_burst: u32,
    /// Longest a /v1 request body may take to arrive, whole. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub body_timeout: Duration,
    /// Longest a body may stall between two reads: with the whole-body
    /// deadline, a floor on its rate. Default 5s.
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// Longest report range in days. Default 366.
    pub max_report_days: u32,
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Parses "120d", "5m", "30s", "50ms" (and combinations humantime accepts).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration such as 120d, 5m, 30s or 50ms ({e})"))
}

impl Config {
    /// Loads defaults, then `path` if given, then environment overrides, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = Self::defaults();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("LASTCLICK_"))
            .collect();
        let mut environment = config::Environment::with_prefix("LASTCLICK")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(env));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        Self::finish(builder.add_source(environment))
    }

    /// The defaults with `text`, a configuration file's content, over them,
    /// validated: what `serve --config` reads, without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = config::File::from_str(text, config::FileFormat::Toml);
        Self::finish(Self::defaults().add_source(file))
    }

    fn defaults() -> config::ConfigBuilder<config::builder::DefaultState> {
        config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
    }

    fn finish(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Config, ConfigError> {
        let merged = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let config: Config = merged
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Whether the service runs on the embedded store.
    pub fn embedded(&self) -> bool {
        self.redis.url.trim().is_empty()
    }

    /// The landing policy built from `landing.*`.
    pub fn landing_policy(&self) -> LandingPolicy {
        LandingPolicy::new(&self.landing.allowed_hosts, self.landing.allow_http)
    }

    /// The validated default landing URL.
    pub fn default_landing(&self) -> LandingUrl {
        self.landing_policy()
            .parse(&self.landing.default)
            .expect("landing.default is checked by Config::validate")
    }

    /// Checks every rule a key must follow; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(why) = self.log.filter() {
            return Err(invalid("log.level", why));
        }
        if self.listen.write_timeout.is_zero() {
            return Err(invalid("listen.write_timeout", "must be longer than zero"));
        }
        if self.listen.max_connections == 0 {
            return Err(invalid("listen.max_connections", "must be positive"));
        }
        if self.listen.max_admin_connections == 0 {
            return Err(invalid("listen.max_admin_connections", "must be positive"));
        }
        if self.listen.max_header_bytes < 8192 {
            return Err(invalid("listen.max_header_bytes", "must be at least 8192"));
        }
        if self.redis.cluster && self.embedded() {
            return Err(invalid("redis.cluster", "needs `redis.url`"));
        }
        if self.embedded.path.as_os_str().is_empty() {
            return Err(invalid("embedded.path", "must name a file"));
        }
        self.validate_cookie()?;
        self.validate_attribution()?;
        self.validate_landing()?;
        self.validate_campaign()?;
        self.validate_clicks()?;
        self.validate_webhooks()?;
        if self.cache.refresh.is_zero() {
            return Err(invalid("cache.refresh", "must be longer than zero"));
        }
        if !self.embedded() {
            if self.auth.admin_token.is_empty() {
                return Err(invalid("auth.admin_token", "is required with Redis"));
            }
            if self.auth.merchant_token.is_empty() {
                return Err(invalid("auth.merchant_token", "is required with Redis"));
            }
        }
        self.validate_tiers()?;
        for (currency, minimum) in &self.payout.minimum {
            if *minimum <= Decimal::ZERO {
                return Err(invalid(
                    "payout.minimum",
                    format!("{currency} must be positive"),
                ));
            }
        }
        if self.api.body_timeout.is_zero() || self.api.body_idle_timeout.is_zero() {
            return Err(invalid(
                "api.body_timeout",
                "body_timeout and body_idle_timeout must be longer than zero",
            ));
        }
        if !(self.api.rate_limit > 0.0 && self.api.rate_limit.is_finite())
            || self.api.rate_burst == 0
        {
            return Err(invalid(
                "api.rate_limit",
                "rate_limit and rate_burst must be positive",
            ));
        }
        if self.report.max_terms_per_day == 0 {
            return Err(invalid("report.max_terms_per_day", "must be positive"));
        }
        if self.report.max_rows == 0 || self.report.max_concurrent == 0 {
            return Err(invalid(
                "report.max_rows",
                "max_rows and max_concurrent must be positive",
            ));
        }
        if self.api.max_body_bytes == 0 {
            return Err(invalid("api.max_body_bytes", "must be positive"));
        }
        if self.api.max_report_days == 0 {
            return Err(invalid("api.max_report_days", "must be positive"));
        }
        Ok(())
    }

    fn validate_attribution(&self) -> Result<(), ConfigError> {
        if self.attribution.window.is_zero() {
            return Err(invalid("attribution.window", "must be longer than zero"));
        }
        if self.attribution.min_click_age >= self.attribution.window {
            return Err(invalid(
                "attribution.min_click_age",
                "must be shorter than attribution.window",
            ));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let webhooks = &self.webhooks;
        if webhooks.max_backlog == 0 {
            return Err(invalid("webhooks.max_backlog", "must be positive"));
        }
        if webhooks.retry_first.is_zero() {
            return Err(invalid("webhooks.retry_first", "must be longer than zero"));
        }
        if webhooks.retry_max < webhooks.retry_first {
            return Err(invalid(
                "webhooks.retry_max",
                "must be at least webhooks.retry_first",
            ));
        }
        // An attempt may run this long past an endpoint's share of a
        // delivery round, which must end within the delivery lease.
        if webhooks.timeout.is_zero() || webhooks.timeout > Duration::from_secs(30) {
            return Err(invalid(
                "webhooks.timeout",
                "must be longer than zero and at most 30s",
            ));
        }
        Ok(())
    }

    fn validate_cookie(&self) -> Result<(), ConfigError> {
        let name = &self.cookie.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "cookie.name",
                "must be letters, digits, `_` or `-`",
            ));
        }
        let domain = &self.cookie.domain;
        if !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(invalid("cookie.domain", "must be a host name"));
        }
        if self.cookie.secrets.is_empty() && !self.embedded() {
            return Err(invalid(
                "cookie.secrets",
                "at least one secret is required with Redis",
            ));
        }
        if self.cookie.secrets.iter().any(|s| s.len() < 16) {
            return Err(invalid(
                "cookie.secrets",
                "every secret needs at least 16 characters",
            ));
        }
        Ok(())
    }

    fn validate_landing(&self) -> Result<(), ConfigError> {
        if self.landing.allowed_hosts.is_empty() {
            return Err(invalid("landing.allowed_hosts", "needs at least one host"));
        }
        for host in &self.landing.allowed_hosts {
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            {
                return Err(invalid(
                    "landing.allowed_hosts",
                    format!("`{host}` is not a lower-case host name"),
                ));
            }
        }
        self.landing_policy()
            .parse(&self.landing.default)
            .map_err(|e| invalid("landing.default", e))?;
        url::Url::parse(&self.link.base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| invalid("link.base_url", "must be an http(s) URL"))?;
        Ok(())
    }

    fn validate_campaign(&self) -> Result<(), ConfigError> {
        if self.campaign.max_trial_days == 0 {
            return Err(invalid("campaign.max_trial_days", "must be at least 1"));
        }
        if let Some(d) = self
            .campaign
            .discounts
            .iter()
            .find(|d| !(1..=100).contains(*d))
        {
            return Err(invalid(
                "campaign.discounts",
                format!("{d} is not a percentage from 1 to 100"),
            ));
        }
        Ok(())
    }

    fn validate_clicks(&self) -> Result<(), ConfigError> {
        if self.clicks.buffer_capacity == 0 {
            return Err(invalid("clicks.buffer_capacity", "must be positive"));
        }
        if self.clicks.batch_size == 0 {
            return Err(invalid("clicks.batch_size", "must be positive"));
        }
        if self.clicks.flush_interval.is_zero() {
            return Err(invalid("clicks.flush_interval", "must be longer than zero"));
        }
        Ok(())
    }

    fn validate_tiers(&self) -> Result<(), ConfigError> {
        let first = self
            .tiers
            .first()
            .ok_or_else(|| invalid("tiers", "needs at least one tier"))?;
        if !first.min_arr.is_zero() {
            return Err(invalid("tiers", "the first tier must start at min_arr 0"));
        }
        for pair in self.tiers.windows(2) {
            if pair[1].min_arr <= pair[0].min_arr {
                return Err(invalid("tiers", "min_arr must rise from tier to tier"));
            }
        }
        if let Some(t) = self
            .tiers
            .iter()
            .find(|t| t.rate <= Decimal::ZERO || t.rate >= Decimal::ONE)
        {
            return Err(invalid(
                "tiers",
                format!("rate of `{}` must be between 0 and 1", t.name),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The program's rules, for the worker and the API alike.
    pub fn rules(&self) -> Rules {
        Rules {
            tiers: self.tiers.clone(),
            hold_days: self.commission.hold_days,
            payout_minimum: self.payout.minimum.clone(),
            min_click_age_ms: i64::try_from(self.attribution.min_click_age.as_millis())
                .unwrap_or(i64::MAX),
        }
    }
}
