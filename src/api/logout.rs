//! `POST /logout` — retire the caller's session at once.
//!
//! The token is refused from the next request on: the store forgets its hash and this node's
//! caches drop it. A token that is unknown, expired or already retired answers `NotLoggedIn`,
//! like any other request without a live session. The body, if any, is not read.

use pingora_proxy::Session as HttpSession;
use serde_json::Value;

use super::{require_method, require_session};
use crate::error::{ApiError, ok_message};
use crate::gateway::routing::App;
use crate::state::State;

pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Value, ApiError> {
    require_method(session, &http::Method::POST)?;
    let login = require_session(state, session, app).await?;
    match state.sessions.logout(&login).await {
        Ok(true) => Ok(ok_message("成功")),
        // A login or a logout elsewhere retired it between the check and the write.
        Ok(false) => Err(ApiError::NotLoggedIn),
        Err(cause) => {
            tracing::error!(error = %cause, "logout failed");
            Err(ApiError::StoreUnavailable)
        }
    }
}
