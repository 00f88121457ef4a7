//! `wxa/business/getuserphonenumber`, its `wx.getPhoneNumber` stand-in, and the user data that
//! WeChat encrypts for the client (`wx.getUserProfile`, the legacy phone number).
//!
//! - `POST /wxa/business/getuserphonenumber?access_token=T {"code","openid"?}`: the token is
//!   checked first (40001/42001/41001), then the body (47001), then the code: unknown or of
//!   another app 40029, already exchanged 40163, issued to another user than `openid` 40003.
//!   A code is used up only by a successful exchange.
//! - `POST /sim/phone_code {"appid","openid","phone"}` → `{"code"}`: what `wx.getPhoneNumber`
//!   gives the phone. `phone` is the bare number (country code 86) or `+CC NUMBER`.
//! - `POST /sim/user_profile {"appid","openid","nickname","avatar_url"}` →
//!   `{"raw_data","signature","encrypted_data","iv"}`: what `wx.getUserProfile` gives the phone
//!   (its data carries no `openId` since 2021), ready to post to `/credentials`.
//! - `POST /sim/encrypt {"appid","openid","data"}` → `{"encrypted_data","iv"}`: `data` exactly,
//!   encrypted under the user's current session key (include a `watermark` as WeChat does).
//!
//! The user must have logged in (`jscode2session`) for the encrypting helpers: the key is the
//! session key of their latest login.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use parking_lot::Mutex;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Simulator, authorized_json, random_hex, wechat_error};
use crate::types::unix_now;
use crate::wechat::crypto;

/// A `getuserphonenumber` request as WeChat received it (with a valid access token).
#[derive(Debug, Clone)]
pub struct PhoneRequest {
    pub appid: String,
    pub code: String,
    pub openid: Option<String>,
}

/// What `wx.getUserProfile` hands the client.
#[derive(Debug, Clone)]
pub struct UserProfile {
    pub raw_data: String,
    pub signature: String,
    pub encrypted_data: String,
    pub iv: String,
}

/// A phone number as WeChat describes it.
#[derive(Debug, Clone)]
struct SimPhone {
    phone_number: String,
    pure_phone_number: String,
    country_code: String,
}

impl SimPhone {
    /// `13800138000` (country code 86) or `+1 4155550100`.
    fn parse(phone: &str) -> Self {
        let phone = phone.trim();
        let (country_code, pure) = match phone.strip_prefix('+') {
            Some(rest) => rest.split_once(' ').unwrap_or(("86", rest)),
            None => ("86", phone),
        };
        // WeChat writes Chinese numbers bare and others with their country code.
        let phone_number = if country_code == "86" {
            pure.to_string()
        } else {
            format!("+{country_code} {pure}")
        };
        Self {
            phone_number,
            pure_phone_number: pure.to_string(),
            country_code: country_code.to_string(),
        }
    }

    fn info(&self, appid: &str) -> Value {
        json!({
            "phoneNumber": self.phone_number,
            "purePhoneNumber": self.pure_phone_number,
            "countryCode": self.country_code,
            "watermark": { "timestamp": unix_now(), "appid": appid },
        })
    }
}

/// A phone code waiting for `getuserphonenumber`.
#[derive(Debug, Clone)]
struct PendingPhone {
    appid: String,
    openid: String,
    phone: SimPhone,
}

/// The simulator's phone-number state.
#[derive(Default)]
pub(super) struct PhoneState {
    codes: Mutex<HashMap<String, PendingPhone>>,
    used: Mutex<HashSet<String>>,
    requests: Mutex<Vec<PhoneRequest>>,
}

impl Simulator {
    /// Mint a single-use phone code for `openid`, as `wx.getPhoneNumber` would on the phone.
    /// `phone` is the bare number (country code 86) or `+CC NUMBER`.
    pub fn mint_phone_code(&self, appid: &str, openid: &str, phone: &str) -> String {
        let code = random_hex(16);
        self.phone.codes.lock().insert(
            code.clone(),
            PendingPhone {
                appid: appid.to_string(),
                openid: openid.to_string(),
                phone: SimPhone::parse(phone),
            },
        );
        code
    }

    /// Every `getuserphonenumber` request received with a valid access token, oldest first.
    pub fn phone_requests(&self) -> Vec<PhoneRequest> {
        self.phone.requests.lock().clone()
    }

    /// `data` encrypted exactly as WeChat does for `openid` of `appid` (AES-128-CBC under the
    /// session key of their latest login, random IV): `(encrypted_data, iv)`, or `None` when
    /// the user never logged in.
    pub fn encrypt_for(&self, appid: &str, openid: &str, data: &Value) -> Option<(String, String)> {
        let session_key = self.user(appid, openid)?.session_key?;
        let mut iv = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut iv);
        let iv = STANDARD.encode(iv);
        let encrypted =
            crypto::encrypt_user_data(&session_key, data.to_string().as_bytes(), &iv).ok()?;
        Some((encrypted, iv))
    }

    /// What `wx.getUserProfile` returns for `openid` of `appid`: `rawData` signed with the
    /// session key, and the full profile (watermarked, without `openId`) encrypted under it.
    pub fn user_profile(
        &self,
        appid: &str,
        openid: &str,
        nickname: &str,
        avatar_url: &str,
    ) -> Option<UserProfile> {
        let session_key = self.user(appid, openid)?.session_key?;
        let mut profile = json!({
            "nickName": nickname,
            "gender": 0,
            "language": "",
            "city": "",
            "province": "",
            "country": "",
            "avatarUrl": avatar_url,
        });
        let raw_data = profile.to_string();
        profile["watermark"] = json!({ "timestamp": unix_now(), "appid": appid });
        let (encrypted_data, iv) = self.encrypt_for(appid, openid, &profile)?;
        Some(UserProfile {
            signature: crypto::raw_data_signature(&raw_data, &session_key),
            raw_data,
            encrypted_data,
            iv,
        })
    }

    /// Exchange a phone code: WeChat's checks in WeChat's order.
    fn exchange_phone_code(&self, appid: &str, code: &str, openid: Option<&str>) -> Value {
        let mut codes = self.phone.codes.lock();
        let Some(pending) = codes.get(code).filter(|p| p.appid == appid) else {
            if self.phone.used.lock().contains(code) {
                return wechat_error(40163, "code been used");
            }
            return wechat_error(40029, "invalid code");
        };
        if openid.is_some_and(|openid| openid != pending.openid) {
            return wechat_error(40003, "invalid openid");
        }
        let info = pending.phone.info(appid);
        codes.remove(code);
        self.phone.used.lock().insert(code.to_string());
        json!({ "errcode": 0, "errmsg": "ok", "phone_info": info })
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    access_token: String,
}

#[derive(Deserialize)]
struct PhoneNumberRequest {
    #[serde(default)]
    code: String,
    #[serde(default)]
    openid: Option<String>,
}

/// `POST /wxa/business/getuserphonenumber?access_token=T`.
pub async fn getuserphonenumber(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Json<Value> {
    let (appid, request): (String, PhoneNumberRequest) =
        match authorized_json(&sim, &q.access_token, &body) {
            Ok(checked) => checked,
            Err(error) => return error,
        };
    let openid = request.openid.filter(|o| !o.is_empty());
    sim.phone.requests.lock().push(PhoneRequest {
        appid: appid.clone(),
        code: request.code.clone(),
        openid: openid.clone(),
    });
    Json(sim.exchange_phone_code(&appid, &request.code, openid.as_deref()))
}

#[derive(Deserialize)]
pub struct PhoneCodeRequest {
    appid: String,
    openid: String,
    phone: String,
}

/// `POST /sim/phone_code {"appid","openid","phone"}` → `{"code"}`.
pub async fn mint(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<PhoneCodeRequest>,
) -> Json<Value> {
    let code = sim.mint_phone_code(&request.appid, &request.openid, &request.phone);
    Json(json!({ "code": code }))
}

#[derive(Deserialize)]
pub struct UserProfileRequest {
    appid: String,
    openid: String,
    #[serde(default)]
    nickname: String,
    #[serde(default)]
    avatar_url: String,
}

/// `POST /sim/user_profile` → `{"raw_data","signature","encrypted_data","iv"}`.
pub async fn user_profile(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<UserProfileRequest>,
) -> Response {
    match sim.user_profile(
        &request.appid,
        &request.openid,
        &request.nickname,
        &request.avatar_url,
    ) {
        Some(profile) => Json(json!({
            "raw_data": profile.raw_data,
            "signature": profile.signature,
            "encrypted_data": profile.encrypted_data,
            "iv": profile.iv,
        }))
        .into_response(),
        None => not_logged_in(),
    }
}

#[derive(Deserialize)]
pub struct EncryptRequest {
    appid: String,
    openid: String,
    data: Value,
}

/// `POST /sim/encrypt {"appid","openid","data"}` → `{"encrypted_data","iv"}`.
pub async fn encrypt(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<EncryptRequest>,
) -> Response {
    match sim.encrypt_for(&request.appid, &request.openid, &request.data) {
        Some((encrypted_data, iv)) => {
            Json(json!({ "encrypted_data": encrypted_data, "iv": iv })).into_response()
        }
        None => not_logged_in(),
    }
}

fn not_logged_in() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "this user has no session key: log in first (/sim/code, /login)" })),
    )
        .into_response()
}
