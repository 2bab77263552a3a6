//! The click pipeline: a bounded in-memory queue filled by redirects and a
//! flusher that writes it to the store in batches, off the request path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::store::prelude::*;
use crate::store::Click;

/// How long a stopping flusher keeps retrying an unreachable store before
/// it counts what is left as dropped.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait for one batch write, whatever the store's client does on
/// reconnection: a stuck write must not hold the queue or the shutdown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The redirect's end of the queue. Pushing never waits.
#[derive(Clone)]
pub struct ClickQueue {
    tx: mpsc::Sender<Click>,
    metrics: Arc<Metrics>,
}

/// The flusher's end of the queue.
pub struct ClickReceiver {
    rx: mpsc::Receiver<Click>,
}

/// A queue holding at most `capacity` clicks.
pub fn queue(capacity: usize, metrics: Arc<Metrics>) -> (ClickQueue, ClickReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    metrics.service.click_buffer_capacity.set(capacity as i64);
    (ClickQueue { tx, metrics }, ClickReceiver { rx })
}

impl ClickQueue {
    /// Queues `click`; when the buffer is full it is dropped and counted.
    pub fn push(&self, click: Click) {
        if self.tx.try_send(click).is_err() {
            self.metrics.clicks_dropped.inc();
        }
    }

    /// Clicks waiting to be written.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

impl ClickReceiver {
    /// Takes one waiting click, if any (benchmarks drain the queue with it).
    pub fn try_take(&mut self) -> Option<Click> {
        self.rx.try_recv().ok()
    }
}

/// Settings of the flusher, from `clicks.*`.
#[derive(Debug, Clone, Copy)]
pub struct FlushSettings {
    pub batch_size: usize,
    pub interval: Duration,
}

/// Writes queued clicks every `interval` in batches of at most `batch_size`
/// until `shutdown` fires, then drains the queue and returns.
pub async fn run_flusher(
    mut queue: ClickReceiver,
    store: Arc<dyn Store>,
    settings: FlushSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(settings.batch_size);
    let mut give_up_at = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        if stopping {
            queue.rx.close();
            give_up_at.get_or_insert(tokio::time::Instant::now() + SHUTDOWN_RETRY);
        }
        loop {
            batch.clear();
            while batch.len() < settings.batch_size {
                match queue.rx.try_recv() {
                    Ok(click) => batch.push(click),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            write_batch(store.as_ref(), &batch, &metrics, &shutdown, &mut give_up_at).await;
        }
        metrics.click_queue_depth.set(queue.rx.len() as i64);
        if stopping {
            if let Err(e) = store.sync().await {
                metrics.count_store_error("sync");
                tracing::warn!(error = %e, "unique-visitor counts of the last seconds not written");
            }
            return;
        }
    }
}

/// Writes one batch, retrying with backoff while the store is down. The
/// queue behind it fills meanwhile, and overflow is counted by the queue.
/// Once stopping, retries end at `give_up_at` (one deadline for the whole
/// drain) and what is left is counted as dropped.
async fn write_batch(
    store: &dyn Store,
    batch: &[Click],
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    give_up_at: &mut Option<tokio::time::Instant>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        // A shutdown may begin while this batch is retrying: the drain
        // deadline starts then, not when the flusher next looks up.
        if give_up_at.is_none() && *shutdown.borrow() {
            *give_up_at = Some(tokio::time::Instant::now() + SHUTDOWN_RETRY);
        }
        let out_of_time = give_up_at.is_some_and(|at| tokio::time::Instant::now() >= at);
        if out_of_time && !batch.is_empty() {
            metrics.clicks_dropped.inc_by(batch.len() as u64);
            tracing::error!(
                clicks = batch.len(),
                "store unreachable at shutdown: clicks dropped"
            );
            return;
        }
        let attempt = tokio::time::timeout(WRITE_TIMEOUT, store.record_clicks(batch)).await;
        let attempt = attempt
            .unwrap_or_else(|_| Err(crate::store::StoreError::unavailable("write timed out")));
        match attempt {
            Ok(()) => {
                metrics.clicks_written.inc_by(batch.len() as u64);
                return;
            }
            Err(e) => {
                metrics.count_store_error("record_clicks");
                tracing::warn!(error = %e, clicks = batch.len(), "click batch not written; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
