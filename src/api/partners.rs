//! `/v1/partners`: create, read and update partners.

use crate::conversions::hold::DelayHistogram;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Deserializer, Serialize};

use super::{clean_text, ApiError, ApiState, JsonBody, PartnerScope};
use crate::api::auth::{new_partner_token, token_hash, Caller};
use crate::conversions::book::{Balance, BookRequest, ProgramStatus};
use crate::edge::link::affiliate_link;
use crate::ids::PartnerId;
use crate::store::{Partner, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPartner {
    id: String,
    name: String,
    #[serde(default)]
    paypal_email: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerPatch {
    /// Absent: unchanged; `null`: removed.
    #[serde(default, deserialize_with = "present")]
    paypal_email: Option<Option<String>>,
    #[serde(default)]
    disabled: Option<bool>,
}

/// Tells a field that is `null` (`Some(None)`) from one that is absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<T>, D::Error> {
    T::deserialize(de).map(Some)
}

/// A partner as the API shows it (never its token hash).
#[derive(Serialize)]
pub struct PartnerView {
    id: PartnerId,
    name: String,
    paypal_email: Option<String>,
    disabled: bool,
    created_at: chrono::DateTime<Utc>,
    /// The partner's default affiliate link.
    link: String,
    /// Only in the answer that creates the partner: it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Tier, ARR and the rest of the program status, when reading a partner.
    #[serde(skip_serializing_if = "Option::is_none")]
    program: Option<ProgramStatus>,
    /// Balances per currency, in the admin's list of partners.
    #[serde(skip_serializing_if = "Option::is_none")]
    balances: Option<Vec<Balance>>,
    /// When reading a partner: its counted clicks that took another
    /// partner's visitor, and others' that took its own, in the last 30
    /// days (today included).
    #[serde(skip_serializing_if = "Option::is_none")]
    overwrites_30_days: Option<Overwrites>,
    /// How long after their click the partner's credited customers of the
    /// last 90 days signed up.
    #[serde(skip_serializing_if = "Option::is_none")]
    click_to_signup_90_days: Option<DelayHistogram>,
}

#[derive(Serialize, Default)]
pub struct Overwrites {
    won: u64,
    lost: u64,
}

/// Days `overwrites_30_days` covers.
const OVERWRITE_DAYS: u64 = 30;

impl PartnerView {
    fn new(partner: Partner, state: &ApiState) -> Self {
        PartnerView {
            link: affiliate_link(&state.config.link.base_url, &partner.id, None, None),
            id: partner.id,
            name: partner.name,
            paypal_email: partner.paypal_email,
            disabled: partner.disabled,
            created_at: partner.created_at,
            token: None,
            program: None,
            balances: None,
            overwrites_30_days: None,
            click_to_signup_90_days: None,
        }
    }
}

fn paypal_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let shaped = email.len() <= 254
        && email.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && domain.contains('.') && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !shaped {
        return Err(ApiError::bad_request(
            "invalid_paypal_email",
            "`paypal_email` must be an email address",
        ));
    }
    Ok(email.to_owned())
}

pub async fn create(
    caller: Caller,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<NewPartner>,
) -> Result<(StatusCode, Json<PartnerView>), ApiError> {
    caller.require_admin()?;
    let id = PartnerId::parse(&body.id).map_err(|m| ApiError::bad_request("invalid_id", m))?;
    let name = clean_text(&body.name, 200, "invalid_name", "name")?;
    let paypal_email = body.paypal_email.as_deref().map(paypal_email).transpose()?;
    let token = new_partner_token();
    let partner = Partner {
        id,
        name,
        paypal_email,
        disabled: false,
        token_hash: token_hash(&token),
        created_at: Utc::now(),
    };
    match state.store.insert_partner(&partner).await {
        Err(StoreError::Conflict) => {
            return Err(ApiError::Conflict(format!(
                "partner `{}` already exists",
                partner.id
            )))
        }
        other => other?,
    }
    state.refresh_routes().await;
    let mut view = PartnerView::new(partner, &state);
    view.token = Some(token);
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn show(
    scope: PartnerScope,
    State(state): State<ApiState>,
) -> Result<Json<PartnerView>, ApiError> {
    let partner = state.existing_partner(&scope.id).await?;
    let view = state
        .store
        .load_book(&partner.id, &BookRequest::default())
        .await?;
    let rules = state.config.rules();
    let today = Utc::now().date_naive();
    let from = today - chrono::Days::new(OVERWRITE_DAYS - 1);
    let tallies = state.store.traffic_counts(&partner.id, from, today).await?;
    let overwrites = tallies
        .iter()
        .fold(Overwrites::default(), |sum, t| Overwrites {
            won: sum.won + t.overwrites_won,
            lost: sum.lost + t.overwrites_lost,
        });
    let mut shown = PartnerView::new(partner, &state);
    shown.program = Some(view.book.status(&rules, Utc::now()));
    shown.overwrites_30_days = Some(overwrites);
    shown.click_to_signup_90_days = Some(DelayHistogram::of(&view.book.delays, Utc::now()));
    Ok(Json(shown))
}

/// Partners per page of the admin's list by default, and at most: each
/// reads its book.
const PAGE: usize = 50;
const MAX_PAGE: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct PartnerPage {
    partners: Vec<PartnerView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<PartnerId>,
}

/// Every partner by id, with its program status and balances (admin).
pub async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PartnerPage>, ApiError> {
    caller.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let after = query
        .cursor
        .as_deref()
        .map(PartnerId::parse)
        .transpose()
        .map_err(|_| ApiError::bad_request("invalid_cursor", "`cursor` is a partner id"))?;
    let limit = match query.limit.as_deref() {
        None => PAGE,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", format!("`limit` must be 1 to {MAX_PAGE}"))
            })?,
    };
    let partners = state.store.partners(after.as_ref(), limit).await?;
    let next_cursor = (partners.len() == limit)
        .then(|| partners.last().map(|p| p.id.clone()))
        .flatten();
    let rules = state.config.rules();
    let now = Utc::now();
    let mut shown = Vec::with_capacity(partners.len());
    for partner in partners {
        let view = state
            .store
            .load_book(&partner.id, &BookRequest::default())
            .await?;
        let mut partner = PartnerView::new(partner, &state);
        partner.program = Some(view.book.status(&rules, now));
        partner.balances = Some(view.book.balances(now));
        shown.push(partner);
    }
    Ok(Json(PartnerPage {
        partners: shown,
        next_cursor,
    }))
}

pub async fn update(
    scope: PartnerScope,
    State(state): State<ApiState>,
    JsonBody(patch): JsonBody<PartnerPatch>,
) -> Result<Json<PartnerView>, ApiError> {
    if patch.disabled.is_some() && scope.caller != Caller::Admin {
        return Err(ApiError::Forbidden);
    }
    let mut partner = state
        .store
        .partner(&scope.id)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    if let Some(email) = patch.paypal_email {
        partner.paypal_email = email.as_deref().map(paypal_email).transpose()?;
    }
    if let Some(disabled) = patch.disabled {
        partner.disabled = disabled;
    }
    state.store.update_partner(&partner).await?;
    state.refresh_routes().await;
    Ok(Json(PartnerView::new(partner, &state)))
}
