//! `POST /v1/events`: conversion events from the merchant's backend.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ApiState, JsonBody};
use crate::api::auth::Caller;
use crate::conversions::events::validate_batch;
use crate::store::ParkedEvent;

/// Parked or dead events listed at most.
const MAX_LISTED: usize = 1000;

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
    let latest = chrono::Utc::now() + state.config.attribution.clock_skew;
    let events = validate_batch(&body, latest).map_err(ApiError::InvalidEvents)?;
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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct Kept {
    events: Vec<KeptEvent>,
}

#[derive(Serialize)]
struct KeptEvent {
    event: crate::conversions::events::Event,
    parked_at: chrono::DateTime<chrono::Utc>,
    reason: &'static str,
}

/// `GET /v1/events/parked` (admin): events waiting for their customer's
/// signup, oldest first.
pub async fn parked(
    caller: Caller,
    state: State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Kept>, ApiError> {
    list(caller, state, query, false).await
}

/// `GET /v1/events/dead` (admin): parked events whose customer never
/// signed up within `worker.park_for`.
pub async fn dead(
    caller: Caller,
    state: State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Kept>, ApiError> {
    list(caller, state, query, true).await
}

#[derive(Serialize)]
pub struct UnreadableList {
    events: Vec<UnreadableEntry>,
}

#[derive(Serialize)]
struct UnreadableEntry {
    delivery: String,
    raw: String,
    reason: String,
    dead_lettered_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/events/unreadable` (admin): queue entries that were not
/// events, moved to the dead letter by the worker, oldest first.
pub async fn unreadable(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UnreadableList>, ApiError> {
    let limit = admin_list_limit(caller, query)?;
    let kept = state.store.unreadable_events(limit).await?;
    Ok(Json(UnreadableList {
        events: kept
            .into_iter()
            .map(|entry| UnreadableEntry {
                delivery: entry.delivery,
                raw: entry.raw,
                reason: entry.reason,
                dead_lettered_at: chrono::DateTime::from_timestamp_millis(entry.at_ms)
                    .unwrap_or_default(),
            })
            .collect(),
    }))
}

/// The `limit` of an admin's list, 1 to `MAX_LISTED` (all of them when
/// not given).
fn admin_list_limit(
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<usize, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    Ok(match query.limit.as_deref() {
        None => MAX_LISTED,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LISTED).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    format!("`limit` must be 1 to {MAX_LISTED}"),
                )
            })?,
    })
}

async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    dead: bool,
) -> Result<Json<Kept>, ApiError> {
    let limit = admin_list_limit(caller, query)?;
    let kept = state.store.parked_events(dead, limit).await?;
    let reason = if dead {
        "no_signup_within_park_for"
    } else {
        "no_signup"
    };
    Ok(Json(Kept {
        events: kept
            .into_iter()
            .map(|ParkedEvent { event, parked_at }| KeptEvent {
                event,
                parked_at: chrono::DateTime::from_timestamp_millis(parked_at).unwrap_or_default(),
                reason,
            })
            .collect(),
    }))
}
