//! `GET /v1/customers/{id}/attribution` (admin, merchant): why a customer
//! was credited to whom. The credited click and how the signup named it,
//! the customer's locked rate and billing, its hold if any, and the same
//! visitor's other clicks, newest first, each with why it lost.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::api::auth::Caller;
use crate::api::{ApiError, ApiState};
use crate::conversions::customer::{Customer, FoundBy, Referral};
use crate::conversions::explain::{Judge, LossReason};
use crate::conversions::hold::{HoldReason, HoldStatus};
use crate::conversions::money::Billing;
use crate::ids::{ClickId, CustomerId, PartnerId, VisitorId};
use crate::store::{Click, MAX_VISITOR_CLICKS};

#[derive(Debug, Serialize)]
pub struct Explanation {
    customer: String,
    /// Whether a partner was credited. When not, `reason` says why and the
    /// other fields are null.
    credited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    partner: Option<PartnerId>,
    campaign: Option<String>,
    term: Option<String>,
    /// The coupon code that credited the customer; `click` is then null.
    coupon: Option<String>,
    click: Option<CreditedClick>,
    /// Null until the worker has applied the signup.
    signed_up_at: Option<DateTime<Utc>>,
    click_to_signup_seconds: Option<i64>,
    billing: Option<Billing>,
    /// The commission rate locked at the signup.
    rate: Option<Decimal>,
    hold: Option<HoldShown>,
    /// The visitor's other clicks, newest first, at most 20.
    other_clicks: Vec<LosingClick>,
}

#[derive(Debug, Serialize)]
struct CreditedClick {
    /// Null for a customer credited before this was kept.
    id: Option<String>,
    at: DateTime<Utc>,
    found_by: Option<FoundBy>,
    visitor_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct HoldShown {
    reason: HoldReason,
    status: HoldStatus,
}

#[derive(Debug, Serialize)]
struct LosingClick {
    click_id: String,
    partner: String,
    campaign: String,
    term: Option<String>,
    at: DateTime<Utc>,
    reason: LossReason,
}

/// Explains a customer's attribution (admin, merchant).
pub async fn explain(
    caller: Caller,
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<Explanation>, ApiError> {
    if !matches!(caller, Caller::Admin | Caller::Merchant) {
        return Err(ApiError::Forbidden);
    }
    let id = CustomerId::parse(&raw).map_err(|_| ApiError::NotFound("customer"))?;
    let claim = state
        .store
        .claim(&id)
        .await?
        .ok_or(ApiError::NotFound("customer"))?;
    let Some(referral) = claim else {
        return Ok(Json(Explanation::uncredited(&id)));
    };
    let record = state
        .customer_record(&referral.partner, id.as_str())
        .await?;
    let mut explanation = Explanation::credited(&id, &referral, record.as_ref());
    explanation.other_clicks = losing_clicks(&state, &referral, record.as_ref()).await?;
    Ok(Json(explanation))
}

impl Explanation {
    fn uncredited(id: &CustomerId) -> Explanation {
        Explanation {
            customer: id.as_str().to_owned(),
            credited: false,
            reason: Some("no_valid_click"),
            partner: None,
            campaign: None,
            term: None,
            coupon: None,
            click: None,
            signed_up_at: None,
            click_to_signup_seconds: None,
            billing: None,
            rate: None,
            hold: None,
            other_clicks: Vec::new(),
        }
    }

    fn credited(id: &CustomerId, referral: &Referral, record: Option<&Customer>) -> Explanation {
        let signup = record.and_then(|c| c.signup.as_ref());
        let found = referral.found.as_ref();
        let coupon = referral.is_coupon();
        let click_at = DateTime::from_timestamp(referral.click_at, 0).unwrap_or_default();
        Explanation {
            customer: id.as_str().to_owned(),
            credited: true,
            reason: None,
            partner: Some(referral.partner.clone()),
            campaign: Some(referral.campaign.clone()),
            term: referral.term.clone(),
            coupon: coupon.then(|| referral.term.clone()).flatten(),
            click: (!coupon).then(|| CreditedClick {
                id: found.map(|f| f.click_id.clone()),
                at: click_at,
                found_by: found.map(|f| f.by),
                visitor_id: found.map(|f| f.visitor_id.clone()),
            }),
            signed_up_at: signup.and_then(|s| DateTime::from_timestamp_millis(s.key.at)),
            click_to_signup_seconds: signup
                .filter(|_| !coupon)
                .map(|s| crate::conversions::hold::click_age_ms(referral, s.key.at) / 1000),
            billing: signup.map(|s| s.billing),
            rate: signup.map(|s| s.rate),
            hold: record.and_then(|c| c.hold.as_ref()).map(|h| HoldShown {
                reason: h.reason,
                status: h.status,
            }),
            other_clicks: Vec::new(),
        }
    }
}

/// The credited visitor's other clicks, newest first, each judged.
async fn losing_clicks(
    state: &ApiState,
    referral: &Referral,
    record: Option<&Customer>,
) -> Result<Vec<LosingClick>, ApiError> {
    let Some(found) = &referral.found else {
        return Ok(Vec::new()); // credited before the visitor was kept
    };
    let Some(visitor) = VisitorId::parse(&found.visitor_id) else {
        return Ok(Vec::new());
    };
    let clicks = state
        .store
        .visitor_clicks(&visitor, MAX_VISITOR_CLICKS)
        .await?;
    let attribution = &state.config.attribution;
    let winner = (referral.click_at, ClickId::parse(&found.click_id));
    let judge = Judge {
        signed_up_ms: record.and_then(|c| c.signup.as_ref()).map(|s| s.key.at),
        window_ms: i64::try_from(attribution.window.as_millis()).unwrap_or(i64::MAX),
        clock_skew_ms: i64::try_from(attribution.clock_skew.as_millis()).unwrap_or(i64::MAX),
    };
    let mut enabled: HashMap<String, bool> = HashMap::new();
    let mut losers = Vec::with_capacity(clicks.len());
    for click in clicks {
        if click.click_id.text().as_str() == found.click_id {
            continue;
        }
        let partner_enabled = partner_enabled(state, &click, &mut enabled).await?;
        let later = (click.at, Some(click.click_id)) > winner;
        losers.push(LosingClick {
            click_id: click.click_id.text().as_str().to_owned(),
            partner: click.partner.to_string(),
            campaign: click.campaign.to_string(),
            term: click.term.as_deref().map(str::to_owned),
            at: DateTime::from_timestamp(click.at, 0).unwrap_or_default(),
            reason: judge.reason(click.at.saturating_mul(1000), later, partner_enabled),
        });
    }
    Ok(losers)
}

/// Whether the click's partner exists and is enabled, asked once a
/// partner.
async fn partner_enabled(
    state: &ApiState,
    click: &Click,
    known: &mut HashMap<String, bool>,
) -> Result<bool, ApiError> {
    if let Some(enabled) = known.get(click.partner.as_ref()) {
        return Ok(*enabled);
    }
    let enabled = match PartnerId::parse(&click.partner) {
        Ok(id) => state.store.partner(&id).await?.is_some_and(|p| !p.disabled),
        Err(_) => false,
    };
    known.insert(click.partner.to_string(), enabled);
    Ok(enabled)
}
