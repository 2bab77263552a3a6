//! The one place where API failures become HTTP: every error answers
//! `{"error": {"code", "message"}}` with its status, and internal details
//! stay in the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::conversions::events::EventError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not use this resource")]
    Forbidden,
    /// A disabled partner's own token: it may read, not create or pay out.
    #[error("the partner is disabled: its token may read its data but not create campaigns or request payouts")]
    PartnerDisabled,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A change the resource's state does not allow (a payout paid twice).
    #[error("{message}")]
    StateConflict { code: &'static str, message: String },
    /// Bad input; `code` names what is wrong (`invalid_trial_days`, …).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// A batch of events with invalid ones: each is listed in `details`.
    #[error("{} of the events are invalid; none was accepted", .0.len())]
    InvalidEvents(Vec<EventError>),
    /// Well-formed but refused by a rule (a payout below the minimum, …).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive within `api.body_timeout`, or stalled
    /// longer than `api.body_idle_timeout`; the connection is closed.
    #[error("the request body did not arrive in time (api.body_timeout, api.body_idle_timeout)")]
    BodyTimeout,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the store is unavailable; try again")]
    Unavailable,
    /// The caller's token is over `api.rate_limit`.
    #[error("too many requests for this token; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Every report slot (`report.max_concurrent`) stayed taken.
    #[error("reports are being built for others; try again")]
    ReportsBusy,
    /// Others kept changing what the request read; it may be sent again.
    #[error("{0}; try again")]
    Contended(String),
    /// A fault on this side (a stored record that cannot be read): the
    /// detail is in the log, not in the answer.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::PartnerDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::StateConflict { .. } => StatusCode::CONFLICT,
            ApiError::BadRequest { .. } | ApiError::InvalidEvents(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable | ApiError::ReportsBusy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Contended(_) => StatusCode::CONFLICT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::PartnerDisabled => "partner_disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::StateConflict { code, .. } => code,
            ApiError::InvalidEvents(_) => "invalid_events",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable => "store_unavailable",
            ApiError::ReportsBusy => "reports_busy",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Contended(_) => "contended",
            ApiError::Internal => "internal_error",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::Conflict("already exists".into()),
            StoreError::NotFound => ApiError::NotFound("resource"),
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "store call failed");
                ApiError::Unavailable
            }
            StoreError::Contended(what) => ApiError::Contended(what),
            StoreError::Corrupt { key, detail } => {
                tracing::error!(key = %key, detail = %detail, "a stored record cannot be read");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let ApiError::InvalidEvents(errors) = &self {
            body["error"]["details"] = json!(errors);
        }
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(
            self,
            ApiError::BodyTimeout | ApiError::PayloadTooLarge { .. }
        ) {
            // The rest of the body is not read: the connection cannot carry
            // another request.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if matches!(
            self,
            ApiError::Unavailable | ApiError::Contended(_) | ApiError::ReportsBusy
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of store failure answers what the caller can do about
    /// it: retry later (503), retry now (409), or nothing (500, details
    /// kept in the log).
    #[test]
    fn store_failures_map_to_their_answers() {
        let answer = |e: StoreError| {
            let response = ApiError::from(e).into_response();
            let retry = response
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .cloned();
            (response.status().as_u16(), retry.is_some())
        };
        assert_eq!(
            answer(StoreError::unavailable("connection refused")),
            (503, true)
        );
        assert_eq!(
            answer(StoreError::Contended("the book kept changing".into())),
            (409, true)
        );
        assert_eq!(
            answer(StoreError::corrupt("books acme", "bad byte")),
            (500, false)
        );
        assert_eq!(answer(StoreError::NotFound), (404, false));
        assert_eq!(answer(StoreError::Conflict), (409, false));
        let internal = ApiError::from(StoreError::corrupt("books acme", "bad byte"));
        assert_eq!(internal.code(), "internal_error");
        assert!(
            !internal.to_string().contains("acme"),
            "no detail in the answer"
        );
    }
}
