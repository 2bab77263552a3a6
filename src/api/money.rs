//! A partner's money: `GET …/balance`, `GET …/ledger`, `GET …/statement`.

use axum::extract::{Query, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{report, seq_cursor, ApiError, ApiState, PartnerScope};
use crate::conversions::book::{Balance, BookRequest, LedgerEntry};
use crate::conversions::money::Currency;
use crate::conversions::statement::{Month, Statement, StatementBuilder};
use crate::csv::CsvWriter;

/// Ledger entries per page by default, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Serialize)]
pub struct Balances {
    balances: Vec<Balance>,
    /// The smallest payout per currency (`payout.minimum`): a currency not
    /// listed is never paid out.
    payout_minimum: BTreeMap<Currency, Decimal>,
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
    let payout_minimum = state
        .config
        .payout
        .minimum
        .iter()
        .map(|(currency, minimum)| (*currency, currency.shown(*minimum)))
        .collect();
    Ok(Json(Balances {
        balances: view.book.balances(Utc::now()),
        payout_minimum,
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
    let before = seq_cursor(query.cursor.as_deref())?;
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

/// Ledger entries read per round while a statement adds them up.
const STATEMENT_ROUND: usize = 500;

/// A month's statement, JSON or CSV (`format=csv`, `Accept: text/csv`).
pub async fn statement(
    scope: PartnerScope,
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let format = report::format(raw.as_deref(), &headers)?;
    let mut month = None;
    for (key, value) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match &*key {
            "month" => month = Some(value.into_owned()),
            "format" => {}
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter `{}`", other.escape_debug()),
                ))
            }
        }
    }
    let month = match month {
        None => Month::of(Utc::now()),
        Some(text) => Month::parse(&text).ok_or_else(|| {
            ApiError::bad_request("invalid_month", "`month` is a UTC month, `YYYY-MM`")
        })?,
    };
    let partner = state.existing_partner(&scope.id).await?;
    let mut builder = StatementBuilder::new(month);
    let mut before = None;
    loop {
        let entries = state
            .store
            .ledger(&partner.id, before, STATEMENT_ROUND)
            .await?;
        for entry in &entries {
            builder.add(entry);
        }
        match entries.last() {
            Some(last) if entries.len() == STATEMENT_ROUND && last.seq > 1 => {
                before = Some(last.seq)
            }
            _ => break,
        }
    }
    let statement = builder.finish();
    Ok(match format {
        report::Format::Json => Json(statement).into_response(),
        report::Format::Csv => report::csv(statement_csv(&statement)),
    })
}

/// The statement as CSV: one line per currency with its figures, an
/// empty line, then the month's ledger lines.
fn statement_csv(statement: &Statement) -> String {
    let mut csv = CsvWriter::new();
    csv.line([
        "month",
        "currency",
        "opening_balance",
        "commissions",
        "clawbacks",
        "adjustments",
        "payouts_requested",
        "payouts_failed",
        "closing_balance",
        "opening_in_payout",
        "requested",
        "paid",
        "failed",
        "closing_in_payout",
    ]);
    for c in &statement.currencies {
        let code = c.currency.map(|c| c.code().to_owned()).unwrap_or_default();
        let figures = [
            c.opening_balance,
            c.commissions,
            c.clawbacks,
            c.adjustments,
            c.payouts_requested,
            c.payouts_failed,
            c.closing_balance,
            c.opening_in_payout,
            c.requested,
            c.paid,
            c.failed,
            c.closing_in_payout,
        ];
        let mut line = vec![statement.month.clone(), code];
        line.extend(figures.iter().map(Decimal::to_string));
        csv.line(line);
    }
    csv.line([""]);
    csv.line([
        "seq",
        "posted_at",
        "kind",
        "id",
        "customer",
        "amount",
        "currency",
        "payout_amount",
        "note",
    ]);
    for e in &statement.lines {
        let kind = serde_json::to_value(e.kind).unwrap_or_default();
        csv.line([
            e.seq.to_string(),
            e.posted_at.unwrap_or(e.at).to_rfc3339(),
            kind.as_str().unwrap_or_default().to_owned(),
            e.id.clone(),
            e.customer.clone().unwrap_or_default(),
            e.amount.to_string(),
            e.currency.code().to_owned(),
            e.payout_amount.map(|a| a.to_string()).unwrap_or_default(),
            e.note.clone().unwrap_or_default(),
        ]);
    }
    csv.finish()
}
