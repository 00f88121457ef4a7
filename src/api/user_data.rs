//! What `/credentials` and `/mobile` share: the session's current key, decrypting the data a
//! client got from WeChat, and the checks that bind it to this app.
//!
//! Every failure to verify or decrypt under the session's key answers 400 (status 3) with one
//! message that tells the client to log in again: WeChat replaces a user's session key at each
//! `wx.login`, so data produced under an older key can never be read. Padding errors and
//! garbled plaintext answer the same message, so the endpoint is no decryption oracle.

use serde_json::Value;

use crate::error::ApiError;
use crate::session::Session;
use crate::state::State;
use crate::store::UserRow;
use crate::wechat::crypto::{self, CryptoError};

/// The advice every "wrong key" refusal carries.
pub const LOG_IN_AGAIN: &str = "the session key has most likely changed since the data was \
                                produced: log in again (wx.login, then POST /login) and retry \
                                with fresh data";

/// The user behind `session`, read fresh from the store: the session key is whatever the
/// session's login stored. `NotLoggedIn` when another node retired the token meanwhile.
pub async fn current_user(state: &State, session: &Session) -> Result<UserRow, ApiError> {
    state
        .store
        .user_by_token_hash(&session.token_hash_hex())
        .await?
        .ok_or(ApiError::NotLoggedIn)
}

/// Decrypt `encrypted_data` with `user`'s session key and check its watermark names `appid`.
pub fn decrypt(
    user: &UserRow,
    encrypted_data: &str,
    iv: &str,
    appid: &str,
) -> Result<Value, ApiError> {
    let data =
        crypto::decrypt_user_data(&user.session_key, encrypted_data, iv).map_err(|error| {
            match error {
                CryptoError::InvalidIv => {
                    ApiError::InvalidParam("iv is not base64 of 16 bytes".into())
                }
                CryptoError::InvalidCiphertext => ApiError::InvalidParam(
                    "encrypted_data is not base64 of whole AES blocks".into(),
                ),
                CryptoError::InvalidKey => {
                    // The stored key is not what WeChat issues: a storage fault, not the client's.
                    tracing::error!(user_id = user.id, "stored session key is malformed");
                    ApiError::Internal
                }
                CryptoError::Decrypt
                | CryptoError::MalformedPlaintext(_)
                | CryptoError::AppIdMismatch => {
                    tracing::info!(user_id = user.id, %error, "user data did not decrypt");
                    ApiError::InvalidParam(format!(
                        "encrypted_data does not decrypt with this session's key; {LOG_IN_AGAIN}"
                    ))
                }
            }
        })?;
    check_watermark(&data, appid)?;
    Ok(data)
}

/// Refuse data whose `watermark.appid` is missing or names another app: nothing else binds
/// WeChat's data to the app it was issued for.
pub fn check_watermark(data: &Value, appid: &str) -> Result<(), ApiError> {
    match crypto::watermark_appid(data) {
        Some(stamped) if crypto::secure_eq(stamped.as_bytes(), appid.as_bytes()) => Ok(()),
        _ => Err(ApiError::Forbidden(
            "the data's watermark.appid is not this app's".into(),
        )),
    }
}

/// `value` as a required, non-empty string field named `name`, at most `max` bytes long. Not
/// trimmed: `raw_data` is signed byte for byte.
pub fn required<'a>(
    value: &'a Option<String>,
    name: &str,
    max: usize,
) -> Result<&'a str, ApiError> {
    let value = value.as_deref().unwrap_or_default();
    if value.is_empty() {
        return Err(ApiError::InvalidParam(format!("{name} is required")));
    }
    if value.len() > max {
        return Err(ApiError::InvalidParam(format!("{name} is too long")));
    }
    Ok(value)
}

/// A string field of WeChat's data, absent when missing or not a string; refused when longer
/// than the store's column (`max` characters).
pub fn text_field<'a>(
    data: &'a Value,
    name: &str,
    max: usize,
) -> Result<Option<&'a str>, ApiError> {
    match data.get(name).and_then(Value::as_str) {
        Some(text) if text.chars().count() > max => Err(ApiError::InvalidParam(format!(
            "{name} in the decrypted data is longer than {max} characters"
        ))),
        other => Ok(other),
    }
}
