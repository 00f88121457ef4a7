//! `GET|POST /message_receive` (and the original's misspelling `/message_recieve`) — called by
//! WeChat, not by the mini program: no `User-Token`; the app comes from `?appid=` in the push
//! URL configured in the console (or `User-App`).
//!
//! - `GET ?signature&timestamp&nonce&echostr`: WeChat's URL check; `echostr` comes back verbatim
//!   (text/plain) when the signature verifies.
//! - `POST`: a pushed message (JSON or XML; plaintext, compatible or safe mode). It is verified,
//!   decrypted, read, recorded, and answered `success` at once; the forwarder delivers it to
//!   the help desk in the background (see [`crate::messages`]).
//!
//! Anything not proven to come from WeChat is refused with 403 and never recorded.

use bytes::Bytes;
use pingora_proxy::Session as HttpSession;

use super::{Reply, read_body};
use crate::error::ApiError;
use crate::gateway::routing::App;
use crate::messages::message::Message;
use crate::messages::push::{self, PushError, PushQuery};
use crate::state::State;
use crate::store::NewMessage;
use crate::types::unix_now;

/// Plain text on success (WeChat reads the body as is); the JSON envelope on refusal.
pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Reply, ApiError> {
    receive(state, session, app).await.map(|body| Reply::Bytes {
        content_type: "text/plain; charset=utf-8".into(),
        body,
    })
}

async fn receive(state: &State, session: &mut HttpSession, app: &App) -> Result<Bytes, ApiError> {
    let appid = app.config.appid.as_str();
    let config = app.config.messages.as_ref().ok_or_else(not_configured)?;
    let query = PushQuery::parse(session.req_header().uri.query());
    let method = session.req_header().method.clone();
    if method == http::Method::GET {
        let echostr = push::url_check(config, &query).map_err(|e| refused(appid, e))?;
        let echostr =
            echostr.ok_or_else(|| ApiError::InvalidParam("echostr is required".into()))?;
        tracing::info!(%appid, "message push URL check passed");
        return Ok(Bytes::from(echostr));
    }
    if method != http::Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    if !within_replay_window(&query.timestamp, config.max_age) {
        tracing::warn!(%appid, "message push refused: timestamp outside the replay window");
        return Err(ApiError::Forbidden(
            "push timestamp outside the replay window".into(),
        ));
    }
    let body = read_body(session, state.config.server.body_limit).await?;
    let fields = push::open(config, appid, &query, &body).map_err(|e| refused(appid, e))?;
    let message = Message::from_fields(&fields).map_err(|e| refused(appid, e.into()))?;
    if config.forward_url.is_none() {
        tracing::info!(%appid, msg_type = %message.msg_type, "message received; no forward_url, dropped");
        return Ok(success());
    }
    let recorded = state
        .store
        .record_message(
            &NewMessage {
                appid,
                dedup_key: &message.dedup_key,
                openid: &message.openid,
                msg_type: &message.msg_type,
                event: &message.event,
                content: &message.content,
            },
            unix_now(),
        )
        .await?;
    if recorded {
        tracing::info!(%appid, msg_type = %message.msg_type, event = %message.event, "message received");
        state.messages.wake();
    } else {
        tracing::info!(%appid, msg_type = %message.msg_type, "message already received (WeChat retry)");
    }
    Ok(success())
}

fn success() -> Bytes {
    Bytes::from_static(b"success")
}

fn not_configured() -> ApiError {
    ApiError::Forbidden("customer-service messages are not configured for this app".into())
}

/// A push that failed verification is 403; a verified one that is not a message is 400.
fn refused(appid: &str, error: PushError) -> ApiError {
    match error {
        PushError::Message(error) => {
            tracing::info!(%appid, %error, "message push unreadable");
            ApiError::InvalidParam(error.to_string())
        }
        error => {
            tracing::warn!(%appid, %error, "message push refused");
            ApiError::Forbidden(error.to_string())
        }
    }
}

/// Whether a push signed at `timestamp` (Unix seconds) is recent enough to be genuine: WeChat's
/// own retries come within seconds, so an older one is a replay of a captured push.
fn within_replay_window(timestamp: &str, max_age: std::time::Duration) -> bool {
    let Ok(signed) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    now.abs_diff(signed) <= max_age.as_secs()
}
