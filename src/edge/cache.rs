//! The in-process route cache: partners and campaigns as the redirect needs
//! them, pre-rendered, refreshed from the store whenever its version moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::edge::landing::{LandingPolicy, LandingUrl};
use crate::ids::DEFAULT_LINK;
use crate::store::prelude::*;
use crate::store::{Campaign, CatalogSnapshot, StoreError};

/// Never a real store version, so the first refresh always loads.
const NEVER_LOADED: u64 = u64::MAX;

/// One link target, with every fixed part of its Location built once.
#[derive(Debug)]
pub struct CampaignRoute {
    /// `utm_campaign`: the campaign's name or `default_link`.
    pub name: Arc<str>,
    /// Landing URL up to the appended parameters (ends in `?` or `&`).
    pub landing_prefix: Box<str>,
    /// `#fragment` of the landing URL, or empty.
    pub fragment: Box<str>,
    /// `&trial_days=N&discount=M`, whichever the campaign sets.
    pub deal_params: Box<str>,
    /// The term registered with the campaign, used when the URL has none.
    pub term: Option<Box<str>>,
    pub trial_days: u16,
    pub discount: u8,
}

#[derive(Debug)]
pub struct PartnerRoute {
    pub id: Arc<str>,
    pub enabled: bool,
    pub default_link: Arc<CampaignRoute>,
    campaigns: HashMap<Box<str>, Arc<CampaignRoute>, RandomState>,
}

impl PartnerRoute {
    /// The campaign with `slug`; an unknown slug is the default link.
    pub fn campaign(&self, slug: Option<&str>) -> &CampaignRoute {
        slug.and_then(|s| self.campaigns.get(s))
            .unwrap_or(&self.default_link)
    }
}

/// Partners by id, each with its campaigns. Readers never wait for a
/// refresh: a refresh swaps whole partner entries.
///
/// Both maps hash with foldhash, seeded at random per process: cheaper
/// than std's SipHash on the redirect's path. Its keys are the partners
/// and campaigns admins create; a public URL's slug is only looked up.
pub struct RouteCache {
    partners: DashMap<Box<str>, Arc<PartnerRoute>, RandomState>,
    version: AtomicU64,
    policy: LandingPolicy,
    default_landing: LandingUrl,
}

impl RouteCache {
    pub fn new(policy: LandingPolicy, default_landing: LandingUrl) -> Self {
        RouteCache {
            partners: DashMap::with_hasher(RandomState::default()),
            version: AtomicU64::new(NEVER_LOADED),
            policy,
            default_landing,
        }
    }

    pub fn get(&self, partner: &str) -> Option<Arc<PartnerRoute>> {
        self.partners.get(partner).map(|entry| Arc::clone(&entry))
    }

    /// Reloads from the store when its catalog version has changed.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let version = store.catalog_version().await?;
        if version == self.version.load(Ordering::Acquire) {
            return Ok(());
        }
        let snapshot = store.load_catalog().await?;
        self.apply(snapshot);
        Ok(())
    }

    /// Replaces the cache's contents with `snapshot`.
    pub fn apply(&self, snapshot: CatalogSnapshot) {
        let mut campaigns: HashMap<&str, Vec<&Campaign>> = HashMap::new();
        for campaign in &snapshot.campaigns {
            campaigns
                .entry(campaign.partner.as_str())
                .or_default()
                .push(campaign);
        }
        for partner in &snapshot.partners {
            let routes = campaigns
                .get(partner.id.as_str())
                .map(|list| {
                    list.iter()
                        .map(|c| (c.slug.as_str().into(), Arc::new(self.campaign_route(c))))
                        .collect()
                })
                .unwrap_or_default();
            let route = PartnerRoute {
                id: partner.id.as_str().into(),
                enabled: !partner.disabled,
                default_link: Arc::new(self.default_route()),
                campaigns: routes,
            };
            self.partners
                .insert(partner.id.as_str().into(), Arc::new(route));
        }
        self.partners
            .retain(|id, _| snapshot.partners.iter().any(|p| p.id.as_str() == &**id));
        self.version.store(snapshot.version, Ordering::Release);
    }

    fn default_route(&self) -> CampaignRoute {
        CampaignRoute {
            name: DEFAULT_LINK.into(),
            landing_prefix: self.default_landing.prefix().into(),
            fragment: self.default_landing.fragment().into(),
            deal_params: "".into(),
            term: None,
            trial_days: 0,
            discount: 0,
        }
    }

    fn campaign_route(&self, campaign: &Campaign) -> CampaignRoute {
        // A landing that the current allowlist no longer admits falls back to
        // the default: the redirect never leaves the allowlist.
        let landing = campaign
            .landing
            .as_deref()
            .and_then(|raw| self.policy.parse(raw).ok())
            .unwrap_or_else(|| self.default_landing.clone());
        let trial_days = campaign.trial_days.unwrap_or(0);
        let discount = campaign.discount.unwrap_or(0);
        let mut deal_params = String::new();
        if trial_days > 0 {
            deal_params.push_str(&format!("&trial_days={trial_days}"));
        }
        if discount > 0 {
            deal_params.push_str(&format!("&discount={discount}"));
        }
        CampaignRoute {
            name: campaign.name.as_str().into(),
            landing_prefix: landing.prefix().into(),
            fragment: landing.fragment().into(),
            deal_params: deal_params.into(),
            term: campaign.utm_term.as_deref().map(Into::into),
            trial_days,
            discount,
        }
    }
}

/// Refreshes `cache` every `period` until `shutdown` fires; store errors are
/// counted and the cache keeps serving what it has.
pub async fn run_refresher(
    cache: Arc<RouteCache>,
    store: Arc<dyn Store>,
    period: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = cache.refresh(store.as_ref()).await {
            metrics.count_store_error("load_catalog");
            tracing::warn!(error = %e, "route cache refresh failed; serving the cached routes");
        }
    }
}
