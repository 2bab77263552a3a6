//! Holds (admin): customers whose signup came sooner after the click than
//! `attribution.min_click_age`, their commissions waiting, and the
//! decision that releases or rejects them.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::api::auth::Caller;
use crate::api::{page_limit, ApiError, ApiState, JsonBody};
use crate::conversions::book::{self, BookRequest, BookView, ConversionCell, HoldConflict};
use crate::conversions::customer::Customer;
use crate::conversions::hold::{HoldDecision, HoldReason, HoldStatus};
use crate::conversions::money::Currency;
use crate::conversions::step::{self, Computed, StepError};
use crate::ids::{CustomerId, PartnerId};

/// Holds per page by default, and at most: each reads its customer.
const PAGE: usize = 50;
const MAX_PAGE: usize = 100;
/// Attempts at a decision while the worker moves the same book.
const MAX_ATTEMPTS: usize = 20;

/// A hold as the API shows it. Its id is the customer's: a customer is
/// held at most once.
#[derive(Debug, Serialize)]
pub struct HoldView {
    id: String,
    customer: String,
    partner: PartnerId,
    reason: HoldReason,
    status: HoldStatus,
    click_at: DateTime<Utc>,
    signed_up_at: Option<DateTime<Utc>>,
    click_to_signup_seconds: i64,
    /// What the customer earned the partner so far, per currency: on
    /// hold, released, or taken back.
    amounts: Vec<HeldAmount>,
    decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct HeldAmount {
    currency: Currency,
    amount: Decimal,
}

impl HoldView {
    /// The view of a held customer's record; `None` when it has no hold.
    fn of(customer: &Customer, state: &ApiState) -> Option<HoldView> {
        let hold = customer.hold.as_ref()?;
        let amounts = book::posted_amounts(customer, &state.config.rules())
            .into_iter()
            .map(|(currency, amount)| HeldAmount {
                currency,
                amount: currency.shown(amount),
            })
            .collect();
        let time = DateTime::from_timestamp_millis;
        Some(HoldView {
            id: customer.id.clone(),
            customer: customer.id.clone(),
            partner: customer.referral.partner.clone(),
            reason: hold.reason,
            status: hold.status,
            click_at: DateTime::from_timestamp(customer.referral.click_at, 0).unwrap_or_default(),
            signed_up_at: customer.signup.as_ref().and_then(|s| time(s.key.at)),
            click_to_signup_seconds: hold.click_age_ms / 1000,
            amounts,
            decided_at: hold.decided_at.and_then(time),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct HoldPage {
    holds: Vec<HoldView>,
    /// Pass as `cursor` for the next page; `null` on the last. A page
    /// filtered by `status` may hold fewer than `limit` holds and still
    /// have a next one.
    next_cursor: Option<String>,
}

/// Every held customer, oldest signup first (admin only).
pub async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HoldPage>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(HoldStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_status", "`status` is held, released or rejected")
        })?),
    };
    let limit = page_limit(query.limit.as_deref(), PAGE, MAX_PAGE)?;
    let cursor = query.cursor.as_deref();
    if cursor.is_some_and(|c| c.len() > 200) {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "`cursor` must be a next_cursor from a previous page",
        ));
    }
    let entries = state.store.holds(cursor, limit).await?;
    let next_cursor = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.cursor()))
        .flatten();
    let mut holds = Vec::with_capacity(entries.len());
    for entry in entries {
        let customer = state
            .customer_record(&entry.partner, &entry.customer)
            .await?;
        let view = customer.as_ref().and_then(|c| HoldView::of(c, &state));
        holds.extend(view.filter(|v| status.is_none_or(|s| v.status == s)));
    }
    Ok(Json(HoldPage { holds, next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    action: String,
}

/// Releases or rejects a hold (admin only).
pub async fn decide(
    caller: Caller,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<DecideRequest>,
) -> Result<Json<HoldView>, ApiError> {
    caller.require_admin()?;
    let decision = match body.action.as_str() {
        "release" => HoldDecision::Release,
        "reject" => HoldDecision::Reject,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_action",
                "`action` is release or reject",
            ))
        }
    };
    let customer = CustomerId::parse(&raw).map_err(|_| ApiError::NotFound("hold"))?;
    let partner = state
        .store
        .hold_partner(&customer)
        .await?
        .ok_or(ApiError::NotFound("hold"))?;
    let id = customer.as_str();
    let rules = state.config.rules();
    let now = Utc::now();
    let compute = |view: BookView, request: &BookRequest| {
        let customer = view.customers.get(id).ok_or(ApiError::NotFound("hold"))?;
        let cell = ConversionCell::of(&customer.referral);
        if !request.cells.contains(&cell) {
            let mut more = request.clone();
            more.cells.insert(cell);
            return Ok(Computed::Load(more));
        }
        let counts = view.cells.get(&cell).cloned().unwrap_or_default();
        let changes = book::decide_hold(&view.book, customer, &counts, decision, &rules, now)
            .map_err(conflict)?;
        Ok::<_, ApiError>(Computed::Done(changes, ()))
    };
    let request = BookRequest {
        customers: [id.to_owned()].into(),
        ..BookRequest::default()
    };
    let (changes, ()) = step::commit_with_retry(
        state.store.as_ref(),
        &rules,
        &partner,
        &request,
        MAX_ATTEMPTS,
        compute,
    )
    .await
    .map_err(|e| match e {
        StepError::Store(e) => e.into(),
        StepError::Refused(refused) => refused,
    })?;
    let decided = &changes.customers[0];
    HoldView::of(decided, &state)
        .map(Json)
        .ok_or(ApiError::NotFound("hold"))
}

fn conflict(conflict: HoldConflict) -> ApiError {
    match conflict {
        HoldConflict::NotHeld(_) => ApiError::NotFound("hold"),
        HoldConflict::Decided(..) => ApiError::StateConflict {
            code: "hold_decided",
            message: conflict.to_string(),
        },
    }
}
