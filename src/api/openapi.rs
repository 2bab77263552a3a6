//! `GET /v1/openapi.json` (anyone): the OpenAPI 3.1 document of `/v1`,
//! `docs/openapi.json`, compiled in. `tests/openapi.rs` runs schemathesis
//! against a live service with it.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub async fn document() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        DOCUMENT,
    )
}
