//! Reading a native endpoint's request body within the configured limit. Proxied requests never
//! come here: their bodies stream to the upstream untouched.

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session as HttpSession;

use crate::error::ApiError;

/// The whole request body, or `PayloadTooLarge` as soon as it exceeds `limit` bytes.
pub async fn read_body(session: &mut HttpSession, limit: usize) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(error) => {
                tracing::debug!(%error, "could not read request body");
                return Err(ApiError::InvalidParam("could not read request body".into()));
            }
        }
    }
}
