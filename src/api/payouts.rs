//! Payouts: a partner requests one (`POST …/payouts`), the program team
//! lists them (`GET /v1/payouts`, PayPal's bulk file with
//! `format=paypal`) and records how each ended (`PATCH /v1/payouts/{id}`).
//!
//! Each step is one commit of the partner's book, guarded by its version,
//! so a step is applied once however often it is sent or retried. The
//! cross-partner index (the Redis store's) is written before the commit
//! and checked against the records when read, so a committed payout is
//! always listed.

use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{clean_text, ApiError, ApiState, JsonBody, PartnerScope};
use crate::api::auth::Caller;
use crate::api::page_limit;
use crate::conversions::book::{
    self, BookRequest, Payout, PayoutConflict, PayoutRefusal, PayoutStatus, Settlement,
};
use crate::conversions::money::Currency;
use crate::conversions::step::{self, Computed, StepError};
use crate::csv::CsvWriter;
use crate::ids::{PartnerId, PayoutId};

/// Payouts per page by default, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Rows PayPal takes in one bulk upload file.
const PAYPAL_MAX_ROWS: usize = 5_000;
/// Commits against a book that the worker keeps moving.
const MAX_ATTEMPTS: usize = 100;
/// Longest PayPal reference and failure reason, in characters.
const MAX_REFERENCE: usize = 128;
const MAX_REASON: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayoutRequest {
    currency: String,
}

/// Requests a payout of the whole available balance of one currency.
pub async fn request(
    scope: PartnerScope,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<PayoutRequest>,
) -> Result<(StatusCode, Json<Payout>), ApiError> {
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
    let now = Utc::now();
    let id = PayoutId::new(now.timestamp_millis());
    let email = partner.paypal_email.as_deref();
    let compute = |view: book::BookView, _: &BookRequest| {
        let changes =
            book::request_payout(&view.book, &rules, &partner.id, email, &id, currency, now)?;
        Ok::<_, PayoutRefusal>(Computed::Done(changes, ()))
    };
    // Refused before anything is indexed, in the common case; the commit
    // below decides all the same.
    let view = state
        .store
        .load_book(&partner.id, &BookRequest::default())
        .await?;
    let Computed::Done(first, ()) = compute(view, &BookRequest::default()).map_err(refused)? else {
        unreachable!("a payout request needs nothing more")
    };
    state.store.index_payout(&first.payouts[0]).await?;
    let store = state.store.as_ref();
    let (changes, ()) = step::commit_with_retry(
        store,
        &rules,
        &partner.id,
        &BookRequest::default(),
        MAX_ATTEMPTS,
        compute,
    )
    .await
    .map_err(|e| step_error(e, refused))?;
    let payout = changes.payouts.into_iter().next().expect("one payout");
    state.metrics.count_payout(&payout);
    Ok((StatusCode::CREATED, Json(payout)))
}

fn refused(refusal: PayoutRefusal) -> ApiError {
    ApiError::Unprocessable {
        code: refusal.code(),
        message: refusal.to_string(),
    }
}

fn step_error<E>(e: StepError<E>, refused: impl FnOnce(E) -> ApiError) -> ApiError {
    match e {
        StepError::Store(e) => e.into(),
        StepError::Refused(refusal) => refused(refusal),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    status: String,
    reference: Option<String>,
    reason: Option<String>,
}

impl SettleRequest {
    fn settlement(self) -> Result<Settlement, ApiError> {
        let misplaced = |field: &str, status: &str| {
            ApiError::bad_request(
                "invalid_body",
                format!("`{field}` does not go with status `{status}`"),
            )
        };
        match self.status.as_str() {
            "paid" => {
                if self.reason.is_some() {
                    return Err(misplaced("reason", "paid"));
                }
                let reference = self.reference.ok_or_else(|| {
                    ApiError::bad_request("missing_reference", "a paid payout needs `reference`")
                })?;
                let reference =
                    clean_text(&reference, MAX_REFERENCE, "invalid_reference", "reference")?;
                Ok(Settlement::Paid { reference })
            }
            "failed" => {
                if self.reference.is_some() {
                    return Err(misplaced("reference", "failed"));
                }
                let reason = self.reason.ok_or_else(|| {
                    ApiError::bad_request("missing_reason", "a failed payout needs `reason`")
                })?;
                let reason = clean_text(&reason, MAX_REASON, "invalid_reason", "reason")?;
                Ok(Settlement::Failed { reason })
            }
            _ => Err(ApiError::bad_request(
                "invalid_status",
                "`status` is `paid` or `failed`",
            )),
        }
    }
}

/// Records that a requested payout was paid, or failed (admin only).
pub async fn settle(
    caller: Caller,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<SettleRequest>,
) -> Result<Json<Payout>, ApiError> {
    caller.require_admin()?;
    let settlement = body.settlement()?;
    let id = PayoutId::parse(&raw).map_err(|_| ApiError::NotFound("payout"))?;
    let partner = state
        .store
        .payout_partner(&id)
        .await?
        .ok_or(ApiError::NotFound("payout"))?;
    let request = BookRequest {
        payouts: [id.clone()].into(),
        ..BookRequest::default()
    };
    let current = state.store.load_book(&partner, &request).await?;
    let payout = current
        .payouts
        .get(&id)
        .ok_or(ApiError::NotFound("payout"))?;
    let settled =
        book::settle_payout(&current.book, payout, &settlement, Utc::now()).map_err(conflict)?;
    state.store.index_payout(&settled.payouts[0]).await?;
    let now = Utc::now();
    let compute = |view: book::BookView, _: &BookRequest| {
        // Records are never removed: read above, it is there still.
        let payout = view.payouts.get(&id).ok_or(ApiError::NotFound("payout"))?;
        let changes =
            book::settle_payout(&view.book, payout, &settlement, now).map_err(conflict)?;
        Ok::<_, ApiError>(Computed::Done(changes, ()))
    };
    let (changes, ()) = step::commit_with_retry(
        state.store.as_ref(),
        &state.config.rules(),
        &partner,
        &request,
        MAX_ATTEMPTS,
        compute,
    )
    .await
    .map_err(|e| step_error(e, |refused| refused))?;
    state
        .store
        .unindex_payout(&id, PayoutStatus::Requested)
        .await?;
    let payout = changes.payouts.into_iter().next().expect("one payout");
    state.metrics.count_payout(&payout);
    Ok(Json(payout))
}

fn conflict(conflict: PayoutConflict) -> ApiError {
    ApiError::StateConflict {
        code: "payout_not_requested",
        message: conflict.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
    format: Option<String>,
    currency: Option<String>,
}

#[derive(Serialize)]
pub struct PayoutPage {
    payouts: Vec<Payout>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<PayoutId>,
}

/// Every partner's payouts, oldest first (admin only); PayPal's bulk
/// payout file with `format=paypal`.
pub async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(PayoutStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_status", "`status` is requested, paid or failed")
        })?),
    };
    let cursor = cursor(query.cursor.as_deref())?;
    match query.format.as_deref() {
        None | Some("json") if query.currency.is_some() => Err(ApiError::bad_request(
            "invalid_query",
            "`currency` picks the currency of `format=paypal`",
        )),
        None | Some("json") => {
            let limit = page_limit(query.limit.as_deref(), PAGE, MAX_PAGE)?;
            let payouts = state.store.payouts(status, cursor.as_ref(), limit).await?;
            Ok(Json(page(payouts, limit)).into_response())
        }
        Some("paypal") => paypal_file(&state, status, cursor, &query).await,
        Some(_) => Err(ApiError::bad_request(
            "invalid_format",
            "`format` is json or paypal",
        )),
    }
}

/// The partner's payouts, newest first.
pub async fn partner_list(
    scope: PartnerScope,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PayoutPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if query.status.is_some() || query.format.is_some() || query.currency.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a partner's payouts take `cursor` and `limit` only",
        ));
    }
    let before = cursor(query.cursor.as_deref())?;
    let limit = page_limit(query.limit.as_deref(), PAGE, MAX_PAGE)?;
    let partner = state.existing_partner(&scope.id).await?;
    let payouts = state
        .store
        .partner_payouts(&partner.id, before.as_ref(), limit)
        .await?;
    Ok(Json(page(payouts, limit)))
}

fn page(payouts: Vec<Payout>, limit: usize) -> PayoutPage {
    let next_cursor = (payouts.len() == limit)
        .then(|| payouts.last().map(|p| p.id.clone()))
        .flatten();
    PayoutPage {
        payouts,
        next_cursor,
    }
}

fn cursor(raw: Option<&str>) -> Result<Option<PayoutId>, ApiError> {
    raw.map(|text| {
        PayoutId::parse(text).map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` must be a next_cursor from a previous page",
            )
        })
    })
    .transpose()
}

/// PayPal's Payouts web upload file: no header, one payout per line:
/// recipient email, amount, currency, a unique id (the payout id), a note,
/// the wallet. One currency per file, at most 5,000 lines.
async fn paypal_file(
    state: &ApiState,
    status: Option<PayoutStatus>,
    cursor: Option<PayoutId>,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    if status != Some(PayoutStatus::Requested) {
        return Err(ApiError::bad_request(
            "invalid_status",
            "`format=paypal` lists `status=requested` payouts",
        ));
    }
    let limit = page_limit(query.limit.as_deref(), PAYPAL_MAX_ROWS, PAYPAL_MAX_ROWS)?;
    let currency = match query.currency.as_deref() {
        None => None,
        Some(code) => Some(Currency::parse(code).map_err(|_| {
            ApiError::bad_request("invalid_currency", "`currency` is an ISO 4217 code")
        })?),
    };
    let mut payouts = state.store.payouts(status, cursor.as_ref(), limit).await?;
    let last = (payouts.len() == limit)
        .then(|| payouts.last().map(|p| p.id.clone()))
        .flatten();
    if let Some(currency) = currency {
        payouts.retain(|p| p.currency == currency);
    }
    let mut currencies: Vec<Currency> = payouts.iter().map(|p| p.currency).collect();
    currencies.sort();
    currencies.dedup();
    if currencies.len() > 1 {
        let listed: Vec<&str> = currencies.iter().map(Currency::code).collect();
        return Err(ApiError::bad_request(
            "currency_required",
            format!(
                "PayPal takes one currency per file; pass `currency`, one of {}",
                listed.join(", ")
            ),
        ));
    }
    let mut file = CsvWriter::new();
    for payout in &payouts {
        file.line([
            payout.paypal_email.as_str(),
            &payout.amount.to_string(),
            payout.currency.code(),
            payout.id.as_str(),
            &paypal_note(&payout.partner),
            "PAYPAL",
        ]);
    }
    let mut response = (
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"paypal-payouts.csv\"",
            ),
        ],
        file.finish(),
    )
        .into_response();
    if let Some(last) = last {
        // More than one file's worth: the next file starts after this one.
        response.headers_mut().insert(
            "lastclick-next-cursor",
            axum::http::HeaderValue::from_str(last.as_str()).expect("ids are ASCII"),
        );
    }
    Ok(response)
}

/// The note the partner reads in PayPal (at most 400 characters).
fn paypal_note(partner: &PartnerId) -> String {
    format!("Partner program commission for {partner}")
}
