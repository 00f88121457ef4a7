//! `POST /login` — exchange a `wx.login` code for an mpapi session token.
//!
//! The code goes to WeChat's `sns/jscode2session`; the user is created or updated, and a new
//! token replaces the previous one at once (one live session per user per app).

use pingora_proxy::Session as HttpSession;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_json, read_body, require_method};
use crate::error::{ApiError, ok_data};
use crate::gateway::routing::App;
use crate::state::State;

#[derive(Deserialize)]
pub(super) struct LoginRequest {
    #[serde(default)]
    code: Option<String>,
}

pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Value, ApiError> {
    require_method(session, &http::Method::POST)?;
    let body = read_body(session, state.config.server.body_limit).await?;
    let request: LoginRequest = parse_json(&body)?;
    let code = request.code.unwrap_or_default();
    let code = code.trim();
    if code.is_empty() {
        return Err(ApiError::InvalidParam("code is required".into()));
    }
    if code.len() > 256 {
        return Err(ApiError::InvalidParam("code is too long".into()));
    }
    let wechat = state.wechat.code2session(&app.config, code).await?;
    let login = state
        .sessions
        .login(
            &app.config.appid,
            &wechat.openid,
            wechat.unionid.as_deref().filter(|u| !u.is_empty()),
            &wechat.session_key,
        )
        .await?;
    tracing::info!(appid = %app.config.appid, user_id = login.user.id, "login");
    Ok(ok_data(
        json!({ "token": login.token, "openid": login.user.openid }),
    ))
}
