//! The `/v1` JSON API (axum) and its extractors.
//!
//! Routes:
//! - `POST /v1/partners` (admin): create a partner; answers its token once
//! - `GET /v1/partners` (admin): every partner with its status and balances
//! - `GET|PATCH /v1/partners/{id}` (admin, that partner)
//! - `POST|GET /v1/partners/{id}/campaigns` (admin, that partner): Campaign Builder
//! - `POST|GET /v1/partners/{id}/coupons` (admin, that partner): coupon
//!   codes that credit signups without a click
//! - `GET /v1/partners/{id}/report` (admin, that partner): UTM report
//! - `POST /v1/events` (merchant): conversion events
//! - `GET /v1/events/parked|dead` (admin): events waiting for their
//!   customer's signup, and those that waited past `worker.park_for`
//! - `GET /v1/events/unreadable` (admin): queue entries that were not
//!   events, in the dead letter
//! - `GET /v1/partners/{id}/balance|ledger|statement` (admin, that
//!   partner): money
//! - `POST|GET /v1/partners/{id}/payouts` (admin, that partner): request a
//!   payout, list the partner's
//! - `GET /v1/payouts`, `PATCH /v1/payouts/{id}` (admin): the payout queue
//! - `GET /v1/holds`, `POST /v1/holds/{id}` (admin): customers whose
//!   commissions wait because they signed up too soon after the click
//! - `GET /v1/customers/{id}/attribution` (admin, merchant): why the
//!   customer was credited to whom, and the visitor's clicks that lost
//! - `POST|GET /v1/webhooks`, `DELETE /v1/webhooks/{id}` (admin): webhook
//!   endpoints; `GET /v1/webhooks/{id}/deliveries` and
//!   `POST …/deliveries/{event}/resend`: what was sent, and again
//! - `GET /v1/openapi.json` (anyone): this API's OpenAPI document

mod attribution;
pub mod auth;
mod body;
mod campaigns;
mod coupons;
mod error;
mod events;
mod holds;
mod money;
mod openapi;
mod pages;
mod partners;
mod payouts;
mod rate;
mod report;
mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{delete, get, patch, post};
use axum::Router;
use serde::de::DeserializeOwned;

pub use error::ApiError;
pub use rate::RateLimits;

use crate::api::auth::{bearer, token_hash, Caller, RoleTokens};
use crate::config::Config;
use crate::edge::cache::RouteCache;
use crate::ids::PartnerId;
use crate::metrics::Metrics;
use crate::store::prelude::*;
use crate::store::Partner;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub routes: Arc<RouteCache>,
    pub roles: RoleTokens,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// `report.max_concurrent` permits: one per report being built.
    pub report_slots: Arc<tokio::sync::Semaphore>,
    /// `api.rate_limit` and `api.rate_burst`, per caller.
    pub rate_limits: Arc<RateLimits>,
    /// Sends a webhook delivery again when an admin asks.
    pub webhook_sender: Arc<crate::webhooks::delivery::Sender>,
}

/// A numeric `cursor` parameter (a position to page back from), when
/// given.
pub(crate) fn seq_cursor(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|text| {
        text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` must be a next_cursor from a previous page",
            )
        })
    })
    .transpose()
}

/// A list's `limit` parameter: `default` when absent, else 1 to `max`.
pub(crate) fn page_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {max}"))
            }),
    }
}

impl ApiState {
    /// A customer's record in its partner's book, if the book has it.
    async fn customer_record(
        &self,
        partner: &PartnerId,
        customer: &str,
    ) -> Result<Option<crate::conversions::customer::Customer>, ApiError> {
        let request = crate::conversions::book::BookRequest {
            customers: [customer.to_owned()].into(),
            ..Default::default()
        };
        let mut view = self.store.load_book(partner, &request).await?;
        Ok(view.customers.remove(customer))
    }

    async fn existing_partner(&self, id: &PartnerId) -> Result<Partner, ApiError> {
        self.store
            .partner(id)
            .await?
            .ok_or(ApiError::NotFound("partner"))
    }

    /// The scope's partner, about to create or pay out: a disabled
    /// partner's own token may not (an admin may, to settle its account).
    async fn acting_partner(&self, scope: &PartnerScope) -> Result<Partner, ApiError> {
        let partner = self.existing_partner(&scope.id).await?;
        if partner.disabled && matches!(scope.caller, Caller::Partner(_)) {
            return Err(ApiError::PartnerDisabled);
        }
        Ok(partner)
    }

    /// Makes a catalog change visible to this instance's redirects at once
    /// (other instances pick it up within `cache.refresh`).
    async fn refresh_routes(&self) {
        if let Err(e) = self.routes.refresh(self.store.as_ref()).await {
            tracing::warn!(error = %e, "route cache refresh after a change failed");
        }
    }
}

/// The `/v1` router; the public listener sends it every non-redirect path.
pub fn router(state: ApiState) -> Router {
    let body_limit = state.config.api.max_body_bytes;
    Router::new()
        .route("/v1/partners", post(partners::create).get(partners::list))
        .route(
            "/v1/partners/{id}",
            get(partners::show).patch(partners::update),
        )
        .route(
            "/v1/partners/{id}/campaigns",
            post(campaigns::create).get(campaigns::list),
        )
        .route(
            "/v1/partners/{id}/coupons",
            post(coupons::create).get(coupons::list),
        )
        .route("/v1/partners/{id}/report", get(report::partner_report))
        .route("/v1/partners/{id}/balance", get(money::balance))
        .route("/v1/partners/{id}/ledger", get(money::ledger))
        .route("/v1/partners/{id}/statement", get(money::statement))
        .route(
            "/v1/partners/{id}/payouts",
            post(payouts::request).get(payouts::partner_list),
        )
        .route("/v1/payouts", get(payouts::list))
        .route("/v1/payouts/{id}", patch(payouts::settle))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{event}/resend",
            post(webhooks::resend),
        )
        .route("/v1/holds", get(holds::list))
        .route("/v1/customers/{id}/attribution", get(attribution::explain))
        .route("/v1/holds/{id}", post(holds::decide))
        .route("/v1/events", post(events::create))
        .route("/v1/events/parked", get(events::parked))
        .route("/v1/events/dead", get(events::dead))
        .route("/v1/events/unreadable", get(events::unreadable))
        .route("/v1/report", get(report::all_partners))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/dashboard", get(pages::dashboard))
        .route("/admin", get(pages::console))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Self::of_token(parts, state).await?;
        state
            .rate_limits
            .take(&caller, std::time::Instant::now())
            .map_err(|wait| {
                state.metrics.count_refused("rate_limited");
                ApiError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                }
            })?;
        Ok(caller)
    }
}

impl Caller {
    /// The caller the request's bearer token proves.
    async fn of_token(parts: &Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(ApiError::Unauthorized)?;
        if let Some(role) = state.roles.role_of(token) {
            return Ok(role);
        }
        match state
            .store
            .partner_by_token_hash(&token_hash(token))
            .await?
        {
            Some(partner) => Ok(Caller::Partner(partner)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The `{id}` of a partner route, already checked against the caller:
/// admins reach every partner, a partner only itself.
pub struct PartnerScope {
    pub id: PartnerId,
    pub caller: Caller,
}

impl FromRequestParts<ApiState> for PartnerScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("partner"))?;
        match &caller {
            Caller::Admin => {}
            Caller::Partner(own) if own.as_str() == raw => {}
            Caller::Partner(_) | Caller::Merchant => return Err(ApiError::Forbidden),
        }
        let id = PartnerId::parse(&raw).map_err(|_| ApiError::NotFound("partner"))?;
        Ok(PartnerScope { id, caller })
    }
}

/// A JSON body whose every failure is an [`ApiError`]: 413 over
/// `api.max_body_bytes`, 400 for malformed JSON, unknown fields or wrong
/// types. The content type is not checked: the body is.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, ApiError> {
        let bytes = body::read(req.into_body(), &state.config.api)
            .await
            .inspect_err(|e| {
                if matches!(e, ApiError::BodyTimeout) {
                    state.metrics.count_refused("body_timeout");
                }
            })?;
        crate::json::refuse_repeated_keys(&bytes)
            .map_err(|e| ApiError::bad_request("duplicate_key", e.to_string()))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::bad_request("invalid_body", e.to_string()),
                _ => ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")),
            }
        })
    }
}

/// Text fields people type (names): trimmed, 1..=`max` characters, no
/// control characters.
fn clean_text(
    value: &str,
    max: usize,
    code: &'static str,
    field: &str,
) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            code,
            format!("`{field}` must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(value.to_owned())
}
