//! `/v1/partners/{id}/report`: the UTM performance report in JSON.

use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::Utc;

use super::{ApiError, ApiState, PartnerScope};
use crate::report::{self, ReportQuery};

pub async fn partner_report(
    scope: PartnerScope,
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let today = Utc::now().date_naive();
    let query = ReportQuery::parse(query.as_deref(), today, state.config.api.max_report_days)
        .map_err(|e| ApiError::bad_request(invalid_code(e.param), e.message))?;
    if state.store.partner(&scope.id).await?.is_none() {
        return Err(ApiError::NotFound("partner"));
    }
    let report = report::build(state.store.as_ref(), &scope.id, &query).await?;
    Ok(Json(report.to_json()))
}

fn invalid_code(param: &str) -> &'static str {
    match param {
        "from" => "invalid_from",
        "to" => "invalid_to",
        _ => "invalid_group_by",
    }
}
