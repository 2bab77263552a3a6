//! The `Store` trait and the records it keeps; `sqlite` (the embedded
//! store, on disk) and `redis` implement it.

pub mod record;
pub mod redis;
pub mod sketch;
pub mod sqlite;
mod webhooks;

pub use self::webhooks::WebhookStore;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::conversions::book::{
    BookRequest, BookView, Changes, ConversionCell, LedgerEntry, Payout, PayoutStatus,
};
use crate::conversions::customer::{ConversionCounts, Referral};
use crate::conversions::events::Event;
use crate::ids::{CampaignName, CampaignSlug, CouponCode, PartnerId, PayoutId};
use crate::ids::{ClickId, CustomerId, VisitorId};

/// Why a store call failed, by what the caller can do about it: the API
/// maps each to its answer in one place (`api/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The store did not answer, or not in time: the same call may
    /// succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record cannot be read: retrying will not help.
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// Others kept changing what this step read, through every retry.
    #[error("contended: {0}")]
    Contended(String),
}

impl StoreError {
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unavailable(e.into())
    }

    pub fn corrupt(key: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            key: key.into(),
            detail: detail.to_string(),
        }
    }
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

/// What the redirect cache is built from: the whole catalog, or the part
/// of it that changed since a version (`CatalogStore::catalog_changes`).
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
    pub term: Option<Arc<str>>,
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

/// Requests that were not clicks, tallied in one report cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficCell {
    pub partner: String,
    pub day: NaiveDate,
    pub campaign: String,
    /// Empty when the request carried no term.
    pub term: String,
    pub bots: u64,
    pub suspects: u64,
    pub overwrites_won: u64,
    pub overwrites_lost: u64,
}

/// Tallies written together, once, under their id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficBatch {
    pub id: [u8; 16],
    pub cells: Vec<TrafficCell>,
}

impl TrafficBatch {
    pub fn new(cells: Vec<TrafficCell>) -> Self {
        TrafficBatch {
            id: rand::random(),
            cells,
        }
    }
}

/// A cell's bot, suspect and overwrite tallies, as the report reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficCount {
    pub cell: CounterCell,
    pub bots: u64,
    pub suspects: u64,
    pub overwrites_won: u64,
    pub overwrites_lost: u64,
}

/// What `enqueue_events` did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Enqueued {
    pub accepted: usize,
    /// Events whose id was seen before (ever), or twice in the batch.
    pub duplicates: usize,
}

/// An event handed to a worker, acknowledged by `delivery` once applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub delivery: String,
    pub event: Event,
    /// When the event was queued, in unix milliseconds.
    pub queued_at_ms: i64,
}

/// What `next_events` hands a worker: the events, and the queue entries
/// that cannot be read as one (a broken producer, a hand-written entry),
/// which the worker moves to the dead letter (`dead_letter`) instead of
/// leaving them to come back forever.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taken {
    pub events: Vec<Delivery>,
    pub unreadable: Vec<Unreadable>,
}

/// The head of a partner's inbox as read: its routed events, oldest first,
/// and the entries among them that cannot be read as one, which the worker
/// moves to the dead letter (`keep_unreadable`) as it takes them off.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inbox {
    pub items: Vec<InboxItem>,
    pub unreadable: Vec<Unreadable>,
}

impl Inbox {
    /// Sorts the entries read off `partner`'s inbox (JSON, oldest first).
    fn decode(partner: &str, entries: &[String]) -> Inbox {
        let mut inbox = Inbox::default();
        for raw in entries {
            match serde_json::from_str(raw) {
                Ok(item) => inbox.items.push(item),
                Err(e) => inbox.unreadable.push(Unreadable::new(
                    format!("inbox:{partner}"),
                    raw,
                    e.to_string(),
                )),
            }
        }
        inbox
    }

    /// How many entries were read: what the commit takes off the inbox.
    pub fn entries(&self) -> usize {
        self.items.len() + self.unreadable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries() == 0
    }
}

/// A queue entry that is not an event, as the dead letter keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    /// The entry's id in the queue, or `inbox:<partner>` for an entry of
    /// a partner's inbox.
    pub delivery: String,
    /// What the entry held, cut to `UNREADABLE_KEPT_BYTES`.
    pub raw: String,
    /// Why it is not an event.
    pub reason: String,
    /// When it was dead-lettered, unix milliseconds (0 until then).
    pub at_ms: i64,
}

/// Longest part of an unreadable entry the dead letter keeps.
pub const UNREADABLE_KEPT_BYTES: usize = 4096;
/// Most unreadable entries the dead letter keeps; older ones go.
pub const UNREADABLE_KEPT: usize = 10_000;

impl Unreadable {
    pub fn new(delivery: String, raw: &str, reason: String) -> Self {
        let mut end = raw.len().min(UNREADABLE_KEPT_BYTES);
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        Unreadable {
            delivery,
            raw: raw[..end].to_owned(),
            reason,
            at_ms: 0,
        }
    }
}

/// Where a customer's event goes: to the partner that claimed the
/// customer, or into the customer's parked events until its signup comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The claim: a partner's referral, or `None` for a customer that
    /// signed up without a valid click.
    Claimed(Option<Referral>),
    Parked,
}

/// An event routed to its customer's partner, waiting in the partner's
/// inbox for the book step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxItem {
    pub event: Event,
    pub referral: Referral,
}

/// An event kept aside: parked until its customer's signup comes, or dead
/// (`worker.park_for` passed without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub event: Event,
    /// When it was parked, unix ms.
    pub parked_at: i64,
}

/// The event queue at a glance, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Queued, not yet taken by any worker.
    pub waiting: u64,
    /// Taken by a worker, not yet acknowledged.
    pub pending: u64,
    /// Routed to a partner, waiting in its inbox for the book step.
    pub routed: u64,
}

/// The conversion cell stored under `key`, or what is wrong with the key.
fn cell_of_key(key: &str) -> Result<ConversionCell, StoreError> {
    ConversionCell::parse_key(key).ok_or_else(|| StoreError::corrupt("conversion cell", key))
}

/// The partner id stored as `key`, or what is wrong with it.
fn partner_of_key(key: &str) -> Result<PartnerId, StoreError> {
    PartnerId::parse(key).map_err(|e| StoreError::corrupt("partner id", e))
}

/// How many of a visitor's latest clicks the stores keep for the
/// attribution explanation.
pub const MAX_VISITOR_CLICKS: usize = 20;

/// How `commit_book` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Applied,
    /// The book moved since it was loaded: load it again and retry.
    Conflict,
}

/// Where partners, campaigns, clicks, events and books live: the sum of
/// the store's concerns below, one trait each, so that each
/// implementation keeps one file per concern.
///
/// Behaviour is the same for every implementation and is tested once for all
/// (`tests/store.rs`). Nothing on the redirect path calls it: redirects read
/// the in-process cache and queue their clicks. Callers bring the concern
/// traits into scope with `use crate::store::prelude::*`.
#[async_trait]
pub trait Store:
    CatalogStore
    + ClickStore
    + EventQueue
    + RoutingStore
    + BookStore
    + PayoutStore
    + HoldStore
    + CouponStore
    + WebhookStore
    + Send
    + Sync
    + 'static
{
    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The store traits, to call a `Store`'s methods.
pub mod prelude {
    pub use super::{
        BookStore, CatalogStore, ClickStore, CouponStore, EventQueue, HoldStore, PayoutStore,
        RoutingStore, Store, WebhookStore,
    };
}

/// Partners and campaigns: what the redirect's cache is loaded from.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Rises on every partner or campaign change, so caches reload only then.
    async fn catalog_version(&self) -> Result<u64, StoreError>;
    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError>;
    /// The partners and campaigns changed after catalog version `since`
    /// (each as it is now), and the version they bring a reader to: what a
    /// route cache at `since` applies instead of reloading everything.
    /// Partners and campaigns are never deleted, so changes are upserts.
    async fn catalog_changes(&self, since: u64) -> Result<CatalogSnapshot, StoreError>;

    /// Fails with `Conflict` when the id is taken.
    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError>;
    /// Fails with `NotFound` when the partner does not exist.
    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError>;
    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError>;
    /// Partners by id, those after `after` when given.
    async fn partners(
        &self,
        after: Option<&PartnerId>,
        limit: usize,
    ) -> Result<Vec<Partner>, StoreError>;
    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError>;

    /// Fails with `Conflict` when the partner already has the slug.
    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError>;
    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError>;
}

/// Click records, each visitor's last click and the report's click counters.
#[async_trait]
pub trait ClickStore: Send + Sync {
    /// Stores click records, each visitor's last click (the latest by click
    /// time, whatever order clicks arrive in) and report counters. Sending
    /// the same batch again, as the flusher does when an outcome is unknown,
    /// counts nothing twice.
    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError>;
    /// Writes what `record_clicks` keeps back for a while (the embedded
    /// store's unique-visitor sketches); the flusher calls it on shutdown.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError>;
    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError>;
    /// The visitor's latest clicks within the window, newest first: at
    /// most `limit`, and never more than [`MAX_VISITOR_CLICKS`], all a
    /// visitor's history holds.
    async fn visitor_clicks(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Click>, StoreError>;

    /// Adds a batch of bot and suspect tallies to the report's cells.
    /// Sending the same batch again (same id) adds nothing.
    async fn add_traffic(&self, batch: &TrafficBatch) -> Result<(), StoreError>;
    /// `partner`'s bot and suspect tallies from `from` to `to` inclusive.
    async fn traffic_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TrafficCount>, StoreError>;

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

/// The event queue: what the API accepted, until a worker routed it, and
/// the dead letter for what no worker can read.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Queues events for the worker. An id seen before, ever, is a
    /// duplicate and is not queued again.
    async fn enqueue_events(&self, events: &[Event]) -> Result<Enqueued, StoreError>;
    /// Up to `max` events for `consumer`: new ones, and ones another
    /// consumer took but did not acknowledge for `reclaim_after`. Waits up
    /// to `wait` when there are none.
    async fn next_events(
        &self,
        consumer: &str,
        max: usize,
        wait: std::time::Duration,
        reclaim_after: std::time::Duration,
    ) -> Result<Taken, StoreError>;
    async fn ack_events(&self, deliveries: &[String]) -> Result<(), StoreError>;
    /// Keeps `entries` (as `next_events` answered them) in the dead letter
    /// and takes them off the queue, in one step, each stamped `now_ms`.
    async fn dead_letter(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError>;
    /// Keeps `entries` that are on no queue (a partner's inbox's) in the
    /// dead letter, each stamped `now_ms`.
    async fn keep_unreadable(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError>;
    /// Up to `limit` dead-lettered entries, oldest first.
    async fn unreadable_events(&self, limit: usize) -> Result<Vec<Unreadable>, StoreError>;
    async fn event_queue_stats(&self) -> Result<QueueStats, StoreError>;
}

/// Customers: who claimed each, and the events parked until a claim.
#[async_trait]
pub trait RoutingStore: Send + Sync {
    /// How many customers a worker routes at once: enough calls in flight
    /// to hide a networked store's round trips, few enough not to queue
    /// on an embedded store's one writer.
    fn routing_concurrency(&self) -> usize {
        16
    }

    /// Where a customer's payment, refund or cancel goes: the claim when
    /// the customer was claimed, else the event is parked with the
    /// customer, atomically, so that a concurrent claim sees it.
    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError>;
    /// Claims the customer for `referral` (or for nobody) unless it was
    /// claimed before; answers the claim that holds and the events parked
    /// for the customer, which the claimant applies.
    async fn claim_customer(
        &self,
        customer: &CustomerId,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError>;
    /// The customer's claim: `None` when its signup was never routed,
    /// `Some(None)` when it signed up without a valid click.
    async fn claim(&self, customer: &CustomerId) -> Result<Option<Option<Referral>>, StoreError>;
    /// Forgets the customer's parked events (`parked`, as the claim
    /// answered them): the claimant's book has them.
    async fn unpark(&self, customer: &CustomerId, parked: &[Event]) -> Result<(), StoreError>;
    /// Moves the events of customers parked before `before_ms` and still
    /// not claimed to the dead letter; answers how many moved.
    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// Up to `limit` parked (or, with `dead`, dead) events, oldest first.
    async fn parked_events(&self, dead: bool, limit: usize)
        -> Result<Vec<ParkedEvent>, StoreError>;
    /// How many events are parked.
    async fn parked_count(&self) -> Result<u64, StoreError>;
}

/// Partners' books: inboxes, the book step's commit, conversion cells and
/// the ledger.
#[async_trait]
pub trait BookStore: Send + Sync {
    /// What `request` asks of the partner's book.
    async fn load_book(
        &self,
        partner: &PartnerId,
        request: &BookRequest,
    ) -> Result<BookView, StoreError>;
    /// Appends routed events to the partner's inbox, then marks the
    /// partner ready. Durable once answered.
    async fn push_inbox(&self, partner: &PartnerId, items: &[InboxItem]) -> Result<(), StoreError>;
    /// Up to `max` partners whose inbox may hold events.
    async fn ready_partners(&self, max: usize) -> Result<Vec<PartnerId>, StoreError>;
    /// The first `max` entries of the partner's inbox, oldest first.
    async fn read_inbox(&self, partner: &PartnerId, max: usize) -> Result<Inbox, StoreError>;
    /// Marks the partner ready if its inbox holds events, else not.
    async fn settle_ready(&self, partner: &PartnerId) -> Result<(), StoreError>;

    /// Takes the partner's book for `holder` for up to `ttl` unless another
    /// holder has it: one worker at a time works on a book, so none
    /// computes a batch only to find the book moved. Answers whether it was
    /// taken. Commits stay guarded by the version all the same.
    async fn lock_book(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Gives the book back, if `holder` still has it.
    async fn unlock_book(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError>;
    /// Applies `changes` (with the ids they applied, and taking the first
    /// `changes.inbox_taken` events off the inbox), all or nothing, if the
    /// book is still at `version`.
    async fn commit_book(
        &self,
        partner: &PartnerId,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError>;
    /// Every report cell of the partner's conversions whose day is from
    /// `from` to `to`.
    async fn conversion_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(ConversionCell, ConversionCounts)>, StoreError>;
    /// Ledger entries newest first, those before `before` (a `seq`) when
    /// given.
    async fn ledger(
        &self,
        partner: &PartnerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError>;
}

/// Payouts across partners. A payout's record lives with its partner's
/// book and is written by the book step that changes it (`commit_book`);
/// these find it by id and list it by status.
#[async_trait]
pub trait PayoutStore: Send + Sync {
    /// Makes `payout` findable by id and listed under its status before
    /// the commit that writes it, so that a committed payout is always
    /// found. An index entry whose commit never happened is skipped.
    async fn index_payout(&self, payout: &Payout) -> Result<(), StoreError>;
    /// After the commit that moved a payout out of `old`: drops it from
    /// that status's listing (an entry left behind is skipped).
    async fn unindex_payout(&self, id: &PayoutId, old: PayoutStatus) -> Result<(), StoreError>;
    /// The partner a payout belongs to.
    async fn payout_partner(&self, id: &PayoutId) -> Result<Option<PartnerId>, StoreError>;
    /// Every partner's payouts in `status` (all when `None`), oldest first,
    /// those after `after` when given.
    async fn payouts(
        &self,
        status: Option<PayoutStatus>,
        after: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError>;
    /// The partner's payouts, newest first, those before `before` when
    /// given.
    async fn partner_payouts(
        &self,
        partner: &PartnerId,
        before: Option<&PayoutId>,
        limit: usize,
    ) -> Result<Vec<Payout>, StoreError>;
}

/// A customer whose commissions were held, as the cross-partner listing
/// finds it: the hold itself is on the customer's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCustomer {
    pub customer: String,
    pub partner: PartnerId,
    /// The signup's time, unix ms: the listing's order.
    pub held_at: i64,
}

impl HeldCustomer {
    /// Its place in the listing, as a cursor: the signup's ms (15 digits)
    /// and the customer id, which sort as the listing does.
    pub fn cursor(&self) -> String {
        hold_cursor(self.held_at, &self.customer)
    }
}

/// The cursor of a hold listed at `held_at` for `customer`.
pub fn hold_cursor(held_at: i64, customer: &str) -> String {
    format!("{:015}.{customer}", held_at.max(0))
}

/// Every customer ever held, across partners. `commit_book` indexes a
/// customer when it writes its record with a hold (in the same
/// transaction in SQLite; just before the commit in Redis, where an entry
/// whose commit never happened is skipped by its reader).
#[async_trait]
pub trait HoldStore: Send + Sync {
    /// The partner whose book holds the customer, if it was ever held.
    async fn hold_partner(&self, customer: &CustomerId) -> Result<Option<PartnerId>, StoreError>;
    /// Held customers oldest first, those after `after` (a cursor) when
    /// given.
    async fn holds(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HeldCustomer>, StoreError>;
}

/// A coupon code and the partner it credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub code: CouponCode,
    pub partner: PartnerId,
    pub created_at: DateTime<Utc>,
}

/// Coupon codes, unique across partners.
#[async_trait]
pub trait CouponStore: Send + Sync {
    /// Registers `coupon`; `Conflict` when any partner has its code.
    async fn insert_coupon(&self, coupon: &Coupon) -> Result<(), StoreError>;
    /// The partner's codes, by code.
    async fn coupons(&self, partner: &PartnerId) -> Result<Vec<Coupon>, StoreError>;
    async fn coupon(&self, code: &CouponCode) -> Result<Option<Coupon>, StoreError>;
}
