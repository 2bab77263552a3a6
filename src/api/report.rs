//! `/v1/partners/{id}/report` and `/v1/report`: the UTM performance report,
//! JSON by default, CSV with `format=csv` or `Accept: text/csv`.

use axum::extract::{RawQuery, State};
use std::sync::Arc;

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, ApiState, PartnerScope};
use crate::api::auth::Caller;
use crate::report::{self, Report, ReportQuery};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Csv,
}

/// `format=csv|json` wins; else `Accept: text/csv` asks for CSV.
pub(super) fn format(query: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
    let asked = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.into_owned());
    match asked.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("json") => Ok(Format::Json),
        Some(_) => Err(ApiError::bad_request(
            "invalid_format",
            "`format` is csv or json",
        )),
        None => {
            let accept = headers
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Ok(if accept.contains("text/csv") {
                Format::Csv
            } else {
                Format::Json
            })
        }
    }
}

fn parse_query(query: Option<&str>, state: &ApiState) -> Result<ReportQuery, ApiError> {
    let today = Utc::now().date_naive();
    ReportQuery::parse(query, today, state.config.api.max_report_days)
        .map_err(|e| ApiError::bad_request(invalid_code(e.param), e.message))
}

/// A JSON body serialized already (off the runtime's threads).
fn json_text(body: String) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn csv(body: String) -> Response {
    ([(CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

/// One of the `report.max_concurrent` slots, held while a report is built.
async fn report_slot(state: &ApiState) -> Result<OwnedSemaphorePermit, ApiError> {
    let slots = Arc::clone(&state.report_slots);
    let wait = state.config.report.slot_wait;
    match tokio::time::timeout(wait, slots.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => {
            state.metrics.count_refused("reports_busy");
            Err(ApiError::ReportsBusy)
        }
    }
}

/// Renders a report (JSON or CSV, up to `report.max_rows` rows a partner)
/// on a low-priority thread, off the runtime's threads.
async fn render<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    crate::low_priority::run(work).await
}

/// `X-Next-Page` when there are more rows, in both forms.
fn with_next_page(mut response: Response, next_page: Option<usize>) -> Response {
    if let Some(next) = next_page {
        response.headers_mut().insert(
            HeaderName::from_static("x-next-page"),
            HeaderValue::from(next),
        );
    }
    response
}

pub async fn partner_report(
    scope: PartnerScope,
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = format(query.as_deref(), &headers)?;
    let query = parse_query(query.as_deref(), &state)?;
    state.existing_partner(&scope.id).await?;
    let _slot = report_slot(&state).await?;
    let max_rows = state.config.report.max_rows;
    let report = report::build(state.store.as_ref(), &scope.id, &query, max_rows).await?;
    let next_page = report.next_page;
    let response = match format {
        Format::Json => json_text(render(move || report.to_json().to_string()).await),
        Format::Csv => csv(render(move || report.to_csv()).await),
    };
    Ok(with_next_page(response, next_page))
}

/// Every partner's report, one after the other (admin only). Totals add the
/// partners' figures; unique visitors are summed, since a visitor counted
/// by two partners is two partners' visitor.
pub async fn all_partners(
    caller: Caller,
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let format = format(query.as_deref(), &headers)?;
    let query = parse_query(query.as_deref(), &state)?;
    let catalog = state.store.load_catalog().await?;
    let _slot = report_slot(&state).await?;
    let max_rows = state.config.report.max_rows;
    let mut reports: Vec<Report> = Vec::with_capacity(catalog.partners.len());
    for partner in &catalog.partners {
        reports.push(report::build(state.store.as_ref(), &partner.id, &query, max_rows).await?);
    }
    // A page of each partner's rows: the next page while any has more.
    let next_page = reports.iter().filter_map(|r| r.next_page).max();
    reports.sort_by(|a, b| a.partner.cmp(&b.partner));
    let response = match format {
        Format::Json => {
            let body = render(move || {
                let totals = report::sum_totals(&reports);
                let partners: Vec<Value> = reports.iter().map(Report::to_json).collect();
                json!({
                    "from": query.from,
                    "to": query.to,
                    "partners": partners,
                    "next_page": next_page,
                    "totals": totals.totals_json(),
                })
                .to_string()
            });
            json_text(body.await)
        }
        Format::Csv => {
            csv(render(move || report::all_to_csv(&reports, &report::sum_totals(&reports))).await)
        }
    };
    Ok(with_next_page(response, next_page))
}

fn invalid_code(param: &str) -> &'static str {
    match param {
        "from" => "invalid_from",
        "page" => "invalid_page",
        "to" => "invalid_to",
        _ => "invalid_group_by",
    }
}
