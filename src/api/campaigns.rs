//! `/v1/partners/{id}/campaigns`: the Campaign Builder.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, JsonBody, PartnerScope};
use crate::config::Config;
use crate::edge::link::affiliate_link;
use crate::ids::MAX_UTM_CHARS;
use crate::ids::{CampaignName, CampaignSlug, PartnerId};
use crate::store::{Campaign, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    slug: String,
    name: String,
    #[serde(default)]
    trial_days: Option<i64>,
    #[serde(default)]
    discount: Option<i64>,
    #[serde(default)]
    landing: Option<String>,
    #[serde(default)]
    utm_term: Option<String>,
}

/// A campaign with its ready-to-share link.
#[derive(Serialize)]
pub struct CampaignView {
    #[serde(flatten)]
    campaign: Campaign,
    link: String,
}

impl CampaignView {
    fn new(campaign: Campaign, config: &Config) -> Self {
        let link = affiliate_link(
            &config.link.base_url,
            &campaign.partner,
            Some(&campaign.slug),
            campaign.utm_term.as_deref(),
        );
        CampaignView { campaign, link }
    }
}

/// Applies the Campaign Builder's rules; the error names the field.
fn validate(body: NewCampaign, partner: PartnerId, config: &Config) -> Result<Campaign, ApiError> {
    let slug =
        CampaignSlug::parse(&body.slug).map_err(|m| ApiError::bad_request("invalid_slug", m))?;
    let name =
        CampaignName::parse(&body.name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    let max_trial = config.campaign.max_trial_days;
    let trial_days = body
        .trial_days
        .map(|days| {
            u16::try_from(days)
                .ok()
                .filter(|d| (1..=max_trial).contains(&u32::from(*d)))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_trial_days",
                        format!("`trial_days` must be from 1 to {max_trial}"),
                    )
                })
        })
        .transpose()?;
    let discounts = &config.campaign.discounts;
    let discount = body
        .discount
        .map(|d| {
            u8::try_from(d)
                .ok()
                .filter(|d| discounts.contains(&u32::from(*d)))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_discount",
                        format!("`discount` must be one of {discounts:?}"),
                    )
                })
        })
        .transpose()?;
    let landing = body
        .landing
        .map(|raw| {
            config
                .landing_policy()
                .parse(&raw)
                .map(|url| url.as_str().to_owned())
                .map_err(|e| ApiError::bad_request("invalid_landing", format!("`landing` {e}")))
        })
        .transpose()?;
    let utm_term = body
        .utm_term
        .map(|term| {
            let ok = !term.is_empty()
                && term.chars().count() <= MAX_UTM_CHARS
                && !term.chars().any(char::is_control);
            ok.then_some(term).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_utm_term",
                    format!("`utm_term` must be 1 to {MAX_UTM_CHARS} characters without control characters"),
                )
            })
        })
        .transpose()?;
    Ok(Campaign {
        partner,
        slug,
        name,
        trial_days,
        discount,
        landing,
        utm_term,
        created_at: Utc::now(),
    })
}

pub async fn create(
    scope: PartnerScope,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<NewCampaign>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    state.acting_partner(&scope).await?;
    let campaign = validate(body, scope.id, &state.config)?;
    match state.store.insert_campaign(&campaign).await {
        Err(StoreError::Conflict) => {
            return Err(ApiError::Conflict(format!(
                "campaign `{}` already exists for this partner",
                campaign.slug
            )))
        }
        other => other?,
    }
    state.refresh_routes().await;
    Ok((
        StatusCode::CREATED,
        Json(CampaignView::new(campaign, &state.config)),
    ))
}

pub async fn list(
    scope: PartnerScope,
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if state.store.partner(&scope.id).await?.is_none() {
        return Err(ApiError::NotFound("partner"));
    }
    let campaigns: Vec<CampaignView> = state
        .store
        .campaigns(&scope.id)
        .await?
        .into_iter()
        .map(|c| CampaignView::new(c, &state.config))
        .collect();
    Ok(Json(serde_json::json!({ "campaigns": campaigns })))
}
