//! `/v1/webhooks` (admin): the endpoints the program's events are sent
//! to, and what was sent to each. The signing secret is answered once,
//! when an endpoint is created.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::{page_limit, seq_cursor, ApiError, ApiState, JsonBody};
use crate::webhooks::delivery::{outcome_label, DeliveryStatus, WebhookDelivery};
use crate::webhooks::{self, WebhookEndpoint, WebhookEventType, MAX_ENDPOINTS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    url: String,
    events: Vec<String>,
}

/// An endpoint as listed: without its secret.
#[derive(Serialize)]
pub struct EndpointView {
    id: String,
    url: String,
    events: Vec<WebhookEventType>,
    created_at: DateTime<Utc>,
    /// Only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<WebhookEndpoint> for EndpointView {
    fn from(endpoint: WebhookEndpoint) -> Self {
        EndpointView {
            id: endpoint.id,
            url: endpoint.url,
            events: endpoint.events,
            created_at: endpoint.created_at,
            secret: None,
        }
    }
}

#[derive(Serialize)]
pub struct EndpointList {
    webhooks: Vec<EndpointView>,
}

/// The events named, each once, in a fixed order; the error names one
/// that is not an event.
fn event_types(names: &[String]) -> Result<Vec<WebhookEventType>, ApiError> {
    if names.is_empty() || names.len() > WebhookEventType::ALL.len() * 4 {
        return Err(ApiError::bad_request(
            "invalid_events",
            format!(
                "`events` lists the events to send: 1 to {} names",
                WebhookEventType::ALL.len() * 4
            ),
        ));
    }
    let mut types = names
        .iter()
        .map(|name| {
            WebhookEventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = WebhookEventType::ALL.iter().map(|t| t.as_str()).collect();
                ApiError::bad_request(
                    "invalid_events",
                    format!(
                        "`{}` is not an event; events are {}",
                        name.escape_debug(),
                        known.join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    types.sort();
    types.dedup();
    Ok(types)
}

pub async fn create(
    caller: Caller,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<NewEndpoint>,
) -> Result<(StatusCode, Json<EndpointView>), ApiError> {
    caller.require_admin()?;
    let url = webhooks::check_url(&body.url, state.config.webhooks.allow_http)
        .map_err(|m| ApiError::bad_request("invalid_url", m))?;
    let events = event_types(&body.events)?;
    if state.store.webhooks().await?.len() >= MAX_ENDPOINTS {
        return Err(ApiError::Unprocessable {
            code: "too_many_webhooks",
            message: format!("at most {MAX_ENDPOINTS} webhook endpoints"),
        });
    }
    let endpoint = WebhookEndpoint {
        id: webhooks::new_endpoint_id(),
        url: url.to_string(),
        events,
        secret: webhooks::new_secret(),
        created_at: Utc::now(),
    };
    state.store.insert_webhook(&endpoint).await?;
    let secret = endpoint.secret.clone();
    let mut view = EndpointView::from(endpoint);
    view.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<Json<EndpointList>, ApiError> {
    caller.require_admin()?;
    let webhooks = state.store.webhooks().await?;
    Ok(Json(EndpointList {
        webhooks: webhooks.into_iter().map(EndpointView::from).collect(),
    }))
}

pub async fn delete(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if id.len() > 64 || !state.store.delete_webhook(&id).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A delivery as listed: the body is the event as sent, not repeated.
#[derive(Serialize)]
pub struct DeliveryView {
    event_id: String,
    event_type: WebhookEventType,
    status: DeliveryStatus,
    attempts: u32,
    event_created_at: DateTime<Utc>,
    last_attempt_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    response_status: Option<u16>,
    error: Option<String>,
}

impl From<WebhookDelivery> for DeliveryView {
    fn from(d: WebhookDelivery) -> Self {
        DeliveryView {
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            event_created_at: d.event_created_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            response_status: d.response_status,
            error: d.error,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct DeliveryPage {
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

/// The endpoint named in the path, or 404.
async fn endpoint(state: &ApiState, id: &str) -> Result<WebhookEndpoint, ApiError> {
    let endpoints = state.store.webhooks().await?;
    endpoints
        .into_iter()
        .find(|e| e.id == id)
        .ok_or(ApiError::NotFound("webhook"))
}

/// An endpoint's deliveries, newest first: each event's last attempt.
pub async fn deliveries(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let before = seq_cursor(query.cursor.as_deref())?;
    let limit = page_limit(query.limit.as_deref(), 50, 100)?;
    let endpoint = endpoint(&state, &id).await?;
    let found = state.store.deliveries(&endpoint.id, before, limit).await?;
    let next_cursor = match found.last() {
        Some(last) if found.len() == limit => Some(last.seq.to_string()),
        _ => None,
    };
    Ok(Json(DeliveryPage {
        deliveries: found.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// Sends a delivered or failed event again, now, with the same id and
/// body, and answers how it went. A pending one is the delivery task's.
pub async fn resend(
    caller: Caller,
    State(state): State<ApiState>,
    Path((id, event)): Path<(String, String)>,
) -> Result<Json<DeliveryView>, ApiError> {
    caller.require_admin()?;
    let endpoint = endpoint(&state, &id).await?;
    let mut delivery = state
        .store
        .delivery(&endpoint.id, &event)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    if delivery.status == DeliveryStatus::Pending {
        return Err(ApiError::StateConflict {
            code: "delivery_pending",
            message: "the delivery is being retried; resend it once it succeeded or failed".into(),
        });
    }
    let answer = state
        .webhook_sender
        .send(&endpoint, &delivery.event())
        .await;
    delivery.attempted(&answer, Utc::now());
    delivery.status = if answer.succeeded() {
        DeliveryStatus::Succeeded
    } else {
        DeliveryStatus::Failed
    };
    state.metrics.webhooks.count(outcome_label(delivery.status));
    if !state
        .store
        .save_delivery(&endpoint.id, None, Some(&delivery))
        .await?
    {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(Json(DeliveryView::from(delivery)))
}
