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
use crate::conversions::customer::{EntryKind, Referral};
use crate::conversions::events::{AttributionRef, Event, EventKind};
use crate::conversions::step::{self, Computed, StepError};
use crate::edge::cookie::CookieSigner;
use crate::ids::PartnerId;
use crate::ids::{ClickId, VisitorId};
use crate::metrics::Metrics;
use crate::store::{Click, Delivery, InboxItem, Route, Store, StoreError, Unreadable};

/// Events taken from the queue at once. A batch's events reach each
/// partner's book together, and a book step costs about the same whether it
/// applies ten events or a few hundred (reading and rewriting the book, the
/// commit): 2,000 rather than 500 applied 25-40 % more events a second in
/// both stores (`loadtest/events`). A worker that dies routes the batch
/// again, to the same result.
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
    unpark: Option<(String, Vec<Event>)>,
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

    /// Moves queue entries that are not events to the dead letter: left
    /// unacknowledged, they would come back every `reclaim_after`, forever.
    /// If that fails they do come back, and go then.
    async fn dead_letter(&self, unreadable: &[Unreadable]) {
        if unreadable.is_empty() {
            return;
        }
        for entry in unreadable {
            tracing::error!(delivery = %entry.delivery, reason = %entry.reason, "a queue entry is not an event: dead-lettered");
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
            if let Err(e) = self.store.settle_ready(partner.id.as_str()).await {
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

    /// The routing step of a batch.
    async fn route_batch(&self, deliveries: Vec<Delivery>) -> Vec<String> {
        let routed: Vec<Routed> = futures_util::stream::iter(by_customer(deliveries))
            .map(|group| self.route_in_order(group))
            .buffer_unordered(self.store.routing_concurrency())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut done = Vec::new();
        let mut by_partner: BTreeMap<String, Vec<ForBook>> = BTreeMap::new();
        for routed in routed {
            match routed {
                Routed::Book(item) => by_partner
                    .entry(item.referral.partner.clone())
                    .or_default()
                    .push(*item),
                Routed::Finished(delivery, kind, outcome) => {
                    self.metrics.count_event(kind, outcome.label());
                    done.push(delivery);
                }
                Routed::Waiting => {}
            }
        }
        let pushed = futures_util::stream::iter(by_partner)
            .map(|(partner, items)| self.push_to_inbox(partner, items))
            .buffer_unordered(CONCURRENT)
            .collect::<Vec<_>>()
            .await;
        done.extend(pushed.into_iter().flatten());
        done
    }

    /// Appends a partner's routed events to its inbox; once they are
    /// there, the customers' parked events they carry are forgotten and the
    /// deliveries are finished.
    async fn push_to_inbox(&self, partner: String, items: Vec<ForBook>) -> Vec<String> {
        let inbox: Vec<InboxItem> = items
            .iter()
            .map(|item| InboxItem {
                event: item.event.clone(),
                referral: item.referral.clone(),
            })
            .collect();
        if let Err(e) = self.store.push_inbox(&partner, &inbox).await {
            self.metrics.count_store_error("push_inbox");
            tracing::warn!(error = %e, partner = %partner, "events not routed; they will be retried");
            return Vec::new();
        }
        let mut done = Vec::with_capacity(items.len());
        for item in items {
            if let Some((customer, parked)) = &item.unpark {
                if let Err(e) = self.store.unpark(customer, parked).await {
                    // They stay listed until expiry drops them (the claim
                    // exists, so they are not dead letters).
                    self.metrics.count_store_error("unpark");
                    tracing::warn!(error = %e, customer = %customer, "cannot forget parked events");
                }
            }
            done.extend(item.delivery);
        }
        done
    }

    /// The book step: drains every ready partner's inbox this worker can
    /// lock, until none is left that another worker is not working on;
    /// answers whether some were left because another worker held them.
    pub async fn drain_ready(&self) -> Drained {
        loop {
            let ready = match self.store.ready_partners(READY_AT_ONCE).await {
                Ok(ready) => ready,
                Err(e) => {
                    self.metrics.count_store_error("ready_partners");
                    tracing::warn!(error = %e, "cannot list ready partners; retrying later");
                    return Drained::Idle;
                }
            };
            // A worker's book steps run in its one task, on one thread at
            // a time: holding more books than it can work on at once only
            // keeps other workers from them (with ten partners, one worker
            // held all ten and the other drained none). So while others
            // hold books too, take half of those ready: two workers split
            // them, and with more each still leaves some to the rest.
            let share = match self.sharing.load(Ordering::Relaxed) {
                true => ready.len().div_ceil(2),
                false => ready.len(),
            };
            let (locked, held_elsewhere) = self.lock_books(ready, share.min(CONCURRENT)).await;
            self.sharing.store(held_elsewhere, Ordering::Relaxed);
            let steps = futures_util::stream::iter(locked)
                .map(|partner| self.drain(partner))
                .buffer_unordered(CONCURRENT)
                .collect::<Vec<bool>>()
                .await;
            if !steps.contains(&true) {
                return match held_elsewhere {
                    true => Drained::OthersBusy,
                    false => Drained::Idle,
                };
            }
        }
    }

    /// Locks up to `max` of the ready partners' books; answers those it
    /// locked and whether another worker held any it tried.
    async fn lock_books(&self, ready: Vec<String>, max: usize) -> (Vec<String>, bool) {
        let (mut locked, mut held_elsewhere) = (Vec::new(), false);
        for partner in ready {
            if locked.len() == max {
                break;
            }
            match self
                .store
                .lock_book(&partner, &self.holder, self.lock_for)
                .await
            {
                Ok(true) => locked.push(partner),
                Ok(false) => held_elsewhere = true,
                Err(e) => {
                    self.metrics.count_store_error("lock_book");
                    tracing::warn!(error = %e, partner = %partner, "cannot lock a book; retrying later");
                }
            }
        }
        (locked, held_elsewhere)
    }

    /// Applies what waits in one partner's inbox, its book locked by this
    /// worker, then unlocks it; answers whether anything was applied.
    async fn drain(&self, partner: String) -> bool {
        let drained = match self.drain_locked(&partner).await {
            Ok(drained) => drained,
            Err(e) => {
                self.metrics.count_store_error("apply_event");
                tracing::warn!(error = %e, partner = %partner, "events not applied; they will be retried");
                false
            }
        };
        if let Err(e) = self.store.unlock_book(&partner, &self.holder).await {
            // It expires by itself.
            tracing::warn!(error = %e, partner = %partner, "cannot unlock a book");
        }
        drained
    }

    async fn drain_locked(&self, partner: &str) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let items = self.store.read_inbox(partner, DRAIN_AT_ONCE).await?;
            if items.is_empty() {
                self.store.settle_ready(partner).await?;
                return Ok(false);
            }
            let Some(effects) = self.commit_items(partner, &items).await? else {
                continue; // the book moved (a lock that expired): read again
            };
            for item in &items {
                let outcome = match effects.get(item.event.id.as_str()) {
                    Some(Effect::Applied) | None => Outcome::Applied,
                    Some(Effect::Duplicate) => Outcome::Duplicate,
                    Some(Effect::Parked) => Outcome::Parked,
                };
                self.metrics
                    .count_event(item.event.kind.name(), outcome.label());
            }
            self.store.settle_ready(partner).await?;
            return Ok(true);
        }
        Err(StoreError::Contended(format!(
            "book of `{partner}` kept moving"
        )))
    }

    /// Applies inbox items to the partner's book and takes them off the
    /// inbox, atomically; `None` when the book moved since it was read.
    async fn commit_items(
        &self,
        partner: &str,
        items: &[InboxItem],
    ) -> Result<Option<HashMap<String, Effect>>, StoreError> {
        let incoming: Vec<Incoming<'_>> = items
            .iter()
            .map(|item| Incoming {
                event: &item.event,
                referral: &item.referral,
            })
            .collect();
        let request = book::request_for(&incoming);
        let step = step::try_commit(self.store.as_ref(), partner, request, |view, request| {
            let now = Utc::now().timestamp_millis();
            Ok::<_, Infallible>(
                match book::apply(view, request, &incoming, &self.rules, now) {
                    Applied::Load(more) => Computed::Load(more),
                    Applied::Done(mut changes, effects) => {
                        changes.inbox_taken = items.len();
                        let late = request.history_from.is_some();
                        Computed::Done(changes, (effects, late))
                    }
                },
            )
        })
        .await;
        let Some((changes, (effects, late))) = step.map_err(|e| match e {
            StepError::Store(e) => e,
            StepError::Refused(never) => match never {},
        })?
        else {
            return Ok(None);
        };
        self.count_commissions(&changes);
        self.metrics.book_steps.inc();
        if late {
            self.metrics.late_batches.inc();
        }
        Ok(Some(effects.into_iter().collect()))
    }

    /// The routing step of one customer's events, in delivery order.
    async fn route_in_order(&self, group: Vec<Delivery>) -> Vec<Routed> {
        let mut out = Vec::with_capacity(group.len());
        for delivery in group {
            let routed = match self.route(&delivery).await {
                Ok(routed) => routed,
                Err(e) => {
                    self.metrics.count_store_error("apply_event");
                    tracing::warn!(error = %e, event = %delivery.event.id, "event not applied; it will be retried");
                    vec![Routed::Waiting]
                }
            };
            out.extend(routed);
        }
        out
    }

    /// Where one event goes: with a signup, the customer's parked events
    /// go too.
    async fn route(&self, delivery: &Delivery) -> Result<Vec<Routed>, StoreError> {
        let event = &delivery.event;
        let kind = event.kind.name();
        let finished = |outcome| Routed::Finished(delivery.delivery.clone(), kind, outcome);
        let EventKind::Signup { attribution, .. } = &event.kind else {
            let route = match self.remembered_claim(&event.customer) {
                Some(claim) => Route::Claimed(claim),
                None => {
                    let now = Utc::now().timestamp_millis();
                    let route = self.store.route_event(event, now).await?;
                    if let Route::Claimed(claim) = &route {
                        self.remember_claim(&event.customer, claim);
                    }
                    route
                }
            };
            return Ok(vec![match route {
                Route::Claimed(Some(referral)) => Routed::Book(Box::new(ForBook {
                    event: event.clone(),
                    referral,
                    delivery: Some(delivery.delivery.clone()),
                    unpark: None,
                })),
                Route::Claimed(None) => finished(Outcome::NoEffect),
                Route::Parked => finished(Outcome::Parked),
            }]);
        };
        let resolved = match self.resolve(attribution, event.at).await? {
            Resolution::Click(referral) => Some(referral),
            Resolution::NoClick => None,
            Resolution::NotYet => return Ok(vec![Routed::Waiting]),
        };
        // Always through the store, never the remembered claims: the claim
        // answers the parked events too.
        let (claim, parked) = self
            .store
            .claim_customer(&event.customer, resolved.as_ref())
            .await?;
        self.remember_claim(&event.customer, &claim);
        let Some(referral) = claim else {
            // Signed up without a valid click: final, and so is what
            // waited for it.
            for waited in &parked {
                self.metrics.count_event(waited.kind.name(), "no_effect");
            }
            self.store.unpark(&event.customer, &parked).await?;
            return Ok(vec![finished(Outcome::NoEffect)]);
        };
        let mut out: Vec<Routed> = parked
            .iter()
            .map(|waited| {
                Routed::Book(Box::new(ForBook {
                    event: waited.clone(),
                    referral: referral.clone(),
                    delivery: None,
                    unpark: None,
                }))
            })
            .collect();
        out.push(Routed::Book(Box::new(ForBook {
            event: event.clone(),
            referral,
            delivery: Some(delivery.delivery.clone()),
            unpark: Some((event.customer.clone(), parked)),
        })));
        Ok(out)
    }

    fn remembered_claim(&self, customer: &str) -> Option<Option<Referral>> {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.get(customer).cloned()
    }

    fn remember_claim(&self, customer: &str, claim: &Option<Referral>) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.len() >= CLAIMS_REMEMBERED {
            claims.clear();
        }
        claims.insert(customer.to_owned(), claim.clone());
    }

    /// The click a signup names, if it counts: a valid signature, a partner
    /// that exists and is enabled, and a signup within the window after the
    /// click (less the clock skew before it).
    async fn resolve(
        &self,
        attribution: &AttributionRef,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        let stored = match attribution {
            AttributionRef::Cookie(value) => {
                let referral = self.signer.verify(value.as_bytes()).and_then(|v| {
                    v.attribution().map(|a| Referral {
                        partner: a.partner.to_owned(),
                        campaign: a.campaign.to_owned(),
                        term: a.term.map(str::to_owned),
                        click_at: a.clicked_at,
                    })
                });
                return self.check(referral, signed_up_at).await;
            }
            AttributionRef::ClickId(id) => match ClickId::parse(id) {
                Some(id) => self.store.click(&id).await?,
                None => return Ok(Resolution::NoClick),
            },
            AttributionRef::VisitorId(id) => match VisitorId::parse(id) {
                Some(id) => self.store.last_click(&id).await?,
                None => return Ok(Resolution::NoClick),
            },
        };
        let recent = Utc::now().timestamp() - signed_up_at.timestamp() < CLICK_SETTLE_SECS;
        match stored {
            None if recent => Ok(Resolution::NotYet),
            stored => self.check(stored.map(referral_of), signed_up_at).await,
        }
    }

    async fn check(
        &self,
        referral: Option<Referral>,
        signed_up_at: DateTime<Utc>,
    ) -> Result<Resolution, StoreError> {
        let Some(referral) = referral else {
            return Ok(Resolution::NoClick);
        };
        let since_click = signed_up_at.timestamp() - referral.click_at;
        let in_window = since_click >= -(self.clock_skew.as_secs() as i64)
            && since_click <= self.window.as_secs() as i64;
        if !in_window {
            return Ok(Resolution::NoClick);
        }
        let partner = match PartnerId::parse(&referral.partner) {
            Ok(id) => self.store.partner(&id).await?,
            Err(_) => None,
        };
        Ok(match partner {
            Some(p) if !p.disabled => Resolution::Click(referral),
            _ => Resolution::NoClick,
        })
    }

    fn count_commissions(&self, changes: &Changes) {
        for entry in &changes.entries {
            if entry.kind != EntryKind::Commission {
                continue;
            }
            let amount = entry.amount.try_into().unwrap_or(0.0);
            self.metrics.count_commission(&entry.currency, amount);
        }
    }
}

/// Deliveries grouped by customer, each group in delivery order.
fn by_customer(deliveries: Vec<Delivery>) -> Vec<Vec<Delivery>> {
    let mut groups: Vec<Vec<Delivery>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for delivery in deliveries {
        match group_of.get(&delivery.event.customer) {
            Some(&g) => groups[g].push(delivery),
            None => {
                group_of.insert(delivery.event.customer.clone(), groups.len());
                groups.push(vec![delivery]);
            }
        }
    }
    groups
}

/// What a signup's attribution leads to.
enum Resolution {
    Click(Referral),
    NoClick,
    /// The click may not be stored yet.
    NotYet,
}

fn referral_of(click: Click) -> Referral {
    Referral {
        partner: click.partner.to_string(),
        campaign: click.campaign.to_string(),
        term: click.term.as_deref().map(String::from),
        click_at: click.at,
    }
}
