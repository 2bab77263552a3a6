//! The route cache's refresh with 20,000 partners and 100,000 campaigns:
//! what one catalog change costs an instance (read what changed since its
//! version, rebuild those entries), next to reloading the whole catalog,
//! which is what every change cost before changes were read incrementally.

use std::sync::Arc;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lastclick::edge::cache::RouteCache;
use lastclick::edge::landing::LandingPolicy;
use lastclick::ids::{CampaignName, CampaignSlug, PartnerId};
use lastclick::store::prelude::*;
use lastclick::store::sqlite::SqliteStore;
use lastclick::store::{Campaign, CatalogSnapshot, Partner};

const CAMPAIGNS_EACH: usize = 5;

/// 20,000 partners when benchmarking, 200 when `cargo test` only checks
/// that the bench runs.
fn partners() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        20_000
    } else {
        200
    }
}

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
        name: CampaignName::parse(slug).unwrap(),
        trial_days: Some(14),
        discount: Some(10),
        landing: Some(format!("https://www.example.com/p/{partner}")),
        utm_term: None,
        created_at: Utc::now(),
    }
}

fn catalog() -> CatalogSnapshot {
    let n = partners();
    CatalogSnapshot {
        version: 1,
        partners: (0..n).map(partner).collect(),
        campaigns: (0..n)
            .flat_map(|p| (0..CAMPAIGNS_EACH).map(move |c| campaign(p, &format!("c{c}"))))
            .collect(),
    }
}

fn cache() -> RouteCache {
    let policy = LandingPolicy::new(&["www.example.com".to_owned()], false);
    let landing = policy.parse("https://www.example.com/signup").unwrap();
    RouteCache::new(policy, landing)
}

/// The cache alone: building every entry against rebuilding one partner's.
fn cache_updates(c: &mut Criterion) {
    let snapshot = catalog();
    let cache = cache();
    cache.apply(snapshot.clone());
    let mut group = c.benchmark_group("route_cache");
    group.sample_size(10);
    group.bench_function("apply the whole catalog", |b| {
        b.iter_batched(
            || snapshot.clone(),
            |snapshot| cache.apply(snapshot),
            BatchSize::LargeInput,
        )
    });
    let mut version = 1;
    let n = snapshot.partners.len();
    group.bench_function("apply one new campaign", |b| {
        b.iter_batched(
            || {
                version += 1;
                CatalogSnapshot {
                    version,
                    partners: Vec::new(),
                    campaigns: vec![campaign(version as usize % n, "fresh")],
                }
            },
            |changes| cache.apply_changes(changes),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The whole refresh against a SQLite file holding the catalog: after one
/// change, read what changed and apply it, against reading and applying
/// everything.
fn store_refresh(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    let window = std::time::Duration::from_secs(120 * 86_400);
    let store = Arc::new(SqliteStore::open(&path, window).unwrap());
    fill(&path, &catalog());
    let cache = cache();
    runtime.block_on(cache.refresh(store.as_ref())).unwrap();
    runtime
        .block_on(store.insert_campaign(&campaign(7, "fresh")))
        .unwrap();
    let since = cache.version();

    let mut group = c.benchmark_group("route_cache_refresh");
    group.sample_size(10);
    group.bench_function("after one change: read and apply the change", |b| {
        b.iter(|| {
            let changes = runtime.block_on(store.catalog_changes(since)).unwrap();
            cache.apply_changes(changes);
        })
    });
    group.bench_function("reference: read and apply the whole catalog", |b| {
        b.iter(|| {
            let snapshot = runtime.block_on(store.load_catalog()).unwrap();
            cache.apply(snapshot);
        })
    });
    group.finish();
}

/// Writes `catalog` straight into the database file, in one transaction.
fn fill(path: &std::path::Path, catalog: &CatalogSnapshot) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    for p in &catalog.partners {
        tx.execute(
            "INSERT INTO partners (id, token_hash, record) VALUES (?1, ?2, ?3)",
            (p.id.as_str(), &p.token_hash, json(p)),
        )
        .unwrap();
    }
    for c in &catalog.campaigns {
        tx.execute(
            "INSERT INTO campaigns (partner, slug, record) VALUES (?1, ?2, ?3)",
            (c.partner.as_str(), c.slug.as_str(), json(c)),
        )
        .unwrap();
    }
    tx.execute(
        "UPDATE settings SET value = '1' WHERE name = 'catalog_version'",
        [],
    )
    .unwrap();
    tx.commit().unwrap();
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap()
}

criterion_group!(benches, cache_updates, store_refresh);
criterion_main!(benches);
