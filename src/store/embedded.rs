//! The embedded store: everything in one process's memory, for a single
//! instance on a bare machine and for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};

use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, CounterCell, Partner, Store, StoreError,
};
use crate::cookie::{ClickId, VisitorId};
use crate::ids::{CampaignSlug, PartnerId};

/// In-process store. One std `Mutex`: every critical section is a few map
/// operations and none spans an `.await`.
pub struct EmbeddedStore {
    inner: Mutex<Inner>,
    window: Duration,
}

#[derive(Default)]
struct Inner {
    version: u64,
    partners: BTreeMap<PartnerId, Partner>,
    tokens: HashMap<String, PartnerId>,
    campaigns: BTreeMap<(PartnerId, CampaignSlug), Campaign>,
    clicks: HashMap<ClickId, Click>,
    last_clicks: HashMap<VisitorId, ClickId>,
    counters: BTreeMap<(String, CounterCell), Counter>,
}

/// Exact distinct visitors: memory grows with visitors per cell, which one
/// machine's worth of traffic over the window affords.
#[derive(Default)]
struct Counter {
    clicks: u64,
    visitors: HashSet<VisitorId>,
}

impl EmbeddedStore {
    /// Click records and counters are kept for `window` (attribution.window).
    pub fn new(window: Duration) -> Self {
        EmbeddedStore {
            inner: Mutex::new(Inner::default()),
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still
        // consistent entry by entry, so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops click records and counters older than the window.
    pub fn expire(&self, now_unix: i64) {
        let horizon = now_unix - self.window.as_secs() as i64;
        let oldest_day = chrono::DateTime::from_timestamp(horizon, 0)
            .unwrap_or_default()
            .date_naive();
        let mut inner = self.lock();
        inner.clicks.retain(|_, c| c.at >= horizon);
        let Inner {
            clicks,
            last_clicks,
            counters,
            ..
        } = &mut *inner;
        last_clicks.retain(|_, id| clicks.contains_key(id));
        counters.retain(|(_, cell), _| cell.day >= oldest_day);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn catalog_version(&self) -> Result<u64, StoreError> {
        Ok(self.lock().version)
    }

    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        let inner = self.lock();
        Ok(CatalogSnapshot {
            version: inner.version,
            partners: inner.partners.values().cloned().collect(),
            campaigns: inner.campaigns.values().cloned().collect(),
        })
    }

    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.partners.contains_key(&partner.id) {
            return Err(StoreError::Conflict);
        }
        inner
            .tokens
            .insert(partner.token_hash.clone(), partner.id.clone());
        inner.partners.insert(partner.id.clone(), partner.clone());
        inner.version += 1;
        Ok(())
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let slot = inner
            .partners
            .get_mut(&partner.id)
            .ok_or(StoreError::NotFound)?;
        *slot = partner.clone();
        inner.version += 1;
        Ok(())
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError> {
        Ok(self.lock().partners.get(id).cloned())
    }

    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError> {
        Ok(self.lock().tokens.get(hash).cloned())
    }

    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let key = (campaign.partner.clone(), campaign.slug.clone());
        if inner.campaigns.contains_key(&key) {
            return Err(StoreError::Conflict);
        }
        inner.campaigns.insert(key, campaign.clone());
        inner.version += 1;
        Ok(())
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        Ok(self
            .lock()
            .campaigns
            .values()
            .filter(|c| &c.partner == partner)
            .cloned()
            .collect())
    }

    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for click in clicks {
            // A click written twice (a retried batch) counts once.
            if inner.clicks.insert(click.click_id, click.clone()).is_some() {
                continue;
            }
            // Last click wins by click time, whatever order clicks arrive in.
            let newer = match inner.last_clicks.get(&click.visitor_id) {
                Some(latest) => inner.clicks.get(latest).is_none_or(|l| l.at <= click.at),
                None => true,
            };
            if newer {
                inner.last_clicks.insert(click.visitor_id, click.click_id);
            }
            let cell = CounterCell {
                day: click.day(),
                campaign: click.campaign.to_string(),
                term: click.term.as_deref().unwrap_or("").to_owned(),
            };
            let counter = inner
                .counters
                .entry((click.partner.to_string(), cell))
                .or_default();
            counter.clicks += 1;
            counter.visitors.insert(click.visitor_id);
        }
        Ok(())
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        Ok(self.lock().clicks.get(id).cloned())
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .last_clicks
            .get(visitor)
            .and_then(|id| inner.clicks.get(id))
            .cloned())
    }

    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .counters
            .iter()
            .filter(|((p, cell), _)| p == partner.as_str() && cell.day >= from && cell.day <= to)
            .map(|((_, cell), counter)| ClickCount {
                cell: cell.clone(),
                clicks: counter.clicks,
            })
            .collect())
    }

    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError> {
        let inner = self.lock();
        let mut union: HashSet<VisitorId> = HashSet::new();
        for cell in cells {
            if let Some(counter) = inner.counters.get(&(partner.to_string(), cell.clone())) {
                union.extend(counter.visitors.iter().copied());
            }
        }
        Ok(union.len() as u64)
    }
}

/// Runs [`EmbeddedStore::expire`] once a minute until the store is dropped.
pub fn spawn_expiry(store: std::sync::Arc<EmbeddedStore>) {
    let weak = std::sync::Arc::downgrade(&store);
    drop(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(store) => store.expire(Utc::now().timestamp()),
                None => return,
            }
        }
    });
}
