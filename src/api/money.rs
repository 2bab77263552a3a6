//! A partner's money: `GET …/balance`, `GET …/ledger`, `POST …/payouts`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, JsonBody, PartnerScope};
use crate::conversions::book::{self, Balance, BookRequest, LedgerEntry};
use crate::conversions::money::Currency;
use crate::conversions::step::{self, Computed, StepError};

/// Ledger entries per page by default, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Payout commits against a book that the worker keeps moving.
const MAX_ATTEMPTS: usize = 100;

#[derive(Serialize)]
pub struct Balances {
    balances: Vec<Balance>,
}

pub async fn balance(
    scope: PartnerScope,
    State(state): State<ApiState>,
) -> Result<Json<Balances>, ApiError> {
    let partner = state.existing_partner(&scope.id).await?;
    let view = state
        .store
        .load_book(&partner.id, &BookRequest::default())
        .await?;
    Ok(Json(Balances {
        balances: view.book.balances(Utc::now()),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct LedgerPage {
    entries: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    next_cursor: Option<String>,
}

pub async fn ledger(
    scope: PartnerScope,
    State(state): State<ApiState>,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LedgerPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let before = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` must be a next_cursor from a previous page",
            )
        })?),
    };
    let limit = match query.limit.as_deref() {
        None => PAGE,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_PAGE}"))
            })?,
    };
    let partner = state.existing_partner(&scope.id).await?;
    let entries = state.store.ledger(&partner.id, before, limit).await?;
    let next_cursor = match entries.last() {
        Some(last) if entries.len() == limit && last.seq > 1 => Some(last.seq.to_string()),
        _ => None,
    };
    Ok(Json(LedgerPage {
        entries,
        next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    currency: String,
}

/// Withdraws the whole available balance of one currency to PayPal.
pub async fn payout(
    scope: PartnerScope,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<PayoutRequest>,
) -> Result<(StatusCode, Json<LedgerEntry>), ApiError> {
    let currency = Currency::parse(&body.currency).map_err(|_| {
        ApiError::bad_request(
            "invalid_currency",
            format!(
                "`currency` is `{}`, not an ISO 4217 code",
                body.currency.escape_debug()
            ),
        )
    })?;
    let partner = state.acting_partner(&scope).await?;
    let rules = state.config.rules();
    let id = format!("po_{}", crate::ids::ClickId::random());
    let step = step::commit_with_retry(
        state.store.as_ref(),
        &partner.id,
        &BookRequest::default(),
        MAX_ATTEMPTS,
        |view, _| {
            let changes = book::payout(
                &view.book,
                &rules,
                partner.paypal_email.is_some(),
                &id,
                currency,
                Utc::now(),
            )?;
            Ok::<_, book::PayoutRefusal>(Computed::Done(changes, ()))
        },
    )
    .await;
    match step {
        Ok((changes, ())) => {
            let entry = changes
                .entries
                .into_iter()
                .next()
                .expect("a payout writes one entry");
            Ok((StatusCode::CREATED, Json(entry)))
        }
        Err(StepError::Store(e)) => Err(e.into()),
        Err(StepError::Refused(refusal)) => Err(ApiError::Unprocessable {
            code: refusal.code(),
            message: refusal.to_string(),
        }),
    }
}
