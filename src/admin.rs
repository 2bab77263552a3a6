//! The admin listener's routes: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::edge::clicks::ClickQueue;
use crate::metrics::Metrics;
use crate::store::prelude::*;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    /// The click queue, on `serve`; a worker has none.
    pub clicks: Option<ClickQueue>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

/// How long a scrape waits for the event queue's figures.
const STATS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // Queue depths are read at scrape time so the redirect never pays for them.
    if let Some(clicks) = &state.clicks {
        state.metrics.click_queue_depth.set(clicks.depth() as i64);
    }
    match tokio::time::timeout(STATS_TIMEOUT, state.store.event_queue_stats()).await {
        Ok(Ok(stats)) => {
            state.metrics.queue.waiting.set(stats.waiting as i64);
            state.metrics.queue.pending.set(stats.pending as i64);
            state.metrics.queue.routed.set(stats.routed as i64);
        }
        _ => state.metrics.count_store_error("event_queue_stats"),
    }
    match tokio::time::timeout(STATS_TIMEOUT, state.store.parked_count()).await {
        Ok(Ok(parked)) => state.metrics.queue.parked.set(parked as i64),
        _ => state.metrics.count_store_error("parked_count"),
    }
    let answers = tokio::time::timeout(STATS_TIMEOUT, state.store.ping()).await;
    state
        .metrics
        .service
        .ready
        .set(i64::from(matches!(answers, Ok(Ok(())))));
    match tokio::time::timeout(STATS_TIMEOUT, payout_queue(&state)).await {
        Ok(Ok(())) => {}
        _ => state.metrics.count_store_error("payout_queue"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Requested payouts read at most, per scrape, for the queue's gauges.
const PAYOUTS_READ: usize = 5_000;

/// Sets the payout queue's gauges from the requested payouts.
async fn payout_queue(state: &AdminState) -> Result<(), crate::store::StoreError> {
    use crate::conversions::book::PayoutStatus;
    let waiting = state
        .store
        .payouts(Some(PayoutStatus::Requested), None, PAYOUTS_READ)
        .await?;
    let gauges = &state.metrics.payouts_waiting;
    // Each currency paid out reads its figures, 0 when none waits.
    let mut by_currency: std::collections::BTreeMap<_, (i64, f64)> = state
        .metrics
        .currencies()
        .iter()
        .map(|c| (*c, (0, 0.0)))
        .collect();
    for payout in &waiting {
        let figures = by_currency.entry(payout.currency).or_default();
        figures.0 += 1;
        figures.1 += f64::try_from(payout.amount).unwrap_or(0.0);
    }
    for (currency, (count, amount)) in by_currency {
        gauges
            .count
            .with_label_values(&[currency.code()])
            .set(count);
        gauges
            .amount
            .with_label_values(&[currency.code()])
            .set(amount);
    }
    let oldest = waiting
        .first()
        .map_or(0, |p| (chrono::Utc::now() - p.requested_at).num_seconds());
    gauges.oldest_seconds.set(oldest.max(0));
    Ok(())
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            state.metrics.count_store_error("ping");
            tracing::warn!(error = %e, "readiness check: store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}
