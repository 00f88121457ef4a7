//! Messages to users: `cgi-bin/message/subscribe/send`, and the template-message endpoint
//! WeChat switched off in 2020.
//!
//! Validation, in WeChat's order and with its errcodes:
//! - the access token ([`Simulator::check_access_token`]: 40001, 42001, 41001);
//! - a body that is not JSON: 47001;
//! - `touser` the simulator has never seen log in to this app: 40003;
//! - `template_id` empty or not starting with [`TEMPLATE_PREFIX`]: 40037 (the simulator's rule
//!   for "a template this app has added": every template id starting with `tmpl` exists);
//! - `data` not a non-empty object of `{key: {"value": text}}`: 47003.
//!
//! Every accepted send is recorded ([`Simulator::subscribe_sends`]). A send held by a
//! `Fault::Slow` is handled — and recorded — only when the delay is over, and not at all when
//! the caller hung up meanwhile (the server drops the request), as a send that never reached
//! WeChat.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Simulator, wechat_error};

/// Template ids starting with this exist for every app; any other is 40037.
pub const TEMPLATE_PREFIX: &str = "tmpl";

/// Sends the simulator accepted, in order.
#[derive(Default)]
pub struct SubscribeState {
    sends: Vec<Value>,
}

impl Simulator {
    /// Every subscribe message accepted so far, as received (`touser`, `template_id`, `page`,
    /// `data`, `miniprogram_state`, `lang`).
    pub fn subscribe_sends(&self) -> Vec<Value> {
        self.subscribe.lock().sends.clone()
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    access_token: String,
}

/// `POST cgi-bin/message/subscribe/send?access_token=T`.
pub async fn send(
    State(sim): State<Arc<Simulator>>,
    Query(query): Query<TokenQuery>,
    body: Bytes,
) -> Json<Value> {
    let appid = match sim.check_access_token(&query.access_token) {
        Ok(appid) => appid,
        Err(error) => return Json(error),
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Json(wechat_error(47001, "data format error"));
    };
    let touser = request["touser"].as_str().unwrap_or_default();
    if touser.is_empty() || sim.user(&appid, touser).is_none() {
        return Json(wechat_error(40003, "invalid openid"));
    }
    let template_id = request["template_id"].as_str().unwrap_or_default();
    if !template_id.starts_with(TEMPLATE_PREFIX) {
        return Json(wechat_error(40037, "invalid template_id"));
    }
    if !is_subscribe_data(&request["data"]) {
        return Json(wechat_error(
            47003,
            "argument invalid! data.keyword.value invalid",
        ));
    }
    let mut state = sim.subscribe.lock();
    state.sends.push(request);
    let msgid = state.sends.len();
    Json(json!({ "errcode": 0, "errmsg": "ok", "msgid": msgid }))
}

/// `{key: {"value": text}}` with at least one key.
fn is_subscribe_data(data: &Value) -> bool {
    data.as_object().is_some_and(|fields| {
        !fields.is_empty()
            && fields
                .values()
                .all(|field| field.get("value").is_some_and(Value::is_string))
    })
}

/// `POST cgi-bin/message/wxopen/template/send`: switched off by WeChat on 2020-01-10.
pub async fn template_send(
    State(sim): State<Arc<Simulator>>,
    Query(query): Query<TokenQuery>,
) -> Json<Value> {
    if let Err(error) = sim.check_access_token(&query.access_token) {
        return Json(error);
    }
    Json(wechat_error(45103, "This API has been unsupported"))
}
