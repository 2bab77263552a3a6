//! The embedded store's click writes: a flusher batch of 256 clicks into a
//! SQLite database that already holds 1,000,000, as `serve` writes them
//! (time-ordered click and visitor ids). The same batch with ids random
//! from their first byte is the reference: what the ids' time prefix saves.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lastclick::ids::{ClickId, VisitorId};
use lastclick::store::prelude::*;
use lastclick::store::sqlite::SqliteStore;
use lastclick::store::Click;

const BATCH: usize = 256;

/// Clicks the database holds before the measured batches: 1,000,000 when
/// benchmarking, a few thousand when `cargo test` only checks that the
/// bench runs.
fn held() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

fn clicks(n: usize, ids: fn() -> ([u8; 16], [u8; 16])) -> Vec<Click> {
    let partners: Vec<Arc<str>> = (0..10).map(|p| format!("partner{p}").into()).collect();
    let campaign: Arc<str> = "spring".into();
    let now = Utc::now().timestamp();
    (0..n)
        .map(|i| {
            let (click, visitor) = ids();
            Click {
                click_id: ClickId(click),
                visitor_id: VisitorId(visitor),
                partner: Arc::clone(&partners[i % partners.len()]),
                campaign: Arc::clone(&campaign),
                term: None,
                at: now,
            }
        })
        .collect()
}

fn time_ordered() -> ([u8; 16], [u8; 16]) {
    (ClickId::random().0, VisitorId::random().0)
}

fn random() -> ([u8; 16], [u8; 16]) {
    (rand::random(), rand::random())
}

/// A store holding `held()` clicks written with `ids`.
fn filled(
    rt: &tokio::runtime::Runtime,
    ids: fn() -> ([u8; 16], [u8; 16]),
) -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("bench.db"),
        Duration::from_secs(86_400 * 120),
    )
    .unwrap();
    rt.block_on(async {
        for _ in 0..held() / 10_000 {
            store.record_clicks(&clicks(10_000, ids)).await.unwrap();
        }
    });
    (store, dir)
}

fn click_batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("sqlite_record_clicks");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for (name, ids) in [
        ("time_ordered_ids", time_ordered as fn() -> _),
        ("random_ids_reference", random),
    ] {
        // Filled on first use, so that a filtered-out case costs nothing.
        let mut held = None;
        group.bench_function(name, |b| {
            let (store, _dir) = held.get_or_insert_with(|| filled(&rt, ids));
            b.iter_batched(
                || clicks(BATCH, ids),
                |batch| rt.block_on(store.record_clicks(&batch)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, click_batches);
criterion_main!(benches);
