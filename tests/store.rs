//! The `Store` behaviour every implementation shares, written once and run
//! against each store.

mod common;

use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use common::redis_server::{RedisCluster, RedisServer};
use lastclick::conversions::book::{
    Book, BookRequest, Changes, ConversionCell, HistoryChange, LedgerEntry, Payout, PayoutStatus,
};
use lastclick::conversions::customer::{ConversionCounts, Customer, EntryKind, Referral};
use lastclick::conversions::events::{Event, EventKind};
use lastclick::conversions::hold::Hold;
use lastclick::conversions::money::Currency;
use lastclick::conversions::money::Period;
use lastclick::ids::{
    CampaignName, CampaignSlug, CouponCode, CustomerId, EventId, PartnerId, PayoutId,
};
use lastclick::ids::{ClickId, VisitorId};
use lastclick::store::prelude::*;
use lastclick::store::redis::RedisStore;
use lastclick::store::sqlite::SqliteStore;
use lastclick::store::{
    Campaign, Click, Commit, CounterCell, Coupon, InboxItem, Partner, Route, StoreError,
};
use lastclick::webhooks::delivery::{DeliveryCursor, DeliveryStatus, FeedEvent, WebhookDelivery};
use lastclick::webhooks::outbox::OutboxEvent;
use lastclick::webhooks::{WebhookEndpoint, WebhookEventType};

const DAY: i64 = 86_400;
/// Noon UTC ten days ago: recent enough for every store's expiry, whatever
/// day the tests run on.
fn t0() -> i64 {
    (Utc::now().timestamp() / DAY - 10) * DAY + DAY / 2
}

/// The UTC day `offset` days after `t0`.
fn pid(id: &str) -> PartnerId {
    PartnerId::parse(id).unwrap()
}

/// The cell of day 0's clicks on `campaign`, without a term.
fn conversion_cell(campaign: &str) -> ConversionCell {
    ConversionCell {
        day: d(0),
        campaign: campaign.to_owned(),
        term: String::new(),
    }
}

fn d(offset: i64) -> NaiveDate {
    Utc.timestamp_opt(t0() + offset * DAY, 0)
        .unwrap()
        .date_naive()
}

fn partner(id: &str) -> Partner {
    Partner {
        id: PartnerId::parse(id).unwrap(),
        name: format!("Partner {id}"),
        paypal_email: None,
        disabled: false,
        token_hash: format!("hash-of-{id}"),
        created_at: Utc.timestamp_opt(t0(), 0).unwrap(),
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
        created_at: Utc.timestamp_opt(t0(), 0).unwrap(),
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

fn cell(day: NaiveDate, campaign: &str, term: &str) -> CounterCell {
    CounterCell {
        day,
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
    for id in ["zeta", "beta", "alpha"] {
        store.insert_partner(&partner(id)).await.unwrap();
    }
    let ids = |page: Vec<lastclick::store::Partner>| {
        page.into_iter()
            .map(|p| p.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.partners(None, 3).await.unwrap()),
        ["acme", "alpha", "beta"],
        "listed by id"
    );
    assert_eq!(
        ids(store.partners(Some(&pid("alpha")), 10).await.unwrap()),
        ["beta", "zeta"]
    );
    assert!(store
        .partners(Some(&pid("zeta")), 10)
        .await
        .unwrap()
        .is_empty());
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

/// `catalog_changes(v)` lists exactly what changed after `v`, each record
/// as it is now, and the version it brings a reader to.
async fn catalog_changes_list_only_what_changed_since(store: Arc<dyn Store>) {
    store.insert_partner(&partner("acme")).await.unwrap();
    store.insert_partner(&partner("rival")).await.unwrap();
    store
        .insert_campaign(&campaign("acme", "spring"))
        .await
        .unwrap();
    let start = store.catalog_version().await.unwrap();
    let unchanged = store.catalog_changes(start).await.unwrap();
    assert_eq!(unchanged.version, start);
    assert!(unchanged.partners.is_empty() && unchanged.campaigns.is_empty());

    let mut disabled = partner("rival");
    disabled.disabled = true;
    store.update_partner(&disabled).await.unwrap();
    store
        .insert_campaign(&campaign("acme", "autumn"))
        .await
        .unwrap();
    assert!(store
        .insert_campaign(&campaign("acme", "autumn"))
        .await
        .is_err());
    let changes = store.catalog_changes(start).await.unwrap();
    assert_eq!(changes.version, store.catalog_version().await.unwrap());
    assert_eq!(changes.partners, vec![disabled.clone()]);
    assert_eq!(changes.campaigns, vec![campaign("acme", "autumn")]);

    // Changed twice: listed once, as it is now.
    disabled.name = "Renamed".into();
    store.update_partner(&disabled).await.unwrap();
    let again = store.catalog_changes(start).await.unwrap();
    assert_eq!(again.partners, vec![disabled]);
    let latest = store.catalog_changes(changes.version).await.unwrap();
    assert_eq!(latest.partners.len(), 1);
    assert!(latest.campaigns.is_empty());
    let everything = store.catalog_changes(0).await.unwrap();
    assert_eq!(everything.partners.len(), 2);
    assert_eq!(everything.campaigns.len(), 2);
}

async fn clicks_are_kept_by_id_and_by_visitor(store: Arc<dyn Store>) {
    let first = click("acme", "spring", Some("a"), 1, t0());
    let later = click("rival", "default_link", None, 1, t0() + 60);
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

    // Out of order within one batch, the latest click still wins.
    let newest = click("acme", "spring", None, 2, t0() + 120);
    let older = click("rival", "spring", None, 2, t0() + 30);
    store
        .record_clicks(&[newest.clone(), older.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.last_click(&VisitorId([2; 16])).await.unwrap(),
        Some(newest)
    );
    assert_eq!(store.click(&older.click_id).await.unwrap(), Some(older));

    // Of many clicks of one visitor in a batch, the latest by time wins.
    let run: Vec<Click> = [200, 300, 250, 100]
        .iter()
        .map(|offset| click("acme", "spring", None, 3, t0() + offset))
        .collect();
    store.record_clicks(&run).await.unwrap();
    assert_eq!(
        store.last_click(&VisitorId([3; 16])).await.unwrap(),
        Some(run[1].clone())
    );
    let history = store.visitor_clicks(&VisitorId([3; 16]), 20).await.unwrap();
    let times: Vec<i64> = history.iter().map(|c| c.at - t0()).collect();
    assert_eq!(times, [300, 250, 200, 100]);
    visitor_history_keeps_the_latest_clicks_once_each(&store).await;
}

/// A visitor's history: its latest `MAX_VISITOR_CLICKS` clicks, newest
/// first, whatever order and batches they come in, a batch sent again
/// counted once.
async fn visitor_history_keeps_the_latest_clicks_once_each(store: &Arc<dyn Store>) {
    let visitor = VisitorId([4; 16]);
    let clicks: Vec<Click> = (0..25)
        .map(|i| click("acme", "spring", None, 4, t0() + (i * 7) % 25))
        .collect();
    for batch in [&clicks[10..], &clicks[..10], &clicks[..10]] {
        store.record_clicks(batch).await.unwrap();
    }
    let history = store.visitor_clicks(&visitor, 100).await.unwrap();
    let times: Vec<i64> = history.iter().map(|c| c.at - t0()).collect();
    assert_eq!(times, (5..25).rev().collect::<Vec<i64>>());
    assert_eq!(store.visitor_clicks(&visitor, 3).await.unwrap().len(), 3);
    assert_eq!(
        store.last_click(&visitor).await.unwrap().map(|c| c.at),
        Some(t0() + 24)
    );
}

async fn counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once(store: Arc<dyn Store>) {
    let acme = PartnerId::parse("acme").unwrap();
    let batch = vec![
        click("acme", "spring", Some("a"), 1, t0()),
        click("acme", "spring", Some("a"), 2, t0() + 10),
        click("acme", "spring", None, 1, t0() + 20),
        click("acme", "spring", Some("a"), 1, t0() + DAY),
        click("rival", "spring", Some("a"), 3, t0()),
    ];
    store.record_clicks(&batch).await.unwrap();
    store.record_clicks(&batch).await.unwrap(); // a retried batch
    let mut counts = store.click_counts(&acme, d(0), d(1)).await.unwrap();
    counts.sort_by(|a, b| a.cell.cmp(&b.cell));
    let summary: Vec<(CounterCell, u64)> = counts.into_iter().map(|c| (c.cell, c.clicks)).collect();
    assert_eq!(
        summary,
        vec![
            (cell(d(0), "spring", ""), 1),
            (cell(d(0), "spring", "a"), 2),
            (cell(d(1), "spring", "a"), 1),
        ]
    );
    let one_day = store.click_counts(&acme, d(1), d(1)).await.unwrap();
    assert_eq!(one_day.len(), 1);

    // A batch holding one click twice counts it once.
    let twice = click("beta", "spring", None, 4, t0());
    store
        .record_clicks(&[twice.clone(), twice.clone()])
        .await
        .unwrap();
    let beta = PartnerId::parse("beta").unwrap();
    let counts = store.click_counts(&beta, d(0), d(0)).await.unwrap();
    assert_eq!(counts.iter().map(|c| c.clicks).sum::<u64>(), 1);
    let cells = [cell(d(0), "spring", "a"), cell(d(1), "spring", "a")];
    assert_eq!(
        store.unique_visitors(&acme, &cells).await.unwrap(),
        2,
        "union of days"
    );
    assert_eq!(store.unique_visitors(&acme, &cells[1..]).await.unwrap(), 1);
    assert_eq!(store.unique_visitors(&acme, &[]).await.unwrap(), 0);
    assert_eq!(
        store
            .unique_visitors(&acme, &[cell(d(-200), "x", "")])
            .await
            .unwrap(),
        0
    );
}

fn payment_event(id: &str, customer: &str) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        customer: CustomerId::parse(customer).unwrap(),
        at: Utc.timestamp_opt(t0(), 0).unwrap(),
        kind: EventKind::Payment {
            amount: "10.00".parse().unwrap(),
            currency: Currency::USD,
            period: Period::Month,
        },
    }
}

/// Commission entry `seq` (id `e{seq}`) of one dollar, for customer `cus_1`.
fn commission_entry(seq: u64) -> LedgerEntry {
    LedgerEntry {
        seq,
        id: format!("e{seq}"),
        kind: EntryKind::Commission,
        customer: Some("cus_1".into()),
        amount: "1.00".parse().unwrap(),
        currency: Currency::USD,
        at: Utc.timestamp_opt(t0(), 0).unwrap(),
        available_at: Utc.timestamp_opt(t0(), 0).unwrap(),
        posted_at: None,
        payout_amount: None,
        note: None,
    }
}

fn referral(partner: &str) -> Referral {
    Referral {
        partner: pid(partner),
        campaign: "default_link".into(),
        term: None,
        click_at: t0(),
        found: None,
    }
}

async fn events_wait_parked_until_their_customer_is_claimed(store: Arc<dyn Store>) {
    let early = payment_event("e1", "cus_1");
    assert_eq!(
        store.route_event(&early, 1_000).await.unwrap(),
        Route::Parked
    );
    assert_eq!(store.parked_count().await.unwrap(), 1);
    let listed = store.parked_events(false, 10).await.unwrap();
    assert_eq!(listed[0].event, early);
    assert_eq!(listed[0].parked_at, 1_000);

    // The claim answers what was parked; after it, events are routed.
    let cus_1 = CustomerId::parse("cus_1").unwrap();
    let acme = referral("acme");
    let (claim, parked) = store.claim_customer(&cus_1, Some(&acme)).await.unwrap();
    assert_eq!(
        (claim.as_ref(), parked.as_slice()),
        (Some(&acme), std::slice::from_ref(&early))
    );
    let later = payment_event("e2", "cus_1");
    assert_eq!(
        store.route_event(&later, 2_000).await.unwrap(),
        Route::Claimed(Some(acme.clone()))
    );
    // A second claim changes nothing and still answers the parked events
    // until the claimant forgets them.
    let (claim, again) = store
        .claim_customer(&cus_1, Some(&referral("rival")))
        .await
        .unwrap();
    assert_eq!((claim, again.len()), (Some(acme.clone()), 1));
    // Claimed, the events are the claimant's: never dead, however old,
    // until it forgets them (a claimant that died gets them again).
    assert_eq!(store.expire_parked(i64::MAX).await.unwrap(), 0);
    let (_, still) = store.claim_customer(&cus_1, Some(&acme)).await.unwrap();
    assert_eq!(still, parked);
    assert_eq!(store.parked_count().await.unwrap(), 1);
    store.unpark(&cus_1, &parked).await.unwrap();
    assert_eq!(store.parked_count().await.unwrap(), 0);
    assert!(store.parked_events(false, 10).await.unwrap().is_empty());

    // Never claimed: dead after the horizon, not before.
    let orphan = payment_event("e3", "cus_2");
    store.route_event(&orphan, 5_000).await.unwrap();
    assert_eq!(store.expire_parked(5_000).await.unwrap(), 0);
    assert_eq!(store.expire_parked(5_001).await.unwrap(), 1);
    let dead = store.parked_events(true, 10).await.unwrap();
    assert_eq!(dead[0].event, orphan);
    assert_eq!(store.parked_count().await.unwrap(), 0);
}

async fn inboxes_hold_routed_events_until_a_commit_takes_them(store: Arc<dyn Store>) {
    let item = |id: &str| InboxItem {
        event: payment_event(id, "cus_1"),
        referral: referral("acme"),
    };
    store
        .push_inbox(&pid("acme"), &[item("e1"), item("e2")])
        .await
        .unwrap();
    store.push_inbox(&pid("acme"), &[item("e3")]).await.unwrap();
    assert_eq!(store.ready_partners(10).await.unwrap(), vec![pid("acme")]);
    let head = store.read_inbox(&pid("acme"), 2).await.unwrap();
    assert_eq!(head.items, vec![item("e1"), item("e2")]);
    assert_eq!(store.event_queue_stats().await.unwrap().routed, 3);

    // Locked by one worker: not by another, until given back.
    let ttl = std::time::Duration::from_secs(30);
    assert!(store.lock_book(&pid("acme"), "w1", ttl).await.unwrap());
    assert!(!store.lock_book(&pid("acme"), "w2", ttl).await.unwrap());
    assert!(
        !store.lock_book(&pid("acme"), "w1", ttl).await.unwrap(),
        "taken is taken, for its holder too"
    );
    store.unlock_book(&pid("acme"), "w2").await.unwrap();
    assert!(
        !store.lock_book(&pid("acme"), "w2", ttl).await.unwrap(),
        "only the holder gives it back"
    );
    store.unlock_book(&pid("acme"), "w1").await.unwrap();
    assert!(store.lock_book(&pid("acme"), "w2", ttl).await.unwrap());

    // A commit writes the book, its customers, cells, history and ledger
    // and takes what it applied off the inbox's head, against the version.
    let view = store
        .load_book(&pid("acme"), &BookRequest::default())
        .await
        .unwrap();
    let mut customer = Customer::new("cus_1", referral("acme"));
    customer.arr_share = "960".parse().unwrap();
    let counts = ConversionCounts {
        signups: 1,
        ..ConversionCounts::default()
    };
    let changes = Changes {
        book: Book {
            entries: 1,
            ..view.book.clone()
        },
        customers: vec![customer.clone()],
        cells: vec![(conversion_cell("spring"), counts.clone())],
        history: vec![
            HistoryChange::Add("a\te1\t1".into(), 1_000),
            HistoryChange::Add("a\te2\t2".into(), 2_000),
            HistoryChange::Remove("a\te1\t1".into(), 1_000),
            HistoryChange::Add("s\te0\tcus_1\t0.20".into(), 500),
        ],
        entries: vec![LedgerEntry {
            amount: "2.00".parse().unwrap(),
            ..commission_entry(1)
        }],
        inbox_taken: 2,
        payouts: Vec::new(),
        outbox: Vec::new(),
    };
    assert_eq!(
        store
            .commit_book(&pid("acme"), view.version, &changes)
            .await
            .unwrap(),
        Commit::Applied
    );
    assert_eq!(
        store
            .commit_book(&pid("acme"), view.version, &changes)
            .await
            .unwrap(),
        Commit::Conflict,
        "a stale version changes nothing"
    );
    assert_eq!(
        store.read_inbox(&pid("acme"), 10).await.unwrap().items,
        vec![item("e3")]
    );
    let request = BookRequest {
        customers: ["cus_1".to_owned(), "nobody".to_owned()].into(),
        cells: [conversion_cell("spring")].into(),
        history_from: Some(600),
        payouts: Default::default(),
    };
    let view = store.load_book(&pid("acme"), &request).await.unwrap();
    assert_eq!(view.book.entries, 1);
    assert_eq!(
        view.customers.into_values().collect::<Vec<_>>(),
        vec![customer]
    );
    assert_eq!(view.cells[&conversion_cell("spring")], counts);
    let history = view.history.unwrap();
    assert_eq!(history.from, 600);
    let arr: Vec<(i64, String)> = history
        .arr
        .iter()
        .map(|(k, v)| (k.at, format!("{}={v}", k.id)))
        .collect();
    assert_eq!(
        arr,
        vec![(2_000, "e2=2".to_owned())],
        "changes apply in order"
    );
    assert!(history.signups.is_empty(), "the history from 600 on only");
    assert_eq!(
        store.ledger(&pid("acme"), None, 10).await.unwrap(),
        changes.entries
    );

    // The ready set follows the inbox.
    store.settle_ready(&pid("acme")).await.unwrap();
    assert_eq!(store.ready_partners(10).await.unwrap(), vec![pid("acme")]);
    let changes = Changes {
        book: view.book.clone(),
        inbox_taken: 1,
        ..Changes::default()
    };
    store
        .commit_book(&pid("acme"), view.version, &changes)
        .await
        .unwrap();
    store.settle_ready(&pid("acme")).await.unwrap();
    assert!(store.ready_partners(10).await.unwrap().is_empty());
    assert_eq!(store.event_queue_stats().await.unwrap().routed, 0);
}

async fn the_event_queue_hands_each_event_out_until_acknowledged(store: Arc<dyn Store>) {
    let (e1, e2) = (payment_event("e1", "cus_1"), payment_event("e2", "cus_1"));
    let enqueued = store
        .enqueue_events(&[e1.clone(), e2.clone(), e1.clone()])
        .await
        .unwrap();
    assert_eq!((enqueued.accepted, enqueued.duplicates), (2, 1));
    let again = store
        .enqueue_events(std::slice::from_ref(&e2))
        .await
        .unwrap();
    assert_eq!(
        (again.accepted, again.duplicates),
        (0, 1),
        "an id seen before is a duplicate forever"
    );
    assert_eq!(store.event_queue_stats().await.unwrap().waiting, 2);

    let (short, long) = (
        std::time::Duration::from_millis(20),
        std::time::Duration::from_secs(3600),
    );
    let taken = store.next_events("w1", 10, short, long).await.unwrap();
    let events: Vec<&Event> = taken.events.iter().map(|d| &d.event).collect();
    assert_eq!(events, vec![&e1, &e2], "in the order queued");
    let stats = store.event_queue_stats().await.unwrap();
    assert_eq!((stats.waiting, stats.pending), (0, 2));
    assert!(
        store
            .next_events("w2", 10, short, long)
            .await
            .unwrap()
            .events
            .is_empty(),
        "taken events are not handed out again before reclaim_after"
    );
    // Left unacknowledged past reclaim_after: another worker takes them.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let reclaimed = store
        .next_events("w2", 10, short, std::time::Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(reclaimed.events.len(), 2);
    let ids: Vec<String> = reclaimed
        .events
        .iter()
        .map(|d| d.delivery.clone())
        .collect();
    store.ack_events(&ids).await.unwrap();
    let stats = store.event_queue_stats().await.unwrap();
    assert_eq!((stats.waiting, stats.pending), (0, 0));
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert!(store
        .next_events("w1", 10, short, std::time::Duration::from_millis(10))
        .await
        .unwrap()
        .events
        .is_empty());
}

async fn ledger_pages_count_down_and_conversion_cells_filter_by_day(store: Arc<dyn Store>) {
    let cell_on = |offset: i64| {
        ConversionCell::of(&Referral {
            click_at: t0() + offset * DAY,
            ..referral("acme")
        })
    };
    let counts = ConversionCounts {
        signups: 1,
        ..ConversionCounts::default()
    };
    let changes = Changes {
        book: Book {
            entries: 5,
            ..Book::default()
        },
        cells: vec![(cell_on(0), counts.clone()), (cell_on(3), counts.clone())],
        entries: (1..=5).map(commission_entry).collect(),
        ..Changes::default()
    };
    assert_eq!(
        store.commit_book(&pid("acme"), 0, &changes).await.unwrap(),
        Commit::Applied
    );
    let page = |before, limit| {
        let store = store.clone();
        async move {
            let entries = store.ledger(&pid("acme"), before, limit).await.unwrap();
            entries.iter().map(|e| e.seq).collect::<Vec<u64>>()
        }
    };
    assert_eq!(page(None, 2).await, vec![5, 4]);
    assert_eq!(page(Some(4), 2).await, vec![3, 2]);
    assert_eq!(page(Some(2), 10).await, vec![1]);
    assert!(page(Some(1), 10).await.is_empty());
    assert!(store
        .ledger(&pid("nobody"), None, 10)
        .await
        .unwrap()
        .is_empty());

    let days = |from, to| {
        let store = store.clone();
        async move {
            let cells = store
                .conversion_counts(&pid("acme"), d(from), d(to))
                .await
                .unwrap();
            cells
                .into_iter()
                .map(|(cell, _)| cell)
                .collect::<Vec<ConversionCell>>()
        }
    };
    assert_eq!(days(0, 0).await, vec![cell_on(0)]);
    assert_eq!(days(1, 3).await, vec![cell_on(3)]);
    assert_eq!(days(-5, 5).await.len(), 2);
    assert!(days(4, 9).await.is_empty());
}

/// A commit larger than one command of each kind holds (the Redis script
/// writes a group in commands of at most 1,000 arguments): every customer,
/// cell, history change (in order) and ledger entry is written.
async fn a_large_commit_writes_every_record_in_order(store: Arc<dyn Store>) {
    let customers: Vec<Customer> = (0..1_200)
        .map(|i| Customer::new(&format!("cus_{i}"), referral("acme")))
        .collect();
    let counts = ConversionCounts {
        signups: 1,
        ..ConversionCounts::default()
    };
    let cells: Vec<(ConversionCell, ConversionCounts)> = (0..600)
        .map(|i| (conversion_cell(&format!("campaign{i}")), counts.clone()))
        .collect();
    let member = |id: &str| format!("a\t{id}\t1");
    let mut history: Vec<HistoryChange> = (1..=1_100)
        .map(|i| HistoryChange::Add(member(&format!("e{i}")), i * 10))
        .collect();
    history.extend([
        HistoryChange::Remove(member("e5"), 50),
        HistoryChange::Remove(member("e700"), 7_000),
        HistoryChange::Add(member("e5"), 50),
        HistoryChange::Add(member("x"), 20_000),
        HistoryChange::Remove(member("x"), 20_000),
    ]);
    let entries: Vec<LedgerEntry> = (1..=2_100).map(commission_entry).collect();
    let changes = Changes {
        book: Book {
            entries: 2_100,
            ..Book::default()
        },
        customers: customers.clone(),
        cells: cells.clone(),
        history,
        entries,
        inbox_taken: 0,
        payouts: Vec::new(),
        outbox: Vec::new(),
    };
    assert_eq!(
        store.commit_book(&pid("acme"), 0, &changes).await.unwrap(),
        Commit::Applied
    );
    let request = BookRequest {
        customers: customers.iter().map(|c| c.id.clone()).collect(),
        cells: cells.iter().map(|(cell, _)| cell.clone()).collect(),
        history_from: Some(0),
        payouts: Default::default(),
    };
    let view = store.load_book(&pid("acme"), &request).await.unwrap();
    assert_eq!((view.version, view.book.entries), (1, 2_100));
    let expected: std::collections::BTreeMap<String, Customer> =
        customers.into_iter().map(|c| (c.id.clone(), c)).collect();
    assert_eq!(view.customers, expected);
    assert_eq!(view.cells.len(), 600);
    let arr: Vec<String> = view
        .history
        .unwrap()
        .arr
        .keys()
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(arr.len(), 1_099, "e700 and x removed, e5 added back");
    assert!(arr.contains(&"e5".to_owned()));
    assert!(!arr.contains(&"e700".to_owned()) && !arr.contains(&"x".to_owned()));
    let ledger = store.ledger(&pid("acme"), None, 5_000).await.unwrap();
    let seqs: Vec<u64> = ledger.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=2_100).rev().collect::<Vec<u64>>());
}

/// Each test gets a fresh store; `$make` returns it with whatever must live
/// as long as it (a Redis server).
fn payout(partner: &str, requested_ms: i64) -> Payout {
    Payout {
        id: PayoutId::new(requested_ms),
        partner: pid(partner),
        status: PayoutStatus::Requested,
        amount: "60.00".parse().unwrap(),
        currency: Currency::USD,
        paypal_email: format!("{partner}@pay.example"),
        requested_at: Utc.timestamp_millis_opt(requested_ms).unwrap(),
        paid_at: None,
        reference: None,
        failed_at: None,
        reason: None,
    }
}

/// Writes `payout` as a book step does: indexed first, then committed
/// with the partner's book.
async fn commit_payout(store: &Arc<dyn Store>, payout: &Payout) {
    store.index_payout(payout).await.unwrap();
    let view = store
        .load_book(&payout.partner, &BookRequest::default())
        .await
        .unwrap();
    let changes = Changes {
        book: view.book,
        payouts: vec![payout.clone()],
        ..Changes::default()
    };
    let commit = store.commit_book(&payout.partner, view.version, &changes);
    assert_eq!(commit.await.unwrap(), Commit::Applied);
}

async fn payouts_are_listed_by_status_and_by_partner(store: Arc<dyn Store>) {
    let base = t0() * 1000;
    let first = payout("acme", base);
    let second = payout("beta", base + 1);
    let third = payout("acme", base + 2);
    for p in [&first, &second, &third] {
        commit_payout(&store, p).await;
    }
    // Indexed, never committed (a request refused at its commit): skipped.
    store.index_payout(&payout("acme", base + 3)).await.unwrap();
    let ids = |payouts: Vec<Payout>| payouts.into_iter().map(|p| p.id).collect::<Vec<_>>();
    let requested = Some(PayoutStatus::Requested);
    assert_eq!(
        ids(store.payouts(requested, None, 10).await.unwrap()),
        vec![first.id.clone(), second.id.clone(), third.id.clone()],
        "oldest first, across partners"
    );
    assert_eq!(
        ids(store.payouts(requested, Some(&first.id), 1).await.unwrap()),
        vec![second.id.clone()],
        "paged after a cursor"
    );
    assert_eq!(
        ids(store.partner_payouts(&pid("acme"), None, 10).await.unwrap()),
        vec![third.id.clone(), first.id.clone()],
        "a partner's, newest first"
    );
    assert_eq!(
        ids(store
            .partner_payouts(&pid("acme"), Some(&third.id), 10)
            .await
            .unwrap()),
        vec![first.id.clone()]
    );
    assert_eq!(
        store.payout_partner(&second.id).await.unwrap(),
        Some(pid("beta"))
    );
    assert_eq!(
        store.payout_partner(&PayoutId::new(base)).await.unwrap(),
        None
    );

    // Paid: indexed under its new status, committed, then dropped from the
    // old. A step that stopped before the drop leaves an entry that
    // listings skip.
    let mut paid = first.clone();
    paid.status = PayoutStatus::Paid;
    paid.reference = Some("7XK".into());
    commit_payout(&store, &paid).await;
    assert_eq!(
        ids(store.payouts(requested, None, 10).await.unwrap()),
        vec![second.id.clone(), third.id.clone()],
        "the stale entry is skipped"
    );
    store
        .unindex_payout(&first.id, PayoutStatus::Requested)
        .await
        .unwrap();
    let listed = store
        .payouts(Some(PayoutStatus::Paid), None, 10)
        .await
        .unwrap();
    assert_eq!(listed, vec![paid.clone()]);
    assert_eq!(ids(store.payouts(None, None, 10).await.unwrap()).len(), 3);
    let request = BookRequest {
        payouts: [first.id.clone(), PayoutId::new(base)].into(),
        ..BookRequest::default()
    };
    let view = store.load_book(&pid("acme"), &request).await.unwrap();
    assert_eq!(view.payouts.into_values().collect::<Vec<_>>(), vec![paid]);
}

/// Bot and suspect tallies add up by cell, a batch sent twice counts
/// once, and a read covers only its days and partner.
async fn traffic_tallies_add_up_once_per_batch(store: Arc<dyn Store>) {
    use lastclick::store::{TrafficBatch, TrafficCell};
    let tally = |partner: &str, day: NaiveDate, term: &str, bots, suspects| TrafficCell {
        partner: partner.into(),
        day,
        campaign: "spring".into(),
        term: term.into(),
        bots,
        suspects,
        // Overwrites ride along: one of each per suspect, in these tests.
        overwrites_won: suspects,
        overwrites_lost: bots,
    };
    let first = TrafficBatch::new(vec![
        tally("acme", d(0), "a", 2, 1),
        tally("acme", d(1), "", 0, 3),
        tally("beta", d(0), "a", 5, 5),
    ]);
    store.add_traffic(&first).await.unwrap();
    store.add_traffic(&first).await.unwrap();
    store
        .add_traffic(&TrafficBatch::new(vec![tally("acme", d(0), "a", 1, 0)]))
        .await
        .unwrap();
    let mut counts = store
        .traffic_counts(&pid("acme"), d(0), d(1))
        .await
        .unwrap();
    counts.sort_by_key(|c| c.cell.day);
    let seen: Vec<(NaiveDate, &str, u64, u64)> = counts
        .iter()
        .map(|c| (c.cell.day, c.cell.term.as_str(), c.bots, c.suspects))
        .collect();
    assert_eq!(seen, vec![(d(0), "a", 3, 1), (d(1), "", 0, 3)]);
    let overwrites: Vec<(u64, u64)> = counts
        .iter()
        .map(|c| (c.overwrites_won, c.overwrites_lost))
        .collect();
    assert_eq!(overwrites, vec![(1, 3), (3, 0)]);
    let one_day = store
        .traffic_counts(&pid("acme"), d(1), d(1))
        .await
        .unwrap();
    assert_eq!(one_day.len(), 1);
}

/// Commits `customer` of `partner` with a hold made at `held_at`.
async fn commit_held(store: &Arc<dyn Store>, partner: &str, customer: &str, held_at: i64) {
    let mut record = Customer::new(customer, referral(partner));
    record.hold = Hold::for_signup(1_000, 5_000, held_at);
    let view = store
        .load_book(&pid(partner), &BookRequest::default())
        .await
        .unwrap();
    let changes = Changes {
        book: view.book,
        customers: vec![record],
        ..Changes::default()
    };
    let commit = store
        .commit_book(&pid(partner), view.version, &changes)
        .await;
    assert_eq!(commit.unwrap(), Commit::Applied);
}

async fn held_customers_are_listed_by_time_and_found_by_customer(store: Arc<dyn Store>) {
    let base = t0() * 1000;
    commit_held(&store, "acme", "cus_b", base + 1).await;
    commit_held(&store, "beta", "cus_a", base + 1).await;
    commit_held(&store, "acme", "cus_z", base).await;
    // Written again by a later step: listed once.
    commit_held(&store, "acme", "cus_z", base).await;
    // A customer without a hold is not listed.
    let plain = Customer::new("cus_plain", referral("acme"));
    let view = store
        .load_book(&pid("acme"), &BookRequest::default())
        .await
        .unwrap();
    let changes = Changes {
        book: view.book,
        customers: vec![plain],
        ..Changes::default()
    };
    store
        .commit_book(&pid("acme"), view.version, &changes)
        .await
        .unwrap();

    let all = store.holds(None, 10).await.unwrap();
    let listed: Vec<(&str, &str)> = all
        .iter()
        .map(|h| (h.customer.as_str(), h.partner.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("cus_z", "acme"), ("cus_a", "beta"), ("cus_b", "acme")]
    );
    let first = store.holds(None, 1).await.unwrap();
    let rest = store.holds(Some(&first[0].cursor()), 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].customer, "cus_a");
    let (a, plain) = (
        CustomerId::parse("cus_a").unwrap(),
        CustomerId::parse("cus_plain").unwrap(),
    );
    assert_eq!(store.hold_partner(&a).await.unwrap(), Some(pid("beta")));
    assert_eq!(store.hold_partner(&plain).await.unwrap(), None);
}

async fn coupon_codes_are_unique_and_listed_by_partner(store: Arc<dyn Store>) {
    let coupon = |code: &str, partner: &str| Coupon {
        code: CouponCode::of(code).unwrap(),
        partner: pid(partner),
        created_at: Utc::now(),
    };
    for (code, partner) in [("pod-b", "pod"), ("POD-A", "pod"), ("other", "rival")] {
        store.insert_coupon(&coupon(code, partner)).await.unwrap();
    }
    let taken = store.insert_coupon(&coupon("Pod-A", "rival")).await;
    assert!(matches!(taken, Err(StoreError::Conflict)), "{taken:?}");
    let codes: Vec<String> = store
        .coupons(&pid("pod"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.code.to_string())
        .collect();
    assert_eq!(codes, ["POD-A", "POD-B"]);
    let found = store
        .coupon(&CouponCode::of("pod-a").unwrap())
        .await
        .unwrap();
    assert_eq!(found.map(|c| c.partner), Some(pid("pod")));
    assert_eq!(
        store
            .coupon(&CouponCode::of("NONE").unwrap())
            .await
            .unwrap(),
        None
    );
    assert!(store.coupons(&pid("nobody")).await.unwrap().is_empty());
}

fn outbox_event(partner: &str, n: u32) -> OutboxEvent {
    let body = serde_json::json!({"id": format!("evt_{partner}_{n}"),
        "type": "commission.created", "created_at": "2026-12-01T00:00:00.000Z",
        "partner": partner, "data": {"n": n}});
    OutboxEvent::from_body(body.to_string()).unwrap()
}

async fn commit_outbox(store: &Arc<dyn Store>, partner: &str, version: u64, n: &[u32]) -> Commit {
    let changes = Changes {
        outbox: n.iter().map(|n| outbox_event(partner, *n)).collect(),
        ..Changes::default()
    };
    store
        .commit_book(&pid(partner), version, &changes)
        .await
        .unwrap()
}

fn delivery_of(event: &FeedEvent) -> WebhookDelivery {
    WebhookDelivery {
        event_id: event.event.id.clone(),
        event_type: event.event.kind,
        seq: event.seq,
        status: DeliveryStatus::Succeeded,
        attempts: 1,
        event_created_at: event.event.created_at,
        last_attempt_at: Utc::now(),
        next_attempt_at: None,
        response_status: Some(200),
        error: None,
        body: event.event.body.clone(),
    }
}

async fn webhook_events_reach_the_feed_once_in_commit_order(store: Arc<dyn Store>) {
    let endpoint = |id: &str| WebhookEndpoint {
        id: id.into(),
        url: "https://hooks.example.com/lc".into(),
        events: WebhookEventType::ALL.to_vec(),
        secret: "whsec_test".into(),
        created_at: Utc::now(),
    };
    // With no endpoint, nobody would hear of them: not kept.
    assert_eq!(
        commit_outbox(&store, "early", 0, &[1]).await,
        Commit::Applied
    );
    store.gather_outboxes().await.unwrap();
    assert!(store.feed(0, 100).await.unwrap().is_empty());
    store.insert_webhook(&endpoint("wh_1")).await.unwrap();
    assert_eq!(store.delivery_cursor("wh_1").await.unwrap().after, 0);
    assert_eq!(
        commit_outbox(&store, "acme", 0, &[1, 2]).await,
        Commit::Applied
    );
    assert_eq!(
        commit_outbox(&store, "rival", 0, &[1]).await,
        Commit::Applied
    );
    assert_eq!(
        commit_outbox(&store, "acme", 1, &[3]).await,
        Commit::Applied
    );
    // A commit that loses to another writes no event.
    assert_eq!(
        commit_outbox(&store, "acme", 1, &[9]).await,
        Commit::Conflict
    );
    store.gather_outboxes().await.unwrap();
    assert_eq!(store.gather_outboxes().await.unwrap(), 0, "moved once");
    let feed = store.feed(0, 100).await.unwrap();
    let ids: Vec<&str> = feed.iter().map(|e| e.event.id.as_str()).collect();
    let acme: Vec<&str> = ids.iter().copied().filter(|i| i.contains("acme")).collect();
    assert_eq!(acme, ["evt_acme_1", "evt_acme_2", "evt_acme_3"]);
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    let first = feed.iter().find(|e| e.event.id == "evt_acme_1").unwrap();
    assert_eq!(first.event, outbox_event("acme", 1));
    assert_eq!(store.feed(feed[1].seq, 1).await.unwrap(), [feed[2].clone()]);
    // An endpoint starts after the newest event.
    assert_eq!(store.feed_head().await.unwrap(), feed[3].seq);
    store.insert_webhook(&endpoint("wh_2")).await.unwrap();
    assert_eq!(
        store.delivery_cursor("wh_2").await.unwrap().after,
        feed[3].seq
    );

    let (first, second) = (delivery_of(&feed[0]), delivery_of(&feed[1]));
    for delivery in [&first, &second] {
        let cursor = DeliveryCursor {
            after: delivery.seq,
            retry: None,
        };
        let saved = store.save_delivery("wh_1", Some(&cursor), Some(delivery));
        assert!(saved.await.unwrap());
    }
    assert_eq!(
        store.delivery_cursor("wh_1").await.unwrap().after,
        feed[1].seq
    );
    assert_eq!(
        store.deliveries("wh_1", None, 1).await.unwrap(),
        std::slice::from_ref(&second)
    );
    let older = store
        .deliveries("wh_1", Some(second.seq), 10)
        .await
        .unwrap();
    assert_eq!(older, std::slice::from_ref(&first));
    let found = store.delivery("wh_1", &first.event_id).await.unwrap();
    assert_eq!(found, Some(first.clone()));
    assert_eq!(store.delivery("wh_2", &first.event_id).await.unwrap(), None);

    store.trim_feed(feed[1].seq).await.unwrap();
    assert_eq!(store.feed(0, 100).await.unwrap(), feed[2..].to_vec());

    assert!(store.delete_webhook("wh_1").await.unwrap());
    let cursor = DeliveryCursor::default();
    let saved = store.save_delivery("wh_1", Some(&cursor), Some(&first));
    assert!(
        !saved.await.unwrap(),
        "a deleted endpoint takes no delivery"
    );
    assert!(store.deliveries("wh_1", None, 10).await.unwrap().is_empty());

    let lease = std::time::Duration::from_secs(30);
    assert!(store.lease_deliveries("one", lease).await.unwrap());
    assert!(
        store.lease_deliveries("one", lease).await.unwrap(),
        "renewed"
    );
}

#[tokio::test]
async fn the_redis_store_lets_one_instance_deliver_at_a_time() {
    let (store, _server) = redis().await;
    let lease = std::time::Duration::from_millis(300);
    assert!(store.lease_deliveries("one", lease).await.unwrap());
    assert!(!store.lease_deliveries("two", lease).await.unwrap());
    assert!(
        store.lease_deliveries("one", lease).await.unwrap(),
        "renewed"
    );
    // A holder that stops renewing loses it when it runs out.
    let mut taken = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if store.lease_deliveries("two", lease).await.unwrap() {
            taken = true;
            break;
        }
    }
    assert!(taken, "the lease ran out");
    assert!(!store.lease_deliveries("one", lease).await.unwrap());
}

macro_rules! store_suite {
    ($store:ident, $make:expr) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn partners_are_unique_and_found_by_token_hash() {
                let (store, _server) = $make.await;
                super::partners_are_unique_and_found_by_token_hash(store).await;
            }

            #[tokio::test]
            async fn campaigns_are_unique_per_partner_and_in_the_catalog() {
                let (store, _server) = $make.await;
                super::campaigns_are_unique_per_partner_and_in_the_catalog(store).await;
            }

            #[tokio::test]
            async fn clicks_are_kept_by_id_and_by_visitor() {
                let (store, _server) = $make.await;
                super::clicks_are_kept_by_id_and_by_visitor(store).await;
            }

            #[tokio::test]
            async fn events_wait_parked_until_their_customer_is_claimed() {
                let (store, _server) = $make.await;
                super::events_wait_parked_until_their_customer_is_claimed(store).await;
            }

            #[tokio::test]
            async fn inboxes_hold_routed_events_until_a_commit_takes_them() {
                let (store, _server) = $make.await;
                super::inboxes_hold_routed_events_until_a_commit_takes_them(store).await;
            }

            #[tokio::test]
            async fn the_event_queue_hands_each_event_out_until_acknowledged() {
                let (store, _server) = $make.await;
                super::the_event_queue_hands_each_event_out_until_acknowledged(store).await;
            }

            #[tokio::test]
            async fn ledger_pages_count_down_and_conversion_cells_filter_by_day() {
                let (store, _server) = $make.await;
                super::ledger_pages_count_down_and_conversion_cells_filter_by_day(store).await;
            }

            #[tokio::test]
            async fn payouts_are_listed_by_status_and_by_partner() {
                let (store, _server) = $make.await;
                super::payouts_are_listed_by_status_and_by_partner(store).await;
            }

            #[tokio::test]
            async fn traffic_tallies_add_up_once_per_batch() {
                let (store, _server) = $make.await;
                super::traffic_tallies_add_up_once_per_batch(store).await;
            }

            #[tokio::test]
            async fn held_customers_are_listed_by_time_and_found_by_customer() {
                let (store, _server) = $make.await;
                super::held_customers_are_listed_by_time_and_found_by_customer(store).await;
            }

            #[tokio::test]
            async fn coupon_codes_are_unique_and_listed_by_partner() {
                let (store, _server) = $make.await;
                super::coupon_codes_are_unique_and_listed_by_partner(store).await;
            }

            #[tokio::test]
            async fn webhook_events_reach_the_feed_once_in_commit_order() {
                let (store, _server) = $make.await;
                super::webhook_events_reach_the_feed_once_in_commit_order(store).await;
            }

            #[tokio::test]
            async fn catalog_changes_list_only_what_changed_since() {
                let (store, _server) = $make.await;
                super::catalog_changes_list_only_what_changed_since(store).await;
            }

            #[tokio::test]
            async fn a_large_commit_writes_every_record_in_order() {
                let (store, _server) = $make.await;
                super::a_large_commit_writes_every_record_in_order(store).await;
            }

            #[tokio::test]
            async fn counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once() {
                let (store, _server) = $make.await;
                super::counters_group_by_day_campaign_and_term_and_a_rewrite_counts_once(store)
                    .await;
            }
        }
    };
}

const WINDOW: std::time::Duration = std::time::Duration::from_secs(120 * DAY as u64);

/// The embedded store on a fresh file, kept as long as the directory.
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("lastclick.db"), WINDOW).unwrap();
    (Arc::new(store), dir)
}

async fn redis() -> (Arc<dyn Store>, RedisServer) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), false, WINDOW)
        .await
        .unwrap();
    (Arc::new(store), server)
}

async fn cluster() -> (Arc<dyn Store>, RedisCluster) {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.urls(), true, WINDOW)
        .await
        .unwrap();
    (Arc::new(store), cluster)
}

store_suite!(sqlite_store, sqlite());
store_suite!(redis_store, redis());
store_suite!(redis_cluster_store, cluster());

/// The embedded store knows a batch by its last click id: the flusher's
/// retry of a batch that timed out (and was stored after all) adds
/// nothing, whether or not it holds the same click twice.
#[tokio::test]
async fn the_sqlite_store_counts_a_retried_batch_once() {
    let (store, _dir) = sqlite().await;
    let acme = PartnerId::parse("acme").unwrap();
    let old = click("acme", "spring", None, 1, t0());
    let new = click("acme", "spring", None, 2, t0() + 30);
    let batch = [new.clone(), old.clone(), new.clone()];
    store.record_clicks(&batch).await.unwrap();
    store.record_clicks(&batch).await.unwrap();
    let counts = store.click_counts(&acme, d(0), d(0)).await.unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].clicks, 2);
    assert_eq!(store.click(&new.click_id).await.unwrap(), Some(new));
    assert_eq!(store.click(&old.click_id).await.unwrap(), Some(old));
}

/// Counters are added up about once a second; a store dropped in between
/// (a SIGKILL: its memory is gone, its batches committed) finds the counts
/// of its last batches at the next start, and counts nothing twice.
#[tokio::test]
async fn the_sqlite_store_counts_every_stored_click_once_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    async fn counted(store: &SqliteStore) -> Vec<(String, u64)> {
        let acme = PartnerId::parse("acme").unwrap();
        let counts = store.click_counts(&acme, d(0), d(0)).await.unwrap();
        counts
            .iter()
            .map(|c| (c.cell.term.clone(), c.clicks))
            .collect()
    }
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    store
        .record_clicks(&[
            click("acme", "spring", Some("a"), 1, t0()),
            click("acme", "spring", Some("b"), 2, t0()),
        ])
        .await
        .unwrap();
    store.sync().await.unwrap(); // merged into the counters
    store
        .record_clicks(&[click("acme", "spring", Some("a"), 3, t0() + 1)])
        .await
        .unwrap();
    let want = vec![("a".to_owned(), 2), ("b".to_owned(), 1)];
    assert_eq!(counted(&store).await, want, "pending counts are read too");
    drop(store); // killed: the last batch's counts were never merged

    // The next `serve` takes over and adds them up.
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    store.take_over().unwrap();
    assert_eq!(counted(&store).await, want);
    store.sync().await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    store.take_over().unwrap();
    assert_eq!(counted(&store).await, want, "nothing counted twice");
}

/// `ingest` and `serve --check` open the file of a running `serve`: they
/// must leave its pending counts to it, or the counts are added twice.
#[tokio::test]
async fn opening_a_running_stores_file_adds_no_pending_count_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    let running = SqliteStore::open(&path, WINDOW).unwrap();
    running.take_over().unwrap();
    running
        .record_clicks(&[
            click("acme", "spring", None, 1, t0()),
            click("acme", "spring", None, 2, t0()),
        ])
        .await
        .unwrap();
    let other = SqliteStore::open(&path, WINDOW).unwrap();
    running.sync().await.unwrap();
    drop(other);
    let acme = PartnerId::parse("acme").unwrap();
    let counts = running.click_counts(&acme, d(0), d(0)).await.unwrap();
    assert_eq!(counts.iter().map(|c| c.clicks).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn the_sqlite_store_forgets_clicks_and_counters_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let window = std::time::Duration::from_secs(2 * DAY as u64);
    let store = SqliteStore::open(&dir.path().join("lastclick.db"), window).unwrap();
    let now = Utc::now().timestamp();
    let old = click("acme", "spring", None, 1, now - 3 * DAY);
    let recent = click("acme", "spring", None, 2, now - 3_600);
    // Records are stored by batch, and a batch goes once its newest click
    // is past the window.
    store
        .record_clicks(std::slice::from_ref(&old))
        .await
        .unwrap();
    store
        .record_clicks(std::slice::from_ref(&recent))
        .await
        .unwrap();
    // Past the window, a click is not answered even before expiry runs.
    assert_eq!(store.click(&old.click_id).await.unwrap(), None);
    assert_eq!(store.last_click(&VisitorId([1; 16])).await.unwrap(), None);
    let acme = PartnerId::parse("acme").unwrap();
    let range = (d(-30), Utc::now().date_naive());
    assert_eq!(
        store
            .click_counts(&acme, range.0, range.1)
            .await
            .unwrap()
            .len(),
        2
    );

    store.expire(now, usize::MAX).await.unwrap();
    let rows: i64 = rusqlite::Connection::open(dir.path().join("lastclick.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM click_batches JOIN click_bodies ON click_bodies.id = body",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1, "the old click's batch is gone");
    let visitor_rows: i64 = rusqlite::Connection::open(dir.path().join("lastclick.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM visitor_clicks", [], |row| row.get(0))
        .unwrap();
    assert_eq!(visitor_rows, 1, "the old click's visitor row is gone");
    assert!(store
        .visitor_clicks(&VisitorId([1; 16]), 20)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.click(&recent.click_id).await.unwrap(), Some(recent));
    assert!(store
        .last_click(&VisitorId([2; 16]))
        .await
        .unwrap()
        .is_some());
    let counts = store.click_counts(&acme, range.0, range.1).await.unwrap();
    assert_eq!(counts.len(), 1, "the old day's counters are gone");
}

#[tokio::test]
async fn a_restarted_sqlite_store_hands_out_at_once_what_a_killed_serve_had_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lastclick.db");
    let hour = std::time::Duration::from_secs(3600);
    let short = std::time::Duration::from_millis(20);
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    let event = payment_event("e1", "cus_1");
    store
        .enqueue_events(std::slice::from_ref(&event))
        .await
        .unwrap();
    assert_eq!(
        store
            .next_events("w", 10, short, hour)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
    assert!(store.lock_book(&pid("acme"), "w", hour).await.unwrap());
    drop(store); // killed: taken, never acknowledged; the book locked

    // What a worker has taken and locked is held in its process (the
    // database has one worker): the next one starts afresh.
    let store = SqliteStore::open(&path, WINDOW).unwrap();
    store.take_over().unwrap();
    let again = store.next_events("w2", 10, short, hour).await.unwrap();
    assert_eq!(
        again.events.iter().map(|d| &d.event).collect::<Vec<_>>(),
        vec![&event]
    );
    assert!(store.lock_book(&pid("acme"), "w2", hour).await.unwrap());
}

/// A queue entry that is not an event is handed out once as unreadable;
/// `dead_letter` keeps it, takes it off the queue, and it never comes
/// back, while the events around it are handed out as usual.
async fn an_unreadable_entry_goes_to_the_dead_letter(store: Arc<dyn Store>, inject: impl FnOnce()) {
    let (short, soon) = (
        std::time::Duration::from_millis(20),
        std::time::Duration::from_millis(10),
    );
    let good = payment_event("e1", "cus_1");
    inject();
    store
        .enqueue_events(std::slice::from_ref(&good))
        .await
        .unwrap();
    let taken = store.next_events("w", 10, short, soon).await.unwrap();
    assert_eq!(
        taken.events.iter().map(|d| &d.event).collect::<Vec<_>>(),
        vec![&good]
    );
    assert_eq!(taken.unreadable.len(), 1, "{taken:?}");
    assert_eq!(taken.unreadable[0].raw, "not an event");
    store.dead_letter(&taken.unreadable, 1_000).await.unwrap();
    let ids: Vec<String> = taken.events.iter().map(|d| d.delivery.clone()).collect();
    store.ack_events(&ids).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let again = store.next_events("w2", 10, short, soon).await.unwrap();
    assert_eq!(again, Default::default(), "nothing comes back");
    let stats = store.event_queue_stats().await.unwrap();
    assert_eq!((stats.waiting, stats.pending), (0, 0));
    let kept = store.unreadable_events(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].raw.as_str(), kept[0].at_ms),
        ("not an event", 1_000)
    );
    assert_eq!(kept[0].delivery, taken.unreadable[0].delivery);
}

/// An inbox entry that is not a routed event is read apart from the
/// events around it, in place, and kept in the dead letter on request;
/// the commit that takes the entries off counts it.
async fn an_unreadable_inbox_entry_is_read_apart(store: Arc<dyn Store>, inject: impl FnOnce()) {
    let acme = pid("acme");
    let item = |id: &str| InboxItem {
        event: payment_event(id, "cus_1"),
        referral: referral("acme"),
    };
    store.push_inbox(&acme, &[item("e1")]).await.unwrap();
    inject();
    store.push_inbox(&acme, &[item("e2")]).await.unwrap();
    let inbox = store.read_inbox(&acme, 10).await.unwrap();
    assert_eq!(inbox.items, vec![item("e1"), item("e2")]);
    assert_eq!(inbox.unreadable.len(), 1, "{inbox:?}");
    assert_eq!(inbox.unreadable[0].delivery, "inbox:acme");
    assert_eq!(inbox.unreadable[0].raw, "not an item");
    assert_eq!(inbox.entries(), 3);
    store
        .keep_unreadable(&inbox.unreadable, 2_000)
        .await
        .unwrap();
    let kept = store.unreadable_events(10).await.unwrap();
    assert_eq!(
        (kept.len(), kept[0].raw.as_str(), kept[0].at_ms),
        (1, "not an item", 2_000)
    );
    let changes = Changes {
        inbox_taken: inbox.entries(),
        ..Changes::default()
    };
    assert_eq!(
        store.commit_book(&acme, 0, &changes).await.unwrap(),
        Commit::Applied
    );
    assert!(store.read_inbox(&acme, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_sqlite_store_reads_an_unreadable_inbox_row_apart() {
    let (store, dir) = sqlite().await;
    let path = dir.path().join("lastclick.db");
    an_unreadable_inbox_entry_is_read_apart(store, || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO inbox (partner, item) VALUES ('acme', 'not an item')",
                [],
            )
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_redis_store_reads_an_unreadable_inbox_entry_apart() {
    let (store, server) = redis().await;
    an_unreadable_inbox_entry_is_read_apart(store, || {
        let reply =
            common::redis_server::command(server.port, "RPUSH lc:{p:acme}:inbox \"not an item\"")
                .unwrap();
        assert!(!reply.starts_with('-'), "{reply}");
    })
    .await;
}

#[tokio::test]
async fn the_sqlite_store_dead_letters_an_unreadable_queue_row() {
    let (store, dir) = sqlite().await;
    let path = dir.path().join("lastclick.db");
    an_unreadable_entry_goes_to_the_dead_letter(store, || {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO event_queue (event, queued_at) VALUES ('not an event', 0)",
                [],
            )
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_redis_store_dead_letters_an_unreadable_stream_entry() {
    let (store, server) = redis().await;
    an_unreadable_entry_goes_to_the_dead_letter(store, || {
        let reply = common::redis_server::command(
            server.port,
            "XADD lc:{events}:stream * e \"not an event\"",
        )
        .unwrap();
        assert!(!reply.starts_with('-'), "{reply}");
    })
    .await;
}
