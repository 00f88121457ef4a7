//! `POST /mobile` — store the user's phone number from `wx.getPhoneNumber`.
//!
//! Two flows, the first one that the body carries:
//! - `{"code"}` (current): exchanged server-to-server through `wxa/business/getuserphonenumber`,
//!   passing the user's openid so that WeChat refuses a code issued to someone else;
//! - `{"encrypted_data", "iv"}` (legacy): decrypted with the session's key.
//!
//! Recent base libraries hand the client `code`, `encryptedData` and `iv` together; a body with
//! all three uses the code. Either way the data's `watermark.appid` must be this app's. The
//! next proxied request carries the number in `User-Mobile`. Numbers are never logged.

use pingora_proxy::Session as HttpSession;
use serde::Deserialize;
use serde_json::{Value, json};

use super::logged_in_post;
use super::user_data::{self, required};
use crate::error::{ApiError, ok_data};
use crate::gateway::routing::App;
use crate::state::State;
use crate::store::MobileUpdate;

/// Column sizes of the store, in characters.
const PHONE_MAX: usize = 32;
const COUNTRY_CODE_MAX: usize = 8;

#[derive(Deserialize)]
pub(super) struct MobileRequest {
    #[serde(default)]
    code: Option<String>,
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
    let (login, request): (_, MobileRequest) = logged_in_post(state, session, app).await?;
    let appid = app.config.appid.as_str();

    let phone_info = match request.code.as_deref().map(str::trim) {
        Some(code) if !code.is_empty() => {
            if code.len() > 256 {
                return Err(ApiError::InvalidParam("code is too long".into()));
            }
            let (wechat, openid) = (&state.wechat, login.openid());
            state
                .access_tokens
                .call(&app.config, |token| async move {
                    wechat.user_phone_number(&token, code, openid).await
                })
                .await?
        }
        _ => {
            if request.encrypted_data.is_none() && request.iv.is_none() {
                return Err(ApiError::InvalidParam(
                    "code, or encrypted_data and iv, is required".into(),
                ));
            }
            let encrypted_data = required(&request.encrypted_data, "encrypted_data", usize::MAX)?;
            let iv = required(&request.iv, "iv", 64)?;
            let user = user_data::current_user(state, &login).await?;
            user_data::decrypt(&user, encrypted_data, iv, appid)?
        }
    };
    user_data::check_watermark(&phone_info, appid).inspect_err(|_| {
        tracing::warn!(
            appid = %appid,
            user_id = login.user_id,
            "mobile refused: watermark of another app"
        );
    })?;
    let phone = Phone::from_wechat(&phone_info)?;
    let stored = state
        .store
        .update_mobile(
            login.user_id,
            &MobileUpdate {
                phone_number: &phone.phone_number,
                pure_phone_number: &phone.pure_phone_number,
                country_code: &phone.country_code,
            },
        )
        .await?;
    state.sessions.refresh(&login, &stored).await;
    tracing::info!(appid = %appid, user_id = login.user_id, "mobile stored");
    Ok(ok_data(json!({
        "phoneNumber": stored.phone_number.as_deref().unwrap_or(""),
        "purePhoneNumber": stored.pure_phone_number.as_deref().unwrap_or(""),
        "countryCode": stored.country_code.as_deref().unwrap_or(""),
    })))
}

/// A phone number as WeChat describes it (no `Debug`: numbers stay out of logs).
struct Phone {
    phone_number: String,
    pure_phone_number: String,
    country_code: String,
}

impl Phone {
    /// Read `phoneNumber`, `purePhoneNumber` and `countryCode` (a string, or a number in some
    /// older answers).
    fn from_wechat(info: &Value) -> Result<Self, ApiError> {
        let field = |name: &str, max: usize| -> Result<String, ApiError> {
            let text = match info.get(name) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) => number.to_string(),
                _ => String::new(),
            };
            if text.is_empty() || text.chars().count() > max {
                return Err(ApiError::InvalidParam(format!(
                    "the phone data has no valid {name}"
                )));
            }
            Ok(text)
        };
        Ok(Self {
            phone_number: field("phoneNumber", PHONE_MAX)?,
            pure_phone_number: field("purePhoneNumber", PHONE_MAX)?,
            country_code: field("countryCode", COUNTRY_CODE_MAX)?,
        })
    }
}
