//! Responses written by mpapi itself. Each carries `Content-Length` (without it a client waits
//! for the connection to close) and is written directly rather than through
//! `respond_error`, which would close a keep-alive connection on every 401. Each carries the
//! request's `X-Request-Id`.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora_proxy::Session;

use crate::error::ApiError;

/// Write a complete response.
pub async fn write(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> pingora::Result<()> {
    write_with(session, status, content_type, body, None).await
}

/// [`write`](fn@write), with a `Retry-After` header when `retry_after` is set.
async fn write_with(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    retry_after: Option<u64>,
) -> pingora::Result<()> {
    close_if_shutting_down(session);
    let mut header = ResponseHeader::build(status, Some(5))?;
    if let Some(seconds) = retry_after {
        header.insert_header("Retry-After", seconds.to_string())?;
    }
    header.insert_header("Content-Type", content_type)?;
    header.insert_header("Content-Length", body.len().to_string())?;
    header.insert_header("Cache-Control", "no-store")?;
    // The request filter set the id on the request; an answer written before it ran (a
    // malformed request) gets a new one.
    let client_id = session
        .req_header()
        .headers
        .get(&super::forwarded::X_REQUEST_ID);
    let (request_id, _) = super::forwarded::request_id(client_id);
    header.insert_header("X-Request-Id", request_id)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Set once this process has handed its listening sockets to a new one (`-u`, SIGQUIT). It is
/// the process's own state, hence a static: in-process gateways (tests) never hand over.
pub static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// Whether this process has handed its sockets over (see [`HANDING_OVER`]).
pub fn is_handing_over() -> bool {
    HANDING_OVER.load(Ordering::Relaxed)
}

/// While the process hands over or shuts down, answer with `Connection: close`: the client's
/// next request then opens a new connection, which the listening socket gives to the new
/// process. Starting at the handover, seconds before the old process stops reading from idle
/// keep-alive connections, leaves none for a client to race that close with a request.
pub fn close_if_shutting_down(session: &mut Session) {
    if session.is_process_shutting_down() || HANDING_OVER.load(Ordering::Relaxed) {
        session.set_keepalive(None);
    }
}

/// Write a JSON value with `status`.
pub async fn json(
    session: &mut Session,
    status: u16,
    value: &serde_json::Value,
) -> pingora::Result<()> {
    write(
        session,
        status,
        "application/json",
        Bytes::from(value.to_string()),
    )
    .await
}

/// Write an error envelope. A 413 also closes the connection: the unread body cannot be
/// skipped safely.
pub async fn error(session: &mut Session, error: &ApiError) -> pingora::Result<()> {
    if matches!(error, ApiError::PayloadTooLarge(_)) {
        session.set_keepalive(None);
    }
    let retry_after = match error {
        ApiError::TooManyRequests {
            retry_after_seconds,
        } => Some(*retry_after_seconds),
        _ => None,
    };
    write_with(
        session,
        error.status(),
        "application/json",
        error.body(),
        retry_after,
    )
    .await
}
