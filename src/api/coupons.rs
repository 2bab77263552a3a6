//! `/v1/partners/{id}/coupons`: coupon codes that credit a partner's
//! signups without a click (podcasts, newsletters, influencers).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, JsonBody, PartnerScope};
use crate::ids::CouponCode;
use crate::store::{Coupon, StoreError};

/// Codes a partner may hold: each is a row someone keeps forever.
pub const MAX_COUPONS_PER_PARTNER: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    code: String,
}

#[derive(Serialize)]
pub struct CouponList {
    coupons: Vec<Coupon>,
}

/// Registers a code for the partner (admin, that partner while enabled).
pub async fn create(
    scope: PartnerScope,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<NewCoupon>,
) -> Result<(StatusCode, Json<Coupon>), ApiError> {
    let partner = state.acting_partner(&scope).await?;
    let code = CouponCode::of(&body.code).map_err(|m| ApiError::bad_request("invalid_code", m))?;
    if state.store.coupons(&partner.id).await?.len() >= MAX_COUPONS_PER_PARTNER {
        return Err(ApiError::Unprocessable {
            code: "too_many_coupons",
            message: format!("a partner holds at most {MAX_COUPONS_PER_PARTNER} coupon codes"),
        });
    }
    let coupon = Coupon {
        code,
        partner: partner.id,
        created_at: Utc::now(),
    };
    match state.store.insert_coupon(&coupon).await {
        Err(StoreError::Conflict) => Err(ApiError::StateConflict {
            code: "coupon_taken",
            message: format!(
                "coupon `{}` is taken (codes are unique, whatever their case)",
                coupon.code
            ),
        }),
        other => {
            other?;
            Ok((StatusCode::CREATED, Json(coupon)))
        }
    }
}

/// The partner's codes, by code.
pub async fn list(
    scope: PartnerScope,
    State(state): State<ApiState>,
) -> Result<Json<CouponList>, ApiError> {
    let partner = state.existing_partner(&scope.id).await?;
    let coupons = state.store.coupons(&partner.id).await?;
    Ok(Json(CouponList { coupons }))
}
