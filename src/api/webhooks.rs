//! `/v1/webhooks` (admin): the endpoints the program's events are sent
//! to. The signing secret is answered once, when an endpoint is created.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::{ApiError, ApiState, JsonBody};
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

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => Ok(()),
        _ => Err(ApiError::Forbidden),
    }
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
    admin_only(&caller)?;
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
    admin_only(&caller)?;
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
    admin_only(&caller)?;
    if id.len() > 64 || !state.store.delete_webhook(&id).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}
