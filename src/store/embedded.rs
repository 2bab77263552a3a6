//! The embedded store: everything in one process's memory, for a single
//! instance on a bare machine and for tests.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use tokio::sync::Notify;

use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, Commit, CounterCell, Delivery, Enqueued,
    ParkedEvent, Partner, QueueStats, Route, Store, StoreError,
};
use crate::book::{
    parse_conversion_cell, Book, BookRequest, BookView, Changes, History, HistoryChange,
    LedgerEntry,
};
use crate::cookie::{ClickId, IdHashing, VisitorId};
use crate::customer::{ConversionCounts, Customer, Referral};
use crate::events::Event;
use crate::ids::{CampaignSlug, PartnerId};

/// In-process store. Std `Mutex`es: every critical section is a few map
/// operations and none spans an `.await`. Click data, which grows with
/// traffic, is sharded by id under locks of its own: growing one shard's
/// map (a rehash) then holds up a sixty-fourth of the clicks for a
/// sixty-fourth of the time, and never the catalog, the events or the books.
pub struct EmbeddedStore {
    inner: Mutex<Inner>,
    click_shards: Box<[Mutex<ClickShard>]>,
    counters: Mutex<Counters>,
    window: Duration,
    /// Wakes a worker waiting for events.
    events_queued: Notify,
}

#[derive(Default)]
struct Inner {
    version: u64,
    partners: BTreeMap<PartnerId, Partner>,
    tokens: HashMap<String, PartnerId>,
    campaigns: BTreeMap<(PartnerId, CampaignSlug), Campaign>,
    events: EventQueue,
    claims: HashMap<String, Option<Referral>>,
    /// Events of customers not claimed yet, by customer.
    parked: HashMap<String, Vec<ParkedEvent>>,
    /// Parked events whose customer never signed up within
    /// `worker.park_for`.
    dead: Vec<ParkedEvent>,
    books: HashMap<String, PartnerBook>,
    /// Books taken by a worker: holder and until when.
    book_locks: HashMap<String, (String, Instant)>,
    /// Partners whose inbox may hold events.
    ready: std::collections::BTreeSet<String>,
}

const CLICK_SHARDS: usize = 64;
/// Clicks written between two yields to the runtime: some tens of
/// microseconds of work.
const RECORD_SLICE: usize = 64;

/// The click records and visitors' latest clicks whose ids fall in one
/// shard.
#[derive(Default)]
struct ClickShard {
    clicks: HashMap<ClickId, Click, IdHashing>,
    /// Each visitor's latest click and its time.
    last_clicks: HashMap<VisitorId, (ClickId, i64), IdHashing>,
}

/// Click counters per partner, then per cell.
type Counters = HashMap<Arc<str>, HashMap<CellKey, Counter>>;

/// The shard of an id: its last byte, as the map hashes its first eight.
fn shard_of(id: &[u8; 16]) -> usize {
    id[15] as usize % CLICK_SHARDS
}

#[derive(Default)]
struct EventQueue {
    /// Every event id ever queued: ids are idempotency keys forever.
    seen: HashSet<String>,
    /// Queued events with their queue time (unix ms).
    ready: VecDeque<(Event, i64)>,
    /// Taken but not acknowledged: delivery id → (event, queue time, when
    /// taken).
    pending: BTreeMap<u64, (Event, i64, Instant)>,
    next_delivery: u64,
}

#[derive(Default)]
struct PartnerBook {
    book: Book,
    version: u64,
    customers: HashMap<String, Customer>,
    ledger: Vec<LedgerEntry>,
    conversions: BTreeMap<String, ConversionCounts>,
    /// The history as stored: members and their scores (ms), like
    /// Redis's sorted set.
    history: HashMap<String, i64>,
    /// Events routed to the partner, waiting for the book step.
    inbox: VecDeque<super::InboxItem>,
}

/// A counter cell keyed by the click's own `Arc`s, so counting a click
/// allocates nothing and compares pointers before bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CellKey {
    day: NaiveDate,
    campaign: Arc<str>,
    term: Option<Arc<str>>,
}

impl CellKey {
    fn of(click: &Click) -> Self {
        CellKey {
            day: click.day(),
            campaign: Arc::clone(&click.campaign),
            term: click.term.clone().filter(|t| !t.is_empty()),
        }
    }

    fn from_cell(cell: &CounterCell) -> Self {
        CellKey {
            day: cell.day,
            campaign: cell.campaign.as_str().into(),
            term: (!cell.term.is_empty()).then(|| cell.term.as_str().into()),
        }
    }

    fn to_cell(&self) -> CounterCell {
        CounterCell {
            day: self.day,
            campaign: self.campaign.to_string(),
            term: self.term.as_deref().unwrap_or("").to_owned(),
        }
    }
}

/// Exact distinct visitors: memory grows with visitors per cell, which one
/// machine's worth of traffic over the window affords.
#[derive(Default)]
struct Counter {
    clicks: u64,
    visitors: HashSet<VisitorId, IdHashing>,
}

impl EmbeddedStore {
    /// Click records and counters are kept for `window` (attribution.window).
    pub fn new(window: Duration) -> Self {
        EmbeddedStore {
            inner: Mutex::new(Inner::default()),
            click_shards: (0..CLICK_SHARDS).map(|_| Mutex::default()).collect(),
            counters: Mutex::default(),
            window,
            events_queued: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        relock(&self.inner)
    }

    fn shard(&self, id: &[u8; 16]) -> std::sync::MutexGuard<'_, ClickShard> {
        relock(&self.click_shards[shard_of(id)])
    }

    fn record_clicks_now(&self, clicks: &[Click]) {
        for click in clicks {
            // A click written twice (a retried batch) counts once.
            let new = self
                .shard(&click.click_id.0)
                .clicks
                .insert(click.click_id, click.clone())
                .is_none();
            if !new {
                continue;
            }
            // Last click wins by click time, whatever order clicks arrive in.
            self.shard(&click.visitor_id.0)
                .last_clicks
                .entry(click.visitor_id)
                .and_modify(|latest| {
                    if latest.1 <= click.at {
                        *latest = (click.click_id, click.at);
                    }
                })
                .or_insert((click.click_id, click.at));
            let mut counters = relock(&self.counters);
            let cells = match counters.get_mut(&*click.partner) {
                Some(cells) => cells,
                None => counters.entry(Arc::clone(&click.partner)).or_default(),
            };
            let counter = cells.entry(CellKey::of(click)).or_default();
            counter.clicks += 1;
            counter.visitors.insert(click.visitor_id);
        }
    }

    /// Drops click records and counters older than the window.
    pub fn expire(&self, now_unix: i64) {
        for shard in 0..CLICK_SHARDS {
            self.expire_shard(shard, now_unix);
        }
        self.expire_counters(now_unix);
    }

    /// The same, one shard at a time, letting redirects run in between.
    pub async fn expire_gradually(&self, now_unix: i64) {
        for shard in 0..CLICK_SHARDS {
            self.expire_shard(shard, now_unix);
            tokio::task::yield_now().await;
        }
        self.expire_counters(now_unix);
    }

    fn horizon(&self, now_unix: i64) -> i64 {
        now_unix - self.window.as_secs() as i64
    }

    fn expire_shard(&self, shard: usize, now_unix: i64) {
        let horizon = self.horizon(now_unix);
        let mut shard = relock(&self.click_shards[shard]);
        shard.clicks.retain(|_, c| c.at >= horizon);
        shard.last_clicks.retain(|_, (_, at)| *at >= horizon);
    }

    fn expire_counters(&self, now_unix: i64) {
        let oldest_day = chrono::DateTime::from_timestamp(self.horizon(now_unix), 0)
            .unwrap_or_default()
            .date_naive();
        relock(&self.counters).retain(|_, cells| {
            cells.retain(|cell, _| cell.day >= oldest_day);
            !cells.is_empty()
        });
    }
}

/// A panic while holding a lock leaves plain maps behind, still consistent
/// entry by entry, so a poisoned lock is taken over.
fn relock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
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
        // Redirects share this thread: a batch is written a slice at a time,
        // letting them run in between, so none waits behind a whole batch.
        for slice in clicks.chunks(RECORD_SLICE) {
            self.record_clicks_now(slice);
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        Ok(self.shard(&id.0).clicks.get(id).cloned())
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        let latest = self.shard(&visitor.0).last_clicks.get(visitor).copied();
        Ok(latest.and_then(|(id, _)| self.shard(&id.0).clicks.get(&id).cloned()))
    }

    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError> {
        let counters = relock(&self.counters);
        let Some(cells) = counters.get(partner.as_str()) else {
            return Ok(Vec::new());
        };
        let mut counts: Vec<ClickCount> = cells
            .iter()
            .filter(|(cell, _)| cell.day >= from && cell.day <= to)
            .map(|(cell, counter)| ClickCount {
                cell: cell.to_cell(),
                clicks: counter.clicks,
            })
            .collect();
        counts.sort_unstable_by(|a, b| a.cell.cmp(&b.cell));
        Ok(counts)
    }

    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError> {
        let counters = relock(&self.counters);
        let Some(counters) = counters.get(partner.as_str()) else {
            return Ok(0);
        };
        let mut union: HashSet<VisitorId, IdHashing> = HashSet::default();
        for cell in cells {
            if let Some(counter) = counters.get(&CellKey::from_cell(cell)) {
                union.extend(counter.visitors.iter().copied());
            }
        }
        Ok(union.len() as u64)
    }

    async fn enqueue_events(&self, events: &[Event]) -> Result<Enqueued, StoreError> {
        let mut enqueued = Enqueued::default();
        {
            let mut inner = self.lock();
            let now_ms = Utc::now().timestamp_millis();
            for event in events {
                if inner.events.seen.insert(event.id.clone()) {
                    inner.events.ready.push_back((event.clone(), now_ms));
                    enqueued.accepted += 1;
                } else {
                    enqueued.duplicates += 1;
                }
            }
        }
        self.events_queued.notify_waiters();
        Ok(enqueued)
    }

    async fn next_events(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let queued = self.events_queued.notified();
            let deliveries = self.lock().events.take(max, reclaim_after);
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if tokio::time::timeout_at(deadline, queued).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack_events(&self, deliveries: &[String]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for delivery in deliveries {
            if let Ok(id) = delivery.parse::<u64>() {
                inner.events.pending.remove(&id);
            }
        }
        Ok(())
    }

    async fn event_queue_stats(&self) -> Result<QueueStats, StoreError> {
        let inner = self.lock();
        Ok(QueueStats {
            waiting: inner.events.ready.len() as u64,
            pending: inner.events.pending.len() as u64,
            routed: inner.books.values().map(|b| b.inbox.len() as u64).sum(),
        })
    }

    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError> {
        // A worker step is a point where other tasks (and, in tests, a
        // simulated crash) may come in, as with a networked store.
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        if let Some(claim) = inner.claims.get(&event.customer) {
            return Ok(Route::Claimed(claim.clone()));
        }
        inner
            .parked
            .entry(event.customer.clone())
            .or_default()
            .push(ParkedEvent {
                event: event.clone(),
                parked_at: now_ms,
            });
        Ok(Route::Parked)
    }

    async fn claim_customer(
        &self,
        customer: &str,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError> {
        // A worker step is a point where other tasks (and, in tests, a
        // simulated crash) may come in, as with a networked store.
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        let claim = inner
            .claims
            .entry(customer.to_owned())
            .or_insert_with(|| referral.cloned())
            .clone();
        let parked = inner
            .parked
            .get(customer)
            .map(|p| p.iter().map(|p| p.event.clone()).collect())
            .unwrap_or_default();
        Ok((claim, parked))
    }

    async fn unpark(&self, customer: &str, _parked: &[Event]) -> Result<(), StoreError> {
        self.lock().parked.remove(customer);
        Ok(())
    }

    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        // A claimed customer's events are its claimant's, which forgets
        // them once they are in the partner's inbox.
        let expired: Vec<String> = inner
            .parked
            .iter()
            .filter(|(customer, events)| {
                events.first().is_some_and(|e| e.parked_at < before_ms)
                    && !inner.claims.contains_key(*customer)
            })
            .map(|(customer, _)| customer.clone())
            .collect();
        let mut moved = 0;
        for customer in expired {
            let events = inner.parked.remove(&customer).unwrap_or_default();
            moved += events.len();
            inner.dead.extend(events);
        }
        Ok(moved)
    }

    async fn parked_events(
        &self,
        dead: bool,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let inner = self.lock();
        let mut events: Vec<ParkedEvent> = if dead {
            inner.dead.clone()
        } else {
            inner.parked.values().flatten().cloned().collect()
        };
        events.sort_by(|a, b| (a.parked_at, &a.event.id).cmp(&(b.parked_at, &b.event.id)));
        events.truncate(limit);
        Ok(events)
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().parked.values().map(Vec::len).sum::<usize>() as u64)
    }

    async fn load_book(
        &self,
        partner: &str,
        request: &BookRequest,
    ) -> Result<BookView, StoreError> {
        // A worker step is a point where other tasks (and, in tests, a
        // simulated crash) may come in, as with a networked store.
        tokio::task::yield_now().await;
        let inner = self.lock();
        let Some(entry) = inner.books.get(partner) else {
            return Ok(BookView {
                history: request.history_from.map(|from| History {
                    from,
                    ..History::default()
                }),
                ..BookView::default()
            });
        };
        Ok(BookView {
            book: entry.book.clone(),
            version: entry.version,
            customers: request
                .customers
                .iter()
                .filter_map(|c| Some((c.clone(), entry.customers.get(c)?.clone())))
                .collect(),
            cells: request
                .cells
                .iter()
                .filter_map(|c| Some((c.clone(), entry.conversions.get(c)?.clone())))
                .collect(),
            history: request.history_from.map(|from| {
                History::from_members(
                    from,
                    entry
                        .history
                        .iter()
                        .filter(|(_, at)| **at >= from)
                        .map(|(member, at)| (member.as_str(), *at)),
                )
            }),
        })
    }

    async fn push_inbox(
        &self,
        partner: &str,
        items: &[super::InboxItem],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let book = inner.books.entry(partner.to_owned()).or_default();
        book.inbox.extend(items.iter().cloned());
        inner.ready.insert(partner.to_owned());
        Ok(())
    }

    async fn ready_partners(&self, max: usize) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().ready.iter().take(max).cloned().collect())
    }

    async fn read_inbox(
        &self,
        partner: &str,
        max: usize,
    ) -> Result<Vec<super::InboxItem>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .books
            .get(partner)
            .map(|b| b.inbox.iter().take(max).cloned().collect())
            .unwrap_or_default())
    }

    async fn settle_ready(&self, partner: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let waiting = inner
            .books
            .get(partner)
            .is_some_and(|b| !b.inbox.is_empty());
        if waiting {
            inner.ready.insert(partner.to_owned());
        } else {
            inner.ready.remove(partner);
        }
        Ok(())
    }

    async fn lock_book(
        &self,
        partner: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.book_locks.get(partner) {
            // Taken is taken, by another worker or by the same one, as
            // with Redis's `SET NX`.
            Some((_, until)) if *until > now => Ok(false),
            _ => {
                inner
                    .book_locks
                    .insert(partner.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn unlock_book(&self, partner: &str, holder: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner
            .book_locks
            .get(partner)
            .is_some_and(|(h, _)| h == holder)
        {
            inner.book_locks.remove(partner);
        }
        Ok(())
    }

    async fn commit_book(
        &self,
        partner: &str,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError> {
        // A worker step is a point where other tasks (and, in tests, a
        // simulated crash) may come in, as with a networked store.
        tokio::task::yield_now().await;
        let mut inner = self.lock();
        let entry = inner.books.entry(partner.to_owned()).or_default();
        if entry.version != version {
            return Ok(Commit::Conflict);
        }
        entry.book = changes.book.clone();
        for customer in &changes.customers {
            entry
                .customers
                .insert(customer.id.clone(), customer.clone());
        }
        for (cell, counts) in &changes.cells {
            entry.conversions.insert(cell.clone(), counts.clone());
        }
        for change in &changes.history {
            match change {
                HistoryChange::Add(member, at) => entry.history.insert(member.clone(), *at),
                HistoryChange::Remove(member) => entry.history.remove(member),
            };
        }
        entry.ledger.extend(changes.entries.iter().cloned());
        let taken = changes.inbox_taken.min(entry.inbox.len());
        entry.inbox.drain(..taken);
        entry.version += 1;
        Ok(Commit::Applied)
    }

    async fn conversion_counts(
        &self,
        partner: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, ConversionCounts)>, StoreError> {
        let inner = self.lock();
        let Some(entry) = inner.books.get(partner) else {
            return Ok(Vec::new());
        };
        Ok(entry
            .conversions
            .iter()
            .filter(|(cell, _)| {
                parse_conversion_cell(cell).is_some_and(|(day, ..)| day >= from && day <= to)
            })
            .map(|(cell, counts)| (cell.clone(), counts.clone()))
            .collect())
    }

    async fn ledger(
        &self,
        partner: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let inner = self.lock();
        let Some(entry) = inner.books.get(partner) else {
            return Ok(Vec::new());
        };
        Ok(entry
            .ledger
            .iter()
            .rev()
            .filter(|e| before.is_none_or(|b| e.seq < b))
            .take(limit)
            .cloned()
            .collect())
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
                Some(store) => store.expire_gradually(Utc::now().timestamp()).await,
                None => return,
            }
        }
    });
}

impl EventQueue {
    /// Events left unacknowledged for `reclaim_after` first, then new ones.
    fn take(&mut self, max: usize, reclaim_after: Duration) -> Vec<Delivery> {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        for (id, (event, queued_at_ms, taken)) in self.pending.iter_mut() {
            if deliveries.len() == max {
                return deliveries;
            }
            if now.duration_since(*taken) >= reclaim_after {
                *taken = now;
                deliveries.push(Delivery {
                    delivery: id.to_string(),
                    event: event.clone(),
                    queued_at_ms: *queued_at_ms,
                });
            }
        }
        while deliveries.len() < max {
            let Some((event, queued_at_ms)) = self.ready.pop_front() else {
                break;
            };
            self.next_delivery += 1;
            self.pending
                .insert(self.next_delivery, (event.clone(), queued_at_ms, now));
            deliveries.push(Delivery {
                delivery: self.next_delivery.to_string(),
                event,
                queued_at_ms,
            });
        }
        deliveries
    }
}
