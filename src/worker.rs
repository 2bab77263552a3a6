//! The worker: takes conversion events from the store's queue, resolves
//! signups to clicks, and applies each event to its partner's book exactly
//! once (see `book` for what an event changes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::book::{self, Changes, Referral, Rules};
use crate::config::Config;
use crate::cookie::{ClickId, CookieSigner, VisitorId};
use crate::events::{AttributionRef, Event, EventKind};
use crate::ids::PartnerId;
use crate::metrics::Metrics;
use crate::store::{Click, Commit, Delivery, Store, StoreError};

/// Events taken from the queue at once.
const BATCH: usize = 100;
/// How long a worker waits for events before it looks again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Commit attempts against a book that other workers keep moving.
const MAX_ATTEMPTS: usize = 1000;
/// Customers (claim step) or partners (book step) handled at once.
const CONCURRENT: usize = 16;
/// A signup this recent whose click is not found may name a click still in
/// some instance's buffer: it is tried again later rather than settled.
const CLICK_SETTLE_SECS: i64 = 120;
/// An event for a customer with no signup yet, queued this recently, may
/// have its signup in another worker's hands: it is tried again later.
const SIGNUP_SETTLE_MS: i64 = 10_000;

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Applied before: nothing changed.
    Duplicate,
    /// Valid but with no effect: a customer no partner referred, an
    /// unknown payment.
    NoEffect,
    /// Its customer's signup is not applied yet: try again later.
    NotYet,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::NoEffect => "no_effect",
            Outcome::NotYet => "not_yet",
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
    metrics: Arc<Metrics>,
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

impl Worker {
    pub fn new(store: Arc<dyn Store>, config: &Config, metrics: Arc<Metrics>) -> Self {
        Worker {
            store,
            signer: CookieSigner::new(&config.cookie.secrets),
            rules: rules(config),
            window: config.attribution.window,
            clock_skew: config.attribution.clock_skew,
            metrics,
        }
    }

    /// Takes and applies events until `shutdown` fires. An event is
    /// acknowledged only once applied (or found to need nothing), so a
    /// worker that dies leaves its events to the others.
    pub async fn run(self, settings: LoopSettings, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
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
            let deliveries = match deliveries {
                Ok(d) => d,
                Err(e) => {
                    self.metrics.count_store_error("next_events");
                    tracing::warn!(error = %e, "cannot read events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let done = self.apply_batch(deliveries).await;
            if let Err(e) = self.store.ack_events(&done).await {
                self.metrics.count_store_error("ack_events");
                tracing::warn!(error = %e, "acknowledgement failed; the events will be applied again, as duplicates");
            }
        }
    }

    /// Applies a batch as if one event after the other, using the cores
    /// and round trips it can: first each customer's claim (customers at
    /// once, each customer's events in order), then each partner's book
    /// (partners at once, each partner's events in delivery order, so that
    /// ARR and tiers see them in that order). Answers the deliveries that
    /// are finished; after an event that must wait, its customer's later
    /// events wait too.
    pub async fn apply_batch(&self, deliveries: Vec<Delivery>) -> Vec<String> {
        let claimed: Vec<(usize, Delivery, Claimed)> =
            futures_util::stream::iter(by_customer(deliveries))
                .map(|group| self.claim_in_order(group))
                .buffer_unordered(CONCURRENT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .flatten()
                .collect();
        let mut done = Vec::new();
        let mut by_partner: BTreeMap<String, Vec<(usize, Delivery, Referral)>> = BTreeMap::new();
        for (index, delivery, claimed) in claimed {
            match claimed {
                Claimed::Referral(referral) => by_partner
                    .entry(referral.partner.clone())
                    .or_default()
                    .push((index, delivery, referral)),
                Claimed::Finished(outcome) => {
                    self.metrics
                        .count_event(delivery.event.kind.name(), outcome.label());
                    done.push(delivery.delivery);
                }
                Claimed::Waiting => {}
            }
        }
        let applied = futures_util::stream::iter(by_partner.into_values())
            .map(|mut events| {
                events.sort_by_key(|(index, ..)| *index);
                self.apply_in_order(events)
            })
            .buffer_unordered(CONCURRENT)
            .collect::<Vec<_>>()
            .await;
        done.extend(applied.into_iter().flatten());
        done
    }

    /// The claim step of one customer's events, in order.
    async fn claim_in_order(
        &self,
        group: Vec<(usize, Delivery)>,
    ) -> Vec<(usize, Delivery, Claimed)> {
        let mut out = Vec::with_capacity(group.len());
        let mut blocked = false;
        for (index, delivery) in group {
            let claimed = if blocked {
                Claimed::Waiting
            } else {
                match self
                    .referral_for(&delivery.event, delivery.queued_at_ms)
                    .await
                {
                    Ok(Ok(referral)) => Claimed::Referral(referral),
                    Ok(Err(Outcome::NotYet)) => Claimed::Waiting,
                    Ok(Err(outcome)) => Claimed::Finished(outcome),
                    Err(e) => {
                        self.metrics.count_store_error("apply_event");
                        tracing::warn!(error = %e, event = %delivery.event.id, "event not applied; it will be retried");
                        Claimed::Waiting
                    }
                }
            };
            blocked |= matches!(claimed, Claimed::Waiting);
            out.push((index, delivery, claimed));
        }
        out
    }

    /// One partner's events in delivery order; a customer whose event must
    /// wait has its later events wait too.
    async fn apply_in_order(&self, events: Vec<(usize, Delivery, Referral)>) -> Vec<String> {
        let mut done = Vec::with_capacity(events.len());
        let mut blocked: Vec<String> = Vec::new();
        for (_, delivery, referral) in events {
            let event = &delivery.event;
            if blocked.contains(&event.customer) {
                continue;
            }
            match self.apply_to_book(event, &referral).await {
                Ok(Outcome::NotYet) => blocked.push(event.customer.clone()),
                Ok(outcome) => {
                    self.metrics.count_event(event.kind.name(), outcome.label());
                    done.push(delivery.delivery);
                }
                Err(e) => {
                    self.metrics.count_store_error("apply_event");
                    tracing::warn!(error = %e, event = %event.id, "event not applied; it will be retried");
                    blocked.push(event.customer.clone());
                }
            }
        }
        done
    }

    /// Applies one event, queued at `queued_at_ms`, to its partner's book,
    /// once.
    pub async fn apply(&self, event: &Event, queued_at_ms: i64) -> Result<Outcome, StoreError> {
        match self.referral_for(event, queued_at_ms).await? {
            Ok(referral) => self.apply_to_book(event, &referral).await,
            Err(outcome) => Ok(outcome),
        }
    }

    /// The partner an event's customer was referred by, claiming the
    /// customer on its signup; or why the event goes no further.
    async fn referral_for(
        &self,
        event: &Event,
        queued_at_ms: i64,
    ) -> Result<Result<Referral, Outcome>, StoreError> {
        let referral = match &event.kind {
            EventKind::Signup { attribution, .. } => {
                let found = match self.store.customer_claim(&event.customer).await? {
                    Some(claim) => claim,
                    None => {
                        let resolved = match self.resolve(attribution, event.at).await? {
                            Resolution::Click(referral) => Some(referral),
                            Resolution::NoClick => None,
                            Resolution::NotYet => return Ok(Err(Outcome::NotYet)),
                        };
                        self.store
                            .claim_customer(&event.customer, resolved.as_ref())
                            .await?
                    }
                };
                match found {
                    Some(referral) => referral,
                    None => return Ok(Err(Outcome::NoEffect)),
                }
            }
            _ => match self.store.customer_claim(&event.customer).await? {
                Some(Some(referral)) => referral,
                Some(None) => return Ok(Err(Outcome::NoEffect)),
                None => {
                    let waiting = Utc::now().timestamp_millis() - queued_at_ms < SIGNUP_SETTLE_MS;
                    return Ok(Err(if waiting {
                        Outcome::NotYet
                    } else {
                        Outcome::NoEffect
                    }));
                }
            },
        };
        Ok(Ok(referral))
    }

    /// Applies an event of a customer `referral` names to the partner's
    /// book, once.
    async fn apply_to_book(
        &self,
        event: &Event,
        referral: &Referral,
    ) -> Result<Outcome, StoreError> {
        let payment = match &event.kind {
            EventKind::Refund { payment, .. } => Some(payment.as_str()),
            _ => None,
        };
        let cell = book::conversion_cell(referral);
        for _ in 0..MAX_ATTEMPTS {
            let view = self
                .store
                .load_book(
                    &referral.partner,
                    Some(&event.customer),
                    payment,
                    Some(&cell),
                    &event.id,
                )
                .await?;
            if view.applied {
                return Ok(Outcome::Duplicate);
            }
            let mut changes = match self.changes(event, referral, &view) {
                Ok(changes) => changes,
                Err(outcome) => return Ok(outcome),
            };
            // The report's counters move in the same step as the money.
            let mut counts = view.conversions.clone();
            counts.record(&changes, view.customer.as_ref(), view.payment.as_ref());
            if counts != view.conversions {
                changes.conversions = Some((cell.clone(), counts));
            }
            match self
                .store
                .commit_book(&referral.partner, &event.id, view.version, &changes)
                .await?
            {
                Commit::Applied => {
                    self.count_commissions(&changes);
                    return Ok(Outcome::Applied);
                }
                Commit::AlreadyApplied => return Ok(Outcome::Duplicate),
                Commit::Conflict => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "book of `{}` kept moving",
            referral.partner
        )))
    }

    /// What `event` changes in a book, or why it changes nothing.
    fn changes(
        &self,
        event: &Event,
        referral: &Referral,
        view: &crate::store::BookView,
    ) -> Result<Changes, Outcome> {
        let rules = &self.rules;
        match (&event.kind, &view.customer) {
            (EventKind::Signup { .. }, Some(_)) => Err(Outcome::Duplicate),
            (EventKind::Signup { billing, .. }, None) => Ok(book::signup(
                &view.book,
                rules,
                &event.customer,
                referral.clone(),
                *billing,
                event.at,
            )),
            (_, None) => Err(Outcome::NotYet),
            (
                EventKind::Payment {
                    amount,
                    currency,
                    period,
                },
                Some(customer),
            ) => Ok(book::payment(
                &view.book, rules, customer, &event.id, *amount, currency, *period, event.at,
            )),
            (
                EventKind::Refund {
                    amount, currency, ..
                },
                Some(_),
            ) => match &view.payment {
                Some(paid) if paid.customer == event.customer && &paid.currency == currency => {
                    Ok(book::refund(&view.book, paid, &event.id, *amount, event.at))
                }
                _ => Err(Outcome::NoEffect),
            },
            (EventKind::Cancel, Some(customer)) => {
                Ok(book::cancel(&view.book, rules, customer, event.at))
            }
        }
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
            if entry.kind != book::EntryKind::Commission {
                continue;
            }
            let amount = entry.amount.try_into().unwrap_or(0.0);
            self.metrics.count_commission(&entry.currency, amount);
        }
    }
}

/// Deliveries numbered in order and grouped by customer.
fn by_customer(deliveries: Vec<Delivery>) -> Vec<Vec<(usize, Delivery)>> {
    let mut groups: Vec<Vec<(usize, Delivery)>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (index, delivery) in deliveries.into_iter().enumerate() {
        match group_of.get(&delivery.event.customer) {
            Some(&g) => groups[g].push((index, delivery)),
            None => {
                group_of.insert(delivery.event.customer.clone(), groups.len());
                groups.push(vec![(index, delivery)]);
            }
        }
    }
    groups
}

/// Where the claim step left an event.
enum Claimed {
    Referral(Referral),
    Finished(Outcome),
    Waiting,
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

/// The program's rules from the configuration.
pub fn rules(config: &Config) -> Rules {
    Rules {
        tiers: config.tiers.clone(),
        hold_days: config.commission.hold_days,
        payout_minimum: config.payout.minimum.clone(),
    }
}
