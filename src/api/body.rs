//! Reading a `/v1` request body whole, within its limits: `api.max_body_bytes`
//! (413), `api.body_timeout` for the whole body and `api.body_idle_timeout`
//! between two reads (408). A client that announces a large body and sends
//! it a byte at a time holds a connection and a file descriptor for as long
//! as the server waits; without these deadlines it waited forever.

use axum::body::{Body, Bytes, HttpBody};
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::ApiError;
use crate::config::Api;

/// The body, read whole; the error names the limit it broke.
pub async fn read(body: Body, limits: &Api) -> Result<Bytes, ApiError> {
    let limit = limits.max_body_bytes;
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let deadline = Instant::now() + limits.body_timeout;
    let mut stream = body.into_data_stream();
    let mut out = BytesMut::new();
    loop {
        let wake = deadline.min(Instant::now() + limits.body_idle_timeout);
        let next = tokio::time::timeout_at(wake, stream.next())
            .await
            .map_err(|_| ApiError::BodyTimeout)?;
        match next {
            None => return Ok(out.freeze()),
            Some(Ok(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                out.extend_from_slice(&chunk);
            }
            Some(Err(_)) => {
                return Err(ApiError::bad_request(
                    "unreadable_body",
                    "the request body could not be read",
                ))
            }
        }
    }
}
