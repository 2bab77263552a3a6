//! The `Store` behaviour every implementation shares, written once and run
//! against each store.

use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use lastclick::cookie::{ClickId, VisitorId};
use lastclick::ids::{CampaignName, CampaignSlug, PartnerId};
use lastclick::store::embedded::EmbeddedStore;
use lastclick::store::{Campaign, Click, CounterCell, Partner, Store, StoreError};

const DAY: i64 = 86_400;
/// 2026-11-01T12:00:00Z
const NOV_1: i64 = 1_793_534_400;

fn partner(id: &str) -> Partner {
    Partner {
        id: PartnerId::parse(id).unwrap(),
        name: format!("Partner {id}"),
        paypal_email: None,
        disabled: false,
        token_hash: format!("hash-of-{id}"),
        created_at: Utc.timestamp_opt(NOV_1, 0).unwrap(),
    }
}

fn campaign(partner: &str, slug: &str) -> Campaign {
    Campaign {
        partner: PartnerId::parse(partner).unwrap(),
        slug: CampaignSlug::parse(slug).unwrap(),
        name: CampaignName::parse(&format!("{slug}.name")).unwrap(),
        trial_days: Some(14),
        discount: None,
        landing: None,
        utm_term: Some("t".into()),
        created_at: Utc.timestamp_opt(NOV_1, 0).unwrap(),
    }
}

fn click(partner: &str, campaign: &str, term: Option<&str>, visitor: u8, at: i64) -> Click {
    Click {
        click_id: ClickId::random(),
        visitor_id: VisitorId([visitor; 16]),
        partner: partner.into(),
        campaign: campaign.into(),
        term: term.map(Into::into),
        at,
    }
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn cell(d: &str, campaign: &str, term: &str) -> CounterCell {
    CounterCell {
        day: day(d),
        campaign: campaign.into(),
        term: term.into(),
    }
}

async fn partners_are_unique_and_found_by_token_hash(store: Arc<dyn Store>) {
    let v0 = store.catalog_version().await.unwrap();
    store.insert_partner(&partner("acme")).await.unwrap();
    assert!(matches!(
        store.insert_partner(&partner("acme")).await,
        Err(StoreError::Conflict)
    ));
    assert!(store.catalog_version().await.unwrap() > v0);
    let found = store
        .partner(&PartnerId::parse("acme").unwrap())
        .await
        .unwrap();
    assert_eq!(found, Some(partner("acme")));
    assert_eq!(
        store.partner_by_token_hash("hash-of-acme").await.unwrap(),
        Some(PartnerId::parse("acme").unwrap())
    );
    assert_eq!(
        store.partner_by_token_hash("hash-of-nobody").await.unwrap(),
        None
    );
    let mut changed = partner("acme");
    changed.disabled = true;
    changed.paypal_email = Some("p@example.org".into());
    let v1 = store.catalog_version().await.unwrap();
    store.update_partner(&changed).await.unwrap();
    assert!(store.catalog_version().await.unwrap() > v1);
    assert_eq!(store.partner(&changed.id).await.unwrap(), Some(changed));
    assert!(matches!(
        store.update_partner(&partner("ghost")).await,
        Err(StoreError::NotFound)
    ));
}

async fn campaigns_are_unique_per_partner_and_in_the_catalog(store: Arc<dyn Store>) {
    store.insert_partner(&partner("acme")).await.unwrap();
    store.insert_partner(&partner("rival")).await.unwrap();
    store
        .insert_campaign(&campaign("acme", "spring"))
        .await
        .unwrap();
    store
        .insert_campaign(&campaign("rival", "spring"))
        .await
        .unwrap();
    assert!(matches!(
        store.insert_campaign(&campaign("acme", "spring")).await,
        Err(StoreError::Conflict)
    ));
    let acme = store
        .campaigns(&PartnerId::parse("acme").unwrap())
        .await
        .unwrap();
    assert_eq!(acme, vec![campaign("acme", "spring")]);
    let catalog = store.load_catalog().await.unwrap();
    assert_eq!(catalog.partners.len(), 2);
    assert_eq!(catalog.campaigns.len(), 2);
    assert_eq!(catalog.version, store.catalog_version().await.unwrap());
}

async fn clicks_are_kept_by_id_and_by_visitor(store: Arc<dyn Store>) {
    let first = click("acme", "spring", Some("a"), 1, NOV_1);
    let later = click("rival", "default_link", None, 1, NOV_1 + 60);
    store
        .record_clicks(std::slice::from_ref(&first))
        .await
        .unwrap();
    store
        .record_clicks(std::slice::from_ref(&later))
        .await
        .unwrap();
    assert_eq!(store.click(&first.click_id).await.unwrap(), Some(first));
    assert_eq!(
        store.last_click(&VisitorId([1; 16])).await.unwrap(),
        Some(later)
    );
    assert_eq!(store.last_click(&VisitorId([9; 16])).await.unwrap(), None);
    assert_eq!(store.click(&ClickId::random()).await.unwrap(), None);
}

async fn counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once(store: Arc<dyn Store>) {
    let acme = PartnerId::parse("acme").unwrap();
    let batch = vec![
        click("acme", "spring", Some("a"), 1, NOV_1),
        click("acme", "spring", Some("a"), 2, NOV_1 + 10),
        click("acme", "spring", None, 1, NOV_1 + 20),
        click("acme", "spring", Some("a"), 1, NOV_1 + DAY),
        click("rival", "spring", Some("a"), 3, NOV_1),
    ];
    store.record_clicks(&batch).await.unwrap();
    store.record_clicks(&batch[..2]).await.unwrap(); // a retried batch
    let mut counts = store
        .click_counts(&acme, day("2026-11-01"), day("2026-11-02"))
        .await
        .unwrap();
    counts.sort_by(|a, b| a.cell.cmp(&b.cell));
    let summary: Vec<(CounterCell, u64)> = counts.into_iter().map(|c| (c.cell, c.clicks)).collect();
    assert_eq!(
        summary,
        vec![
            (cell("2026-11-01", "spring", ""), 1),
            (cell("2026-11-01", "spring", "a"), 2),
            (cell("2026-11-02", "spring", "a"), 1),
        ]
    );
    let one_day = store
        .click_counts(&acme, day("2026-11-02"), day("2026-11-02"))
        .await
        .unwrap();
    assert_eq!(one_day.len(), 1);
    let cells = [
        cell("2026-11-01", "spring", "a"),
        cell("2026-11-02", "spring", "a"),
    ];
    assert_eq!(
        store.unique_visitors(&acme, &cells).await.unwrap(),
        2,
        "union of days"
    );
    assert_eq!(store.unique_visitors(&acme, &cells[1..]).await.unwrap(), 1);
    assert_eq!(store.unique_visitors(&acme, &[]).await.unwrap(), 0);
    assert_eq!(
        store
            .unique_visitors(&acme, &[cell("2026-01-01", "x", "")])
            .await
            .unwrap(),
        0
    );
}

macro_rules! store_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn partners_are_unique_and_found_by_token_hash() {
                super::partners_are_unique_and_found_by_token_hash($make).await;
            }

            #[tokio::test]
            async fn campaigns_are_unique_per_partner_and_in_the_catalog() {
                super::campaigns_are_unique_per_partner_and_in_the_catalog($make).await;
            }

            #[tokio::test]
            async fn clicks_are_kept_by_id_and_by_visitor() {
                super::clicks_are_kept_by_id_and_by_visitor($make).await;
            }

            #[tokio::test]
            async fn counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once() {
                super::counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once($make)
                    .await;
            }
        }
    };
}

fn embedded() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::new(std::time::Duration::from_secs(
        120 * DAY as u64,
    )))
}

store_suite!(embedded_store, embedded());

#[tokio::test]
async fn the_embedded_store_forgets_clicks_and_counters_after_the_window() {
    let store = EmbeddedStore::new(std::time::Duration::from_secs(2 * DAY as u64));
    let old = click("acme", "spring", None, 1, NOV_1);
    let recent = click("acme", "spring", None, 2, NOV_1 + 3 * DAY);
    store
        .record_clicks(&[old.clone(), recent.clone()])
        .await
        .unwrap();
    store.expire(NOV_1 + 3 * DAY + 1);
    assert_eq!(store.click(&old.click_id).await.unwrap(), None);
    assert_eq!(store.last_click(&VisitorId([1; 16])).await.unwrap(), None);
    assert_eq!(store.click(&recent.click_id).await.unwrap(), Some(recent));
    let acme = PartnerId::parse("acme").unwrap();
    let counts = store
        .click_counts(&acme, day("2026-10-01"), day("2026-12-01"))
        .await
        .unwrap();
    assert_eq!(counts.len(), 1, "the old day's counters are gone");
}
