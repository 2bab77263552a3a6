//! The worker: takes conversion events from the store's queue, resolves
//! signups to clicks and routes each event to its customer's partner (or
//! parks it until the signup comes), then applies each partner's routed
//! events to its book in one atomic step (see `book` for what they change).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::config::Config;
use crate::conversions::book::{self, Applied, Changes, Effect, Incoming, Rules};
use crate::conversions::customer::{EntryKind, FoundBy, FoundClick, Referral};
use crate::conversions::events::{AttributionRef, Event, EventKind};
use crate::conversions::step::{self, Computed, StepError};
use crate::edge::cookie::CookieSigner;
use crate::ids::PartnerId;
use crate::ids::{ClickId, CouponCode, CustomerId, VisitorId, COUPON_CAMPAIGN};
use crate::metrics::Metrics;
use crate::store::prelude::*;
use crate::store::{Click, Delivery, Inbox, InboxItem, Route, StoreError, Unreadable};

/// Events taken from the queue at once. A batch's events reach each
/// partner's book together, and a book step costs about the same whether it
/// applies ten events or a few hundred (reading and rewriting the book, the
/// commit): 2,000 rather than 500 applied 25-40 % more events a second in
/// both stores (`loadtest/events`). A worker that dies routes the batch
/// again, to the same result.
mod books;
mod routing;

const BATCH: usize = 2000;
/// How long a worker waits for events before it looks again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How soon a worker looks again at ready books another worker held.
const SHARE_WAIT: Duration = Duration::from_millis(5);
/// Commit attempts against a book that other workers keep moving.
const MAX_ATTEMPTS: usize = 1000;
/// Partners handled at once by the book step (and inboxes pushed at once
/// by the routing step); customers are routed `Store::routing_concurrency`
/// at once.
const CONCURRENT: usize = 16;
/// A signup this recent whose click is not found may name a click still in
/// some instance's buffer: it is tried again later rather than settled.
const CLICK_SETTLE_SECS: i64 = 120;
/// How often a worker moves expired parked events to the dead letter.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// How often a worker looks at every partner's inbox for events a dead
/// worker left unmarked (one look per partner).
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Ready partners looked at in one round of the book step.
const READY_AT_ONCE: usize = 64;
/// Inbox events applied to a book in one step at most.
const DRAIN_AT_ONCE: usize = 2000;
/// Customers' claims remembered by a worker; the memory is cleared when
/// it holds this many.
const CLAIMS_REMEMBERED: usize = 100_000;
/// Routing attempts that meet a stored record that cannot be read before
/// the event goes to the dead letter: it would fail the same way forever.
/// (An unavailable store is no reason: its events wait for it.)
const POISON_AFTER: u32 = 3;
/// Deliveries whose corrupt meetings are remembered, at most.
const MEETINGS_REMEMBERED: usize = 10_000;

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Applied before: nothing changed.
    Duplicate,
    /// Valid but with no effect: a customer no partner referred.
    NoEffect,
    /// Kept until its predecessor (the customer's signup, the refunded
    /// payment) arrives, then applied.
    Parked,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::NoEffect => "no_effect",
            Outcome::Parked => "parked",
        }
    }
}

/// Everything applying an event needs.
pub struct Worker {
    store: Arc<dyn Store>,
    signer: CookieSigner,
    rules: Rules,
    window: Duration,
    clock_skew: Duration,
    park_for: Duration,
    metrics: Arc<Metrics>,
    /// Claims never change once made, so a customer's later events are
    /// routed without asking the store.
    claims: std::sync::Mutex<HashMap<String, Option<Referral>>>,
    /// Names this worker as a book's holder.
    holder: String,
    /// How long a book stays locked by a worker that stopped answering
    /// (`worker.reclaim_after`, as for its events).
    lock_for: Duration,
    /// Whether other workers held ready books when this one last looked.
    sharing: AtomicBool,
    /// How often each delivery's routing met a corrupt record.
    corrupt_meetings: std::sync::Mutex<HashMap<String, u32>>,
}

/// Settings of the worker loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Names this worker in the consumer group.
    pub consumer: String,
    /// Events another worker took and left unacknowledged this long are
    /// taken over.
    pub reclaim_after: Duration,
}

/// An event on its way to its partner's inbox.
struct ForBook {
    event: Event,
    referral: Referral,
    /// Acknowledged once the inbox has it; `None` for an event that was
    /// parked (and acknowledged) before.
    delivery: Option<String>,
    /// The customer whose parked events this claim brought, to forget
    /// once the inbox has them.
    unpark: Option<(CustomerId, Vec<Event>)>,
}

/// What a round of book steps left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing this worker could apply.
    Idle,
    /// Ready partners whose books other workers hold.
    OthersBusy,
}

/// Where the routing step left an event.
enum Routed {
    Book(Box<ForBook>),
    Finished(String, &'static str, Outcome),
    Waiting,
    /// Met a stored record that cannot be read `POISON_AFTER` times: for
    /// the dead letter.
    Poison(Unreadable),
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, config: &Config, metrics: Arc<Metrics>) -> Self {
        Worker {
            store,
            signer: CookieSigner::new(&config.cookie.secrets),
            rules: config.rules(),
            window: config.attribution.window,
            clock_skew: config.attribution.clock_skew,
            park_for: config.worker.park_for,
            metrics,
            claims: std::sync::Mutex::new(HashMap::new()),
            holder: ClickId::random().to_string(),
            lock_for: config.worker.reclaim_after,
            sharing: AtomicBool::new(false),
            corrupt_meetings: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Takes and applies events until `shutdown` fires. An event is
    /// acknowledged only once applied (or parked, or found to need
    /// nothing), so a worker that dies leaves its events to the others.
    pub async fn run(self, settings: LoopSettings, shutdown: watch::Receiver<bool>) {
        // The two steps run side by side: while the books take one batch,
        // the next is routed.
        let routed = tokio::sync::Notify::new();
        tokio::join!(
            self.route_loop(&settings, shutdown.clone(), &routed),
            self.book_loop(shutdown, &routed),
        );
    }

    /// Takes events from the queue and routes them; acknowledges them
    /// once routed (in an inbox, parked, or needing nothing).
    async fn route_loop(
        &self,
        settings: &LoopSettings,
        mut shutdown: watch::Receiver<bool>,
        routed: &tokio::sync::Notify,
    ) {
        let (mut last_expiry, mut last_sweep): (Option<Instant>, Option<Instant>) = (None, None);
        // Often enough that nothing outstays `park_for` by much.
        let expiry_every = EXPIRY_EVERY.min(self.park_for / 2);
        while !*shutdown.borrow() {
            if last_expiry.is_none_or(|t| t.elapsed() >= expiry_every) {
                last_expiry = Some(Instant::now());
                self.expire_parked().await;
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                self.sweep_ready().await;
            }
            let next = self.store.next_events(
                &settings.consumer,
                BATCH,
                IDLE_WAIT,
                settings.reclaim_after,
            );
            let deliveries = tokio::select! {
                d = next => d,
                _ = shutdown.changed() => return,
            };
            let taken = match deliveries {
                Ok(taken) => taken,
                Err(e) => {
                    self.metrics.count_store_error("next_events");
                    tracing::warn!(error = %e, "cannot read events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.dead_letter(&taken.unreadable).await;
            if taken.events.is_empty() {
                continue;
            }
            let done = self.route_batch(taken.events).await;
            routed.notify_one();
            if let Err(e) = self.store.ack_events(&done).await {
                self.metrics.count_store_error("ack_events");
                tracing::warn!(error = %e, "acknowledgement failed; the events will be routed again, and applied as duplicates");
            }
        }
    }

    /// Moves queue entries that are not events, and events whose routing
    /// kept meeting a corrupt record, to the dead letter: left
    /// unacknowledged, they would come back every `reclaim_after`, forever.
    /// If that fails they do come back, and go then.
    async fn dead_letter(&self, unreadable: &[Unreadable]) {
        if unreadable.is_empty() {
            return;
        }
        for entry in unreadable {
            tracing::error!(delivery = %entry.delivery, reason = %entry.reason, "dead-lettered: the entry cannot be read or its routing meets a corrupt record");
        }
        let now_ms = Utc::now().timestamp_millis();
        match self.store.dead_letter(unreadable, now_ms).await {
            Ok(()) => self
                .metrics
                .events_dead_lettered
                .inc_by(unreadable.len() as u64),
            Err(e) => {
                self.metrics.count_store_error("dead_letter");
                tracing::warn!(error = %e, "dead letter not written; the entries will come back");
            }
        }
    }

    /// Applies what the inboxes hold whenever events were routed (here or,
    /// looked at every `IDLE_WAIT`, by another worker).
    async fn book_loop(&self, mut shutdown: watch::Receiver<bool>, routed: &tokio::sync::Notify) {
        while !*shutdown.borrow() {
            // Books another worker holds are unlocked between its steps:
            // looking again soon takes a share of them, instead of leaving
            // one worker to drain every partner's backlog alone.
            let wait = match self.drain_ready().await {
                Drained::OthersBusy => SHARE_WAIT,
                Drained::Idle => IDLE_WAIT,
            };
            tokio::select! {
                _ = routed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Marks every partner whose inbox holds events ready: a worker that
    /// died between taking a partner off the ready set and looking at its
    /// inbox again leaves them unmarked, and this finds them.
    pub async fn sweep_ready(&self) {
        let partners = match self.store.load_catalog().await {
            Ok(catalog) => catalog.partners,
            Err(e) => {
                self.metrics.count_store_error("sweep_ready");
                tracing::warn!(error = %e, "cannot list partners; retrying later");
                return;
            }
        };
        for partner in partners {
            if let Err(e) = self.store.settle_ready(&partner.id).await {
                self.metrics.count_store_error("sweep_ready");
                tracing::warn!(error = %e, "cannot settle ready partners; retrying later");
                return;
            }
        }
    }

    /// Moves events parked longer than `worker.park_for` to the dead
    /// letter.
    pub async fn expire_parked(&self) {
        let before = Utc::now().timestamp_millis() - self.park_for.as_millis() as i64;
        match self.store.expire_parked(before).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                events = n,
                "parked events had no signup within worker.park_for: moved to the dead letter"
            ),
            Err(e) => {
                self.metrics.count_store_error("expire_parked");
                tracing::warn!(error = %e, "cannot expire parked events; retrying later");
            }
        }
    }

    /// Applies a batch in two steps. Routing: each customer's events go to
    /// the partner that claimed the customer (a signup claims it and brings
    /// its parked events), or are parked until the signup comes; routed
    /// events are appended to their partner's inbox (customers at once).
    /// Books: every partner with events in its inbox and not locked by
    /// another worker has them applied to its book in one atomic step that
    /// takes them off the inbox (partners at once). The book orders events
    /// by their time itself, so neither the order of the batch nor other
    /// workers' batches change the result, and two workers share the
    /// partners instead of contending for them. Answers the deliveries that
    /// are finished (routed durably, parked, or needing nothing).
    pub async fn apply_batch(&self, deliveries: Vec<Delivery>) -> Vec<String> {
        let done = self.route_batch(deliveries).await;
        let _ = self.drain_ready().await;
        done
    }
}
