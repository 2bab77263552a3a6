//! The two web pages: `GET /dashboard`, the partner dashboard
//! (`dashboard.html`), and `GET /admin`, the program team's console
//! (`console.html`). Each is served as one self-contained file (no build
//! step, no external assets): the styles and helpers both use
//! (`pages/shared.css`, `pages/shared.js`) are put in place of their
//! markers once, when a page is first asked for. Both hold their token in
//! memory only and send it in the Authorization header of this service's
//! API.

use std::sync::LazyLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_FRAME_OPTIONS,
};
use axum::response::IntoResponse;

static DASHBOARD: LazyLock<String> = LazyLock::new(|| assemble(include_str!("dashboard.html")));
static CONSOLE: LazyLock<String> = LazyLock::new(|| assemble(include_str!("console.html")));

/// `page` with the shared styles and script in place of their markers.
fn assemble(page: &str) -> String {
    page.replacen("/* shared.css */", include_str!("pages/shared.css"), 1)
        .replacen("/* shared.js */", include_str!("pages/shared.js"), 1)
}

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
    page(&DASHBOARD)
}

pub async fn console() -> impl IntoResponse {
    page(&CONSOLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_gets_the_shared_parts_once() {
        for page in [&*DASHBOARD, &*CONSOLE] {
            assert!(!page.contains("/* shared.css */") && !page.contains("/* shared.js */"));
            assert_eq!(page.matches("function esc(").count(), 1);
            assert_eq!(page.matches("[hidden] {").count(), 1);
        }
    }
}
