//! The `Store` trait and the records it keeps; `embedded` implements it in
//! process.

pub mod embedded;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::cookie::{ClickId, VisitorId};
use crate::ids::{CampaignName, CampaignSlug, PartnerId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A partner as stored. The token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    pub id: PartnerId,
    pub name: String,
    pub paypal_email: Option<String>,
    pub disabled: bool,
    /// Hex SHA-256 of the partner's bearer token.
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A campaign registered by the Campaign Builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub partner: PartnerId,
    pub slug: CampaignSlug,
    pub name: CampaignName,
    pub trial_days: Option<u16>,
    pub discount: Option<u8>,
    /// Landing URL; `None` uses `landing.default`.
    pub landing: Option<String>,
    pub utm_term: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Everything the redirect cache is built from.
#[derive(Debug, Clone, Default)]
pub struct CatalogSnapshot {
    pub version: u64,
    pub partners: Vec<Partner>,
    pub campaigns: Vec<Campaign>,
}

/// One counted click, as the redirect queues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub click_id: ClickId,
    pub visitor_id: VisitorId,
    pub partner: Arc<str>,
    /// `utm_campaign`: the campaign's name or `default_link`.
    pub campaign: Arc<str>,
    pub term: Option<Box<str>>,
    /// Unix seconds.
    pub at: i64,
}

impl Click {
    /// The UTC day the click is reported under.
    pub fn day(&self) -> NaiveDate {
        DateTime::from_timestamp(self.at, 0)
            .unwrap_or_default()
            .date_naive()
    }
}

/// One cell of the click report: a partner's clicks on one UTC day for one
/// campaign and term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterCell {
    pub day: NaiveDate,
    pub campaign: String,
    /// Empty when the click carried no term.
    pub term: String,
}

/// The click count of one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickCount {
    pub cell: CounterCell,
    pub clicks: u64,
}

/// Where partners, campaigns, clicks and report counters live.
///
/// Behaviour is the same for every implementation and is tested once for all
/// (`tests/store.rs`). Nothing on the redirect path calls it: redirects read
/// the in-process cache and queue their clicks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Rises on every partner or campaign change, so caches reload only then.
    async fn catalog_version(&self) -> Result<u64, StoreError>;
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError>;

    /// Fails with `Conflict` when the id is taken.
    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError>;
    /// Fails with `NotFound` when the partner does not exist.
    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError>;
    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError>;
    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError>;

    /// Fails with `Conflict` when the partner already has the slug.
    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError>;
    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError>;

    /// Stores click records, each visitor's last click (the latest by click
    /// time, whatever order clicks arrive in) and report counters. Sending
    /// the same batch again, as the flusher does when an outcome is unknown,
    /// counts nothing twice.
    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError>;
    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError>;
    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError>;

    /// Every non-empty cell of `partner` from `from` to `to` inclusive.
    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError>;
    /// Distinct visitors over the union of `cells`.
    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError>;
}
