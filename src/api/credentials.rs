//! `POST /credentials` — store the user's profile from the data `wx.getUserProfile` (or the
//! older `wx.getUserInfo`) handed the client.
//!
//! Body `{"raw_data", "signature", "encrypted_data", "iv"}`. `signature` must be
//! `sha1(raw_data + session_key)` under the session's key; the profile stored is the decrypted
//! one (`nickName`, `avatarUrl`, and `unionId` when present), never the client's `raw_data`.
//! The next proxied request carries it in `User-Extra`.
//!
//! `openId` is checked only when present: `wx.getUserProfile`'s data no longer carries it, and
//! decrypting under this user's own session key already proves the data was issued to them.

use pingora_proxy::Session as HttpSession;
use serde::Deserialize;
use serde_json::{Value, json};

use super::logged_in_post;
use super::user_data::{self, LOG_IN_AGAIN, required, text_field};
use crate::error::{ApiError, ok_data};
use crate::gateway::routing::App;
use crate::state::State;
use crate::store::{ProfileUpdate, UserRow};
use crate::wechat::crypto;

/// Column sizes of the store (MySQL's VARCHARs), in characters.
const NICKNAME_MAX: usize = 255;
const AVATAR_URL_MAX: usize = 1024;
const UNIONID_MAX: usize = 128;

#[derive(Deserialize)]
pub(super) struct CredentialsRequest {
    #[serde(default)]
    raw_data: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    encrypted_data: Option<String>,
    #[serde(default)]
    iv: Option<String>,
}

pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Value, ApiError> {
    let (login, request): (_, CredentialsRequest) = logged_in_post(state, session, app).await?;
    let raw_data = required(&request.raw_data, "raw_data", usize::MAX)?;
    let signature = required(&request.signature, "signature", 64)?;
    let encrypted_data = required(&request.encrypted_data, "encrypted_data", usize::MAX)?;
    let iv = required(&request.iv, "iv", 64)?;

    let user = user_data::current_user(state, &login).await?;
    if !crypto::verify_raw_data_signature(raw_data, &user.session_key, signature) {
        tracing::info!(appid = %app.config.appid, user_id = user.id, "credentials refused: signature mismatch");
        return Err(ApiError::InvalidParam(format!(
            "signature does not match raw_data under this session's key (or raw_data was \
             altered); {LOG_IN_AGAIN}"
        )));
    }
    let data = user_data::decrypt(&user, encrypted_data, iv, &app.config.appid)?;
    if let Some(openid) = data.get("openId")
        && openid.as_str() != Some(user.openid.as_str())
    {
        tracing::warn!(appid = %app.config.appid, user_id = user.id, "credentials refused: openId of another user");
        return Err(ApiError::Forbidden(
            "the data's openId is not this user's".into(),
        ));
    }
    let profile = ProfileUpdate {
        nickname: text_field(&data, "nickName", NICKNAME_MAX)?,
        avatar_url: text_field(&data, "avatarUrl", AVATAR_URL_MAX)?,
        unionid: text_field(&data, "unionId", UNIONID_MAX)?.filter(|u| !u.is_empty()),
    };
    let stored = state.store.update_profile(user.id, &profile).await?;
    state.sessions.refresh(&login, &stored).await;
    tracing::info!(appid = %app.config.appid, user_id = user.id, "profile stored");
    Ok(ok_data(profile_json(&stored)))
}

/// The stored profile, as `User-Extra` carries it.
fn profile_json(user: &UserRow) -> Value {
    json!({
        "openId": user.openid,
        "unionId": user.unionid.as_deref().unwrap_or(""),
        "nickName": user.nickname.as_deref().unwrap_or(""),
        "avatarUrl": user.avatar_url.as_deref().unwrap_or(""),
    })
}
