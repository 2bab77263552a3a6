//! `POST /v1/events`: conversion events from the merchant's backend.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ApiState, JsonBody};
use crate::auth::Caller;
use crate::events::validate_batch;

#[derive(Serialize)]
pub struct Accepted {
    accepted: usize,
    duplicates: usize,
}

/// Validates the whole batch, then queues it: all or nothing.
pub async fn create(
    caller: Caller,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    if caller != Caller::Merchant {
        return Err(ApiError::Forbidden);
    }
    let events = validate_batch(&body).map_err(ApiError::InvalidEvents)?;
    let enqueued = state.store.enqueue_events(&events).await?;
    let kind = match events.as_slice() {
        [one] => one.kind.name(),
        _ => "batch",
    };
    state
        .metrics
        .count_received(kind, "queued", enqueued.accepted);
    state
        .metrics
        .count_received(kind, "duplicate", enqueued.duplicates);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: enqueued.accepted,
            duplicates: enqueued.duplicates,
        }),
    ))
}
