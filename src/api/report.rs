//! `/v1/partners/{id}/report` and `/v1/report`: the UTM performance report,
//! JSON by default, CSV with `format=csv` or `Accept: text/csv`.

use axum::extract::{RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::{ApiError, ApiState, PartnerScope};
use crate::api::auth::Caller;
use crate::report::{self, Report, ReportQuery};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// `format=csv|json` wins; else `Accept: text/csv` asks for CSV.
fn format(query: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
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

fn csv(body: String) -> Response {
    ([(CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
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
    let report = report::build(state.store.as_ref(), &scope.id, &query).await?;
    Ok(match format {
        Format::Json => Json(report.to_json()).into_response(),
        Format::Csv => csv(report.to_csv()),
    })
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
    if caller != Caller::Admin {
        return Err(ApiError::Forbidden);
    }
    let format = format(query.as_deref(), &headers)?;
    let query = parse_query(query.as_deref(), &state)?;
    let catalog = state.store.load_catalog().await?;
    let mut reports: Vec<Report> = Vec::with_capacity(catalog.partners.len());
    for partner in &catalog.partners {
        reports.push(report::build(state.store.as_ref(), &partner.id, &query).await?);
    }
    reports.sort_by(|a, b| a.partner.cmp(&b.partner));
    let totals = report::sum_totals(&reports);
    Ok(match format {
        Format::Json => {
            let partners: Vec<Value> = reports.iter().map(Report::to_json).collect();
            Json(json!({
                "from": query.from,
                "to": query.to,
                "partners": partners,
                "totals": totals.totals_json(),
            }))
            .into_response()
        }
        Format::Csv => csv(report::all_to_csv(&reports, &totals)),
    })
}

fn invalid_code(param: &str) -> &'static str {
    match param {
        "from" => "invalid_from",
        "to" => "invalid_to",
        _ => "invalid_group_by",
    }
}
