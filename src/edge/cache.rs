//! The in-process route cache: partners and campaigns as the redirect needs
//! them, pre-rendered, brought up to date with what changed in the store
//! whenever its catalog version moves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::edge::landing::{LandingPolicy, LandingUrl};
use crate::ids::DEFAULT_LINK;
use crate::store::prelude::*;
use crate::store::{Campaign, CatalogSnapshot, Partner, StoreError};

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
    campaigns: CampaignRoutes,
}

/// A partner's campaigns by slug.
type CampaignRoutes = HashMap<Box<str>, Arc<CampaignRoute>, RandomState>;

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

    /// Brings the cache to the store's catalog version: nothing when it has
    /// not moved, what changed since when it rose (O(the change), whatever
    /// the catalog's size), everything on the first call or when it fell
    /// (a store restored from an older backup, a wiped Redis).
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let version = store.catalog_version().await?;
        let cached = self.version.load(Ordering::Acquire);
        if version == cached {
            return Ok(());
        }
        if cached == NEVER_LOADED || version < cached {
            self.apply(store.load_catalog().await?);
        } else {
            self.apply_changes(store.catalog_changes(cached).await?);
        }
        Ok(())
    }

    /// The cache's catalog version (`u64::MAX` before the first load).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Replaces the cache's contents with `snapshot`, the whole catalog.
    pub fn apply(&self, snapshot: CatalogSnapshot) {
        let mut campaigns = by_partner(&snapshot.campaigns);
        for partner in &snapshot.partners {
            let list = campaigns.remove(partner.id.as_str()).unwrap_or_default();
            let routes = list.into_iter().map(|c| self.campaign_entry(c)).collect();
            self.put(partner, routes);
        }
        let listed: HashSet<&str> = snapshot.partners.iter().map(|p| p.id.as_str()).collect();
        self.partners.retain(|id, _| listed.contains(&**id));
        self.version.store(snapshot.version, Ordering::Release);
    }

    /// Applies `changes`, the partners and campaigns changed since the
    /// cache's version: only their entries are rebuilt, every other
    /// partner's entry stays as it is.
    pub fn apply_changes(&self, changes: CatalogSnapshot) {
        for partner in &changes.partners {
            let routes = self
                .get(partner.id.as_str())
                .map(|kept| kept.campaigns.clone())
                .unwrap_or_default();
            self.put(partner, routes);
        }
        let mut complete = true;
        for (partner, list) in by_partner(&changes.campaigns) {
            let Some(kept) = self.get(partner) else {
                // Cannot happen with a store that keeps its own rules (a
                // campaign's partner exists first); if it does, load all.
                tracing::warn!(partner, "catalog change for an unknown partner; reloading");
                complete = false;
                continue;
            };
            let mut routes = kept.campaigns.clone();
            routes.extend(list.into_iter().map(|c| self.campaign_entry(c)));
            let route = PartnerRoute {
                id: Arc::clone(&kept.id),
                enabled: kept.enabled,
                default_link: Arc::clone(&kept.default_link),
                campaigns: routes,
            };
            self.partners.insert(partner.into(), Arc::new(route));
        }
        let version = if complete {
            changes.version
        } else {
            NEVER_LOADED
        };
        self.version.store(version, Ordering::Release);
    }

    /// Sets `partner`'s entry, with `campaigns` as its routes.
    fn put(&self, partner: &Partner, campaigns: CampaignRoutes) {
        let route = PartnerRoute {
            id: partner.id.as_str().into(),
            enabled: !partner.disabled,
            default_link: Arc::new(self.default_route()),
            campaigns,
        };
        self.partners
            .insert(partner.id.as_str().into(), Arc::new(route));
    }

    fn campaign_entry(&self, campaign: &Campaign) -> (Box<str>, Arc<CampaignRoute>) {
        (
            campaign.slug.as_str().into(),
            Arc::new(self.campaign_route(campaign)),
        )
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

/// `campaigns` grouped by their partner's id.
fn by_partner(campaigns: &[Campaign]) -> HashMap<&str, Vec<&Campaign>> {
    let mut grouped: HashMap<&str, Vec<&Campaign>> = HashMap::new();
    for campaign in campaigns {
        grouped
            .entry(campaign.partner.as_str())
            .or_default()
            .push(campaign);
    }
    grouped
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
