//! The route cache against real stores holding 20,000 partners and 100,000
//! campaigns: a catalog change rebuilds only the entries it touches.

mod common;

use std::sync::Arc;

use chrono::Utc;
use common::redis_server::RedisServer;
use lastclick::edge::cache::{PartnerRoute, RouteCache};
use lastclick::edge::landing::LandingPolicy;
use lastclick::ids::{CampaignName, CampaignSlug, PartnerId};
use lastclick::store::prelude::*;
use lastclick::store::redis::RedisStore;
use lastclick::store::sqlite::SqliteStore;
use lastclick::store::{Campaign, Partner};

const PARTNERS: usize = 20_000;
const CAMPAIGNS_EACH: usize = 5;
const WINDOW: std::time::Duration = std::time::Duration::from_secs(120 * 86_400);

fn partner(i: usize) -> Partner {
    Partner {
        id: PartnerId::parse(&format!("p{i}")).unwrap(),
        name: format!("Partner {i}"),
        paypal_email: None,
        disabled: false,
        token_hash: format!("hash-{i}"),
        created_at: Utc::now(),
    }
}

fn campaign(partner: usize, slug: &str) -> Campaign {
    Campaign {
        partner: PartnerId::parse(&format!("p{partner}")).unwrap(),
        slug: CampaignSlug::parse(slug).unwrap(),
        name: CampaignName::parse(&format!("{slug}-of-{partner}")).unwrap(),
        trial_days: Some(14),
        discount: None,
        landing: None,
        utm_term: None,
        created_at: Utc::now(),
    }
}

/// Every partner with its campaigns, as (partner, [campaign]).
fn catalog() -> impl Iterator<Item = (Partner, Vec<Campaign>)> {
    (0..PARTNERS).map(|i| {
        let campaigns = (0..CAMPAIGNS_EACH)
            .map(|c| campaign(i, &format!("c{c}")))
            .collect();
        (partner(i), campaigns)
    })
}

fn cache() -> RouteCache {
    let policy = LandingPolicy::new(&["www.example.com".to_owned()], false);
    let landing = policy.parse("https://www.example.com/signup").unwrap();
    RouteCache::new(policy, landing)
}

fn routes(cache: &RouteCache) -> Vec<Arc<PartnerRoute>> {
    (0..PARTNERS)
        .map(|i| {
            cache
                .get(&format!("p{i}"))
                .expect("every partner is cached")
        })
        .collect()
}

/// Loads the whole catalog once, changes one partner and adds one campaign
/// to another, refreshes: the two entries are rebuilt with the change and
/// every other partner's entry is the very one it was.
async fn a_change_rebuilds_only_the_entries_it_touches(store: &dyn Store) {
    let cache = cache();
    cache.refresh(store).await.unwrap();
    let before = routes(&cache);
    assert_eq!(
        before[17].campaign(Some("c4")).name.as_ref(),
        "c4-of-17",
        "the catalog is loaded"
    );

    let mut disabled = partner(9);
    disabled.disabled = true;
    store.update_partner(&disabled).await.unwrap();
    store.insert_campaign(&campaign(3, "fresh")).await.unwrap();
    let changes = store.catalog_changes(cache.version()).await.unwrap();
    assert_eq!((changes.partners.len(), changes.campaigns.len()), (1, 1));
    cache.refresh(store).await.unwrap();
    assert_eq!(cache.version(), store.catalog_version().await.unwrap());

    let after = routes(&cache);
    for (i, (old, new)) in before.iter().zip(&after).enumerate() {
        if i == 3 || i == 9 {
            assert!(!Arc::ptr_eq(old, new), "p{i} changed");
        } else {
            assert!(Arc::ptr_eq(old, new), "p{i} did not change: kept as is");
        }
    }
    assert!(!after[9].enabled);
    assert_eq!(after[9].campaign(Some("c2")).name.as_ref(), "c2-of-9");
    assert_eq!(after[3].campaign(Some("fresh")).name.as_ref(), "fresh-of-3");
    assert_eq!(after[3].campaign(Some("c0")).name.as_ref(), "c0-of-3");
    assert_eq!(
        cache
            .get("p3")
            .unwrap()
            .campaign(Some("nope"))
            .name
            .as_ref(),
        "default_link"
    );
}

#[tokio::test]
async fn a_sqlite_catalog_change_rebuilds_only_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    fill_sqlite(&path);
    a_change_rebuilds_only_the_entries_it_touches(&store).await;
}

#[tokio::test]
async fn a_redis_catalog_change_rebuilds_only_its_entries() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), false, WINDOW)
        .await
        .unwrap();
    fill_redis(&server.url()).await;
    a_change_rebuilds_only_the_entries_it_touches(&store).await;
}

/// A catalog version that falls (a store restored from an older backup)
/// makes the cache load everything again: what the backup lacks is gone.
#[tokio::test]
async fn a_falling_catalog_version_reloads_the_whole_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    for i in 0..3 {
        store.insert_partner(&partner(i)).await.unwrap();
    }
    let cache = cache();
    cache.refresh(&store).await.unwrap();
    assert!(cache.get("p2").is_some());
    let restored = rusqlite::Connection::open(&path).unwrap();
    restored
        .execute_batch(
            "DELETE FROM partners WHERE id = 'p2';
             UPDATE settings SET value = '2' WHERE name = 'catalog_version';",
        )
        .unwrap();
    cache.refresh(&store).await.unwrap();
    assert!(cache.get("p2").is_none());
    assert!(cache.get("p1").is_some());
    assert_eq!(cache.version(), 2);
}

/// Writes the catalog straight into the database file, in one transaction
/// (120,000 synced API calls would take minutes).
fn fill_sqlite(path: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    for (partner, campaigns) in catalog() {
        tx.execute(
            "INSERT INTO partners (id, token_hash, record) VALUES (?1, ?2, ?3)",
            (partner.id.as_str(), &partner.token_hash, json(&partner)),
        )
        .unwrap();
        for c in campaigns {
            tx.execute(
                "INSERT INTO campaigns (partner, slug, record) VALUES (?1, ?2, ?3)",
                (c.partner.as_str(), c.slug.as_str(), json(&c)),
            )
            .unwrap();
        }
    }
    tx.execute(
        "UPDATE settings SET value = '1' WHERE name = 'catalog_version'",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
}

/// Writes the catalog straight into Redis, in pipelines.
async fn fill_redis(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in catalog().collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for (partner, campaigns) in chunk {
            pipe.hset("lc:{catalog}:partners", partner.id.as_str(), json(partner));
            for c in campaigns {
                let key = format!("lc:{{catalog}}:campaigns:{}", c.partner.as_str());
                pipe.hset(key, c.slug.as_str(), json(c));
            }
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    redis::cmd("SET")
        .arg("lc:{catalog}:version")
        .arg(1)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap()
}
