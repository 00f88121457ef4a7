//! `sns/jscode2session` and its `wx.login` stand-in.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{SimUser, Simulator, wechat_error};

#[derive(Deserialize)]
pub struct CodeQuery {
    #[serde(default)]
    appid: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    js_code: String,
    #[serde(default)]
    grant_type: String,
}

/// Codes are single-use: a second exchange answers 40163; an unknown code 40029. Each login
/// issues a new session key, replacing the previous one (as WeChat does).
pub async fn jscode2session(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<CodeQuery>,
) -> Json<Value> {
    if let Err(error) = sim.check_app(&q.appid, &q.secret) {
        return Json(error);
    }
    if q.grant_type != "authorization_code" {
        return Json(wechat_error(40002, "invalid grant_type"));
    }
    let pending = sim.codes.lock().remove(&q.js_code);
    let Some(pending) = pending.filter(|p| p.appid == q.appid) else {
        if sim.used_codes.lock().contains(&q.js_code) {
            return Json(wechat_error(40163, "code been used"));
        }
        return Json(wechat_error(40029, "invalid code"));
    };
    sim.used_codes.lock().insert(q.js_code.clone());
    let mut key = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut key);
    let session_key = STANDARD.encode(key);
    sim.users.lock().insert(
        (pending.appid.clone(), pending.openid.clone()),
        SimUser {
            openid: pending.openid.clone(),
            unionid: pending.unionid.clone(),
            session_key: Some(session_key.clone()),
        },
    );
    let mut answer = json!({ "openid": pending.openid, "session_key": session_key });
    if let Some(unionid) = pending.unionid {
        answer["unionid"] = json!(unionid);
    }
    Json(answer)
}

#[derive(Deserialize)]
pub struct MintRequest {
    appid: String,
    openid: String,
    #[serde(default)]
    unionid: Option<String>,
}

/// `POST /sim/code {"appid","openid","unionid"?}` → `{"code"}`: what `wx.login` gives a phone.
pub async fn mint(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<MintRequest>,
) -> Json<Value> {
    let code = sim.mint_code(&request.appid, &request.openid, request.unionid.as_deref());
    Json(json!({ "code": code }))
}
