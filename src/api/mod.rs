//! Native endpoints: requests mpapi answers itself, at the paths the original service used.
//! One file per endpoint; each handler takes the parsed request and returns
//! `Result<serde_json::Value, ApiError>`, and [`serve`] is the one place that writes either.

mod body;
mod login;
mod logout;
mod wxcode;
// /credentials and /mobile.
mod credentials;
mod mobile;
mod user_data;
// Called by WeChat and by the help desk, not by the mini program.
mod message_receive;
mod message_reply;
// Subscribe messages.
mod notify;

use std::sync::Arc;

use bytes::Bytes;
use pingora_proxy::Session as HttpSession;

use crate::error::ApiError;
use crate::gateway::respond;
use crate::gateway::routing::App;
use crate::session::Session;
use crate::state::State;
pub use body::read_body;

/// What a native endpoint answers on success.
pub enum Reply {
    /// The envelope (already built with `ok_data`/`ok_message`).
    Json(serde_json::Value),
    /// Raw bytes, such as a mini-program code image.
    Bytes { content_type: String, body: Bytes },
}

/// A native endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Logout,
    WxCode,
    Credentials,
    Mobile,
    MessageReceive,
    MessageReply,
    /// `POST /notify`, `GET|DELETE /notify/{id}`.
    Notify,
    NotifyItem(i64),
}

impl Endpoint {
    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/login" => Some(Self::Login),
            "/logout" => Some(Self::Logout),
            "/wxcode" => Some(Self::WxCode),
            "/credentials" => Some(Self::Credentials),
            "/mobile" => Some(Self::Mobile),
            // `recieve` is the original service's spelling.
            "/message_receive" | "/message_recieve" => Some(Self::MessageReceive),
            "/message_reply" => Some(Self::MessageReply),
            "/notify" => Some(Self::Notify),
            _ if path.starts_with("/notify/") => {
                notify_id(&path["/notify/".len()..]).map(Self::NotifyItem)
            }
            _ => None,
        }
    }
}

/// Answer a native request completely (success or error envelope).
pub async fn serve(
    state: &State,
    session: &mut HttpSession,
    endpoint: Endpoint,
    app: &App,
) -> pingora::Result<()> {
    let outcome = match endpoint {
        Endpoint::Login => login::handle(state, session, app).await.map(Reply::Json),
        Endpoint::Logout => logout::handle(state, session, app).await.map(Reply::Json),
        Endpoint::WxCode => wxcode::handle(state, session, app).await,
        Endpoint::Credentials => credentials::handle(state, session, app)
            .await
            .map(Reply::Json),
        Endpoint::Mobile => mobile::handle(state, session, app).await.map(Reply::Json),
        Endpoint::MessageReceive => message_receive::handle(state, session, app).await,
        Endpoint::MessageReply => message_reply::handle(state, session, app)
            .await
            .map(Reply::Json),

        Endpoint::Notify => notify::create(state, session, app).await.map(Reply::Json),
        Endpoint::NotifyItem(id) => notify::item(state, session, app, id).await.map(Reply::Json),
    };
    match outcome {
        Ok(Reply::Json(value)) => respond::json(session, 200, &value).await,
        Ok(Reply::Bytes { content_type, body }) => {
            respond::write(session, 200, &content_type, body).await
        }
        Err(error) => {
            if error.status() >= 500 {
                tracing::warn!(endpoint = ?endpoint, appid = %app.config.appid, %error, "native endpoint failed");
            }
            respond::error(session, &error).await
        }
    }
}

/// A notification id in a path: a positive decimal number (anything else is not a path of ours).
fn notify_id(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|id| *id > 0)
}

/// The caller's session from `User-Token`; `NotLoggedIn` when absent or not live.
pub async fn require_session(
    state: &State,
    session: &HttpSession,
    app: &App,
) -> Result<Arc<Session>, ApiError> {
    let token = session
        .req_header()
        .headers
        .get("user-token")
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::NotLoggedIn)?;
    state.sessions.authenticate(&app.config.appid, token).await
}

/// The common start of a JSON `POST` endpoint for a logged-in user: the method, the session,
/// then the body parsed as `T` (in that order, so an anonymous caller never gets to send a body
/// worth parsing).
pub async fn logged_in_post<T: serde::de::DeserializeOwned>(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<(Arc<Session>, T), ApiError> {
    require_method(session, &http::Method::POST)?;
    let user = require_session(state, session, app).await?;
    let body = read_body(session, state.config.server.body_limit).await?;
    Ok((user, parse_json(&body)?))
}

/// Refuse any method but `expected`.
pub fn require_method(session: &HttpSession, expected: &http::Method) -> Result<(), ApiError> {
    if session.req_header().method == expected {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed)
    }
}

/// Parse a JSON object body into `T`, saying what was wrong without echoing the body.
///
/// Only an object is accepted: serde would otherwise fill a struct from an array, field by
/// field in declaration order (`["CODE"]` as a login), which no client means.
/// Every native endpoint's body parser, and the checks that need neither the store nor WeChat,
/// run on `body`: what the fuzzer (`fuzz/`, target `request_bodies`) drives. Nothing it is
/// given may panic.
#[doc(hidden)]
pub fn parse_every_body(body: &[u8]) {
    let _ = parse_json::<login::LoginRequest>(body);
    let _ = parse_json::<credentials::CredentialsRequest>(body);
    let _ = parse_json::<mobile::MobileRequest>(body);
    if let Ok(reply) = parse_json::<message_reply::ReplyRequest>(body) {
        let _ = reply.parse_content();
    }
    if let Ok(request) = parse_json::<crate::notify::message::NotifyRequest>(body) {
        let _ = crate::notify::message::Message::parse(
            request,
            chrono_tz::Asia::Shanghai,
            crate::types::unix_now(),
        );
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let what = match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => "body must be a JSON object",
            Err(_) => "body is not valid JSON",
        };
        return Err(ApiError::InvalidParam(what.into()));
    }
    serde_json::from_slice(body).map_err(|error| {
        let what = if error.is_syntax() || error.is_eof() {
            "body is not valid JSON".to_string()
        } else {
            format!("invalid body: {error}")
        };
        ApiError::InvalidParam(what)
    })
}
