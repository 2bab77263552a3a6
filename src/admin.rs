//! The admin listener's routes: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::clicks::ClickQueue;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub clicks: ClickQueue,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // The queue depth is read at scrape time so the redirect never pays for it.
    state
        .metrics
        .click_queue_depth
        .set(state.clicks.depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
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
