//! Delivery: the events of the feed sent to each endpoint in order, one
//! at a time, signed; a failure is retried with exponential backoff and
//! jitter until `webhooks.give_up_after` has passed since the event was
//! written, then marked failed, and the endpoint's next event goes.
//!
//! One instance delivers at a time (a lease in the store), so an
//! endpoint's events never race each other. Each endpoint's place in the
//! feed is saved with the delivery it attempted: a crash repeats at most
//! the attempt in flight, with the same event id and body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Webhooks as WebhooksConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::webhooks::outbox::OutboxEvent;
use crate::webhooks::{signature, WebhookEndpoint, WebhookEventType, SIGNATURE_HEADER};

/// An event in the feed, at its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub seq: u64,
    pub event: OutboxEvent,
}

/// Where an endpoint stands in the feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCursor {
    /// Every event up to this position is delivered, given up, or not one
    /// the endpoint subscribes to.
    pub after: u64,
    /// The next event's failed attempts, and when to try it again.
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub seq: u64,
    pub attempts: u32,
    pub next_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Failed so far; tried again at `next_attempt_at`.
    Pending,
    Succeeded,
    /// Given up: still failing `webhooks.give_up_after` after the event.
    Failed,
}

/// One event's delivery to one endpoint, as last attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub event_type: WebhookEventType,
    /// The event's position in the feed: deliveries are listed by it.
    pub seq: u64,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub event_created_at: DateTime<Utc>,
    pub last_attempt_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's HTTP status on the last attempt, when it answered.
    pub response_status: Option<u16>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// The event as sent, for a resend.
    pub body: String,
}

impl WebhookDelivery {
    /// The event this delivery sends.
    pub fn event(&self) -> OutboxEvent {
        OutboxEvent {
            id: self.event_id.clone(),
            kind: self.event_type,
            created_at: self.event_created_at,
            body: self.body.clone(),
        }
    }

    /// Records an attempt's answer.
    pub fn attempted(&mut self, answer: &Answer, at: DateTime<Utc>) {
        self.attempts += 1;
        self.last_attempt_at = at;
        self.response_status = answer.status;
        self.error = answer.error.clone();
        self.next_attempt_at = None;
    }
}

/// Deliveries an endpoint's record keeps, newest first: older ones are
/// forgotten.
pub const KEPT_DELIVERIES: usize = 500;

/// What a receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends signed events over HTTP(S): no redirects followed, the answer's
/// body never read, each request bounded by `webhooks.timeout`.
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new(config: &WebhooksConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lastclick-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the webhook HTTP client: {e}"))?;
        Ok(Sender { client })
    }

    /// Sends `event` to `endpoint`, signed now; a 2xx answer succeeds.
    pub async fn send(&self, endpoint: &WebhookEndpoint, event: &OutboxEvent) -> Answer {
        let signed = signature(
            &endpoint.secret,
            Utc::now().timestamp(),
            event.body.as_bytes(),
        );
        let sent = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signed)
            .header("lastclick-event-id", &event.id)
            .body(event.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Answer {
                status: Some(response.status().as_u16()),
                error: None,
            },
            Ok(response) => Answer {
                status: Some(response.status().as_u16()),
                error: Some(format!("answered {}", response.status())),
            },
            Err(e) => Answer {
                status: None,
                error: Some(describe(e)),
            },
        }
    }
}

/// A failed request, in a few words: the URL is the endpoint's own.
fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut text = format!("{what}: {}", e.without_url());
    text.truncate(300);
    text
}

/// When to try again.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
    /// `webhooks.timeout`: one attempt's longest wait.
    pub timeout: Duration,
    /// `webhooks.max_backlog`: the most events an endpoint may be behind.
    pub max_backlog: u64,
}

impl RetryPolicy {
    pub fn of(config: &WebhooksConfig) -> Self {
        RetryPolicy {
            first: config.retry_first,
            max: config.retry_max,
            give_up_after: config.give_up_after,
            timeout: config.timeout,
            max_backlog: config.max_backlog,
        }
    }

    /// The wait after the `attempts`-th failure: `first` doubled each
    /// time, at most `max`, less a random part of up to half, so that
    /// endpoints that failed together do not retry together.
    pub fn wait(&self, attempts: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(30));
        let full = doubled.min(self.max);
        full.mul_f64(1.0 - rand::random::<f64>() / 2.0)
    }

    fn gives_up(&self, event: &OutboxEvent, now: DateTime<Utc>) -> bool {
        let age = (now - event.created_at).to_std().unwrap_or_default();
        age >= self.give_up_after
    }
}

/// How much longer than one attempt (`webhooks.timeout`) the lease lasts:
/// it is renewed before each attempt, so a holder that dies is replaced
/// within `webhooks.timeout` and this.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// An endpoint's share of a round, so that the others' retries and the
/// feed's trimming are not held up by one endpoint's backlog.
const ROUND_BUDGET: Duration = Duration::from_secs(20);
/// The wait between rounds with nothing to do.
const IDLE: Duration = Duration::from_millis(250);
/// Feed events read at a time.
const FEED_PAGE: usize = 100;

/// The delivery task.
pub struct Deliverer {
    store: Arc<dyn Store>,
    sender: Arc<Sender>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    holder: String,
    lease: Duration,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        sender: Arc<Sender>,
        metrics: Arc<Metrics>,
        policy: RetryPolicy,
        holder: String,
    ) -> Self {
        let lease = policy.timeout + LEASE_MARGIN;
        Deliverer {
            store,
            sender,
            metrics,
            policy,
            holder,
            lease,
        }
    }

    /// Delivers until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let busy = match self.round().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook deliveries: the store failed; trying again");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(IDLE) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// One round: gather the outboxes, serve every endpoint, forget what
    /// every endpoint is past. Answers whether there may be more to do.
    pub async fn round(&self) -> Result<bool, StoreError> {
        if !self.renew_lease().await? {
            return Ok(false);
        }
        let gathered = self.store.gather_outboxes().await?;
        // Read before the endpoints: one registered after this starts at
        // a later head, so trimming up to here never takes its events.
        let head = self.store.feed_head().await?;
        let endpoints = self.store.webhooks().await?;
        let served = join_all(endpoints.iter().map(|e| self.serve(e, head))).await;
        let mut busy = gathered > 0;
        let mut upto = head;
        for outcome in served {
            let (after, more) = outcome?;
            busy |= more;
            upto = upto.min(after);
        }
        self.store.trim_feed(upto).await?;
        let oldest = self.store.feed(upto, 1).await?;
        let age = oldest.first().map_or(0, |e| {
            (Utc::now() - e.event.created_at).num_seconds().max(0)
        });
        self.metrics.webhooks.oldest_undelivered_seconds.set(age);
        Ok(busy)
    }

    /// Sends an endpoint its next events, in order, until one fails or
    /// its share of the round is spent. Answers its place and whether it
    /// has more to send now.
    async fn serve(
        &self,
        endpoint: &WebhookEndpoint,
        head: u64,
    ) -> Result<(u64, bool), StoreError> {
        let mut cursor = self.store.delivery_cursor(&endpoint.id).await?;
        self.skip_past_backlog(endpoint, &mut cursor, head).await?;
        let started = Instant::now();
        loop {
            let page = self.store.feed(cursor.after, FEED_PAGE).await?;
            if page.is_empty() {
                return Ok((cursor.after, false));
            }
            let mut skipped = false;
            for item in page {
                if !endpoint.events.contains(&item.event.kind) {
                    cursor.after = item.seq;
                    skipped = true;
                    continue;
                }
                let waiting = cursor
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.next_at > Utc::now());
                // Renewed before each attempt: the lease outlasts one
                // attempt, never a round.
                if waiting || started.elapsed() > ROUND_BUDGET || !self.renew_lease().await? {
                    if skipped {
                        self.store
                            .save_delivery(&endpoint.id, Some(&cursor), None)
                            .await?;
                    }
                    return Ok((cursor.after, !waiting));
                }
                let delivery = self.attempt(endpoint, &item, &mut cursor).await;
                if !self
                    .store
                    .save_delivery(&endpoint.id, Some(&cursor), Some(&delivery))
                    .await?
                {
                    // Deleted meanwhile: nothing more goes to it.
                    return Ok((u64::MAX, false));
                }
                skipped = false;
            }
            if skipped {
                self.store
                    .save_delivery(&endpoint.id, Some(&cursor), None)
                    .await?;
            }
        }
    }

    async fn renew_lease(&self) -> Result<bool, StoreError> {
        self.store.lease_deliveries(&self.holder, self.lease).await
    }

    /// Moves an endpoint that fell more than `webhooks.max_backlog`
    /// events behind the head up to that bound: the feed (in Redis, in
    /// memory) never holds more than that for one failing receiver.
    async fn skip_past_backlog(
        &self,
        endpoint: &WebhookEndpoint,
        cursor: &mut DeliveryCursor,
        head: u64,
    ) -> Result<(), StoreError> {
        let Some(skipped) = head
            .checked_sub(cursor.after)
            .and_then(|behind| behind.checked_sub(self.policy.max_backlog))
            .filter(|skipped| *skipped > 0)
        else {
            return Ok(());
        };
        cursor.after += skipped;
        cursor.retry = None;
        self.store
            .save_delivery(&endpoint.id, Some(cursor), None)
            .await?;
        self.metrics.webhooks.skipped.inc_by(skipped);
        tracing::warn!(
            endpoint = %endpoint.id,
            skipped,
            "a webhook endpoint fell more than webhooks.max_backlog events behind; its oldest were skipped"
        );
        Ok(())
    }

    /// Sends one event and moves `cursor` on (succeeded, or given up) or
    /// schedules the retry.
    async fn attempt(
        &self,
        endpoint: &WebhookEndpoint,
        item: &FeedEvent,
        cursor: &mut DeliveryCursor,
    ) -> WebhookDelivery {
        let earlier = cursor
            .retry
            .as_ref()
            .filter(|r| r.seq == item.seq)
            .map_or(0, |r| r.attempts);
        let answer = self.sender.send(endpoint, &item.event).await;
        let now = Utc::now();
        let mut delivery = WebhookDelivery {
            event_id: item.event.id.clone(),
            event_type: item.event.kind,
            seq: item.seq,
            status: DeliveryStatus::Succeeded,
            attempts: earlier,
            event_created_at: item.event.created_at,
            last_attempt_at: now,
            next_attempt_at: None,
            response_status: None,
            error: None,
            body: item.event.body.clone(),
        };
        delivery.attempted(&answer, now);
        if answer.succeeded() || self.policy.gives_up(&item.event, now) {
            if !answer.succeeded() {
                delivery.status = DeliveryStatus::Failed;
            }
            cursor.after = item.seq;
            cursor.retry = None;
        } else {
            let next_at = now + self.policy.wait(delivery.attempts);
            delivery.status = DeliveryStatus::Pending;
            delivery.next_attempt_at = Some(next_at);
            cursor.retry = Some(Retry {
                seq: item.seq,
                attempts: delivery.attempts,
                next_at,
            });
        }
        self.metrics.webhooks.count(outcome_label(delivery.status));
        delivery
    }
}

/// The `webhook_deliveries_total` label of an attempt that left a
/// delivery in `status`.
pub fn outcome_label(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Succeeded => "succeeded",
        DeliveryStatus::Pending => "retrying",
        DeliveryStatus::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_most() {
        let policy = RetryPolicy {
            first: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(3 * 86_400),
            timeout: Duration::from_secs(10),
            max_backlog: 1_000_000,
        };
        for _ in 0..100 {
            let first = policy.wait(1);
            assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(10));
            let fourth = policy.wait(4);
            assert!(fourth >= Duration::from_secs(40) && fourth <= Duration::from_secs(80));
            let late = policy.wait(40);
            assert!(late >= Duration::from_secs(1800) && late <= Duration::from_secs(3600));
        }
    }
}
