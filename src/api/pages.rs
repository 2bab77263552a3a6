//! The two web pages, each one self-contained file compiled in (no build
//! step, no external assets): `GET /dashboard`, the partner dashboard
//! (`dashboard.html`), and `GET /admin`, the program team's console
//! (`console.html`). Both hold their token in memory only and send it in
//! the Authorization header of this service's API.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_FRAME_OPTIONS,
};
use axum::response::IntoResponse;

const DASHBOARD: &str = include_str!("dashboard.html");
const CONSOLE: &str = include_str!("console.html");

/// The pages may talk to this service's API only, and load nothing else.
/// (A CSV download is a `blob:` link the page makes: a navigation, which
/// no fetch directive governs.)
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn page(html: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, POLICY),
            (REFERRER_POLICY, "no-referrer"),
            (X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
}

pub async fn dashboard() -> impl IntoResponse {
    page(DASHBOARD)
}

pub async fn console() -> impl IntoResponse {
    page(CONSOLE)
}
