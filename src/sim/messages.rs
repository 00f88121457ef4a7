//! Customer-service messages as WeChat handles them.
//!
//! - Pushes: [`Simulator::push_request`] builds the query string and body WeChat would send to
//!   the push URL, signed and (compatible, safe modes) encrypted with the crypto module, and
//!   remembers that the user wrote (which opens their 48-hour reply window). `POST /sim/push`
//!   does the same over HTTP, and delivers the push when given a `url`.
//! - `cgi-bin/message/custom/send` and `…/business/typing`: access token checked; 45015 when the
//!   user has not written within 48 hours; accepted calls are recorded ([`Simulator::custom_sends`]).
//! - `cgi-bin/media/upload`: multipart field `media`; records the upload and answers a `media_id`
//!   that `custom/send` then accepts for images.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Simulator, authorized_json, random_hex, wechat_error};
use crate::types::unix_now;
use crate::wechat::crypto::{self, CryptoError, PushCipher};

/// WeChat's reply window after a user's message.
const REPLY_WINDOW_SECONDS: i64 = 48 * 3600;

/// The push mode chosen in the mini-program console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMode {
    /// Fields in the clear, `signature` in the query.
    Plaintext,
    /// Fields in the clear and encrypted (`Encrypt`), `msg_signature` in the query.
    Compatible,
    /// Only `ToUserName` and `Encrypt`.
    Safe,
}

/// The data format chosen in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    Json,
    Xml,
}

/// A push as WeChat sends it: append `query` to the push URL, POST `body`.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub query: String,
    pub body: String,
    pub content_type: &'static str,
}

/// A customer-service call WeChat accepted.
#[derive(Debug, Clone)]
pub struct CustomSend {
    pub appid: String,
    /// `send` or `typing`.
    pub kind: &'static str,
    pub body: Value,
}

/// An uploaded temporary medium.
#[derive(Debug, Clone)]
pub struct UploadedMedia {
    pub appid: String,
    pub media_id: String,
    pub media_type: String,
    pub content_type: String,
    pub file_name: String,
    pub len: usize,
}

/// Who a simulated push is for and how it is signed and wrapped.
pub struct PushParts<'a> {
    pub appid: &'a str,
    pub token: &'a str,
    pub aes_key: &'a str,
    pub mode: PushMode,
    pub format: PushFormat,
}

impl Simulator {
    /// The push WeChat would send for `message` (WeChat's field names: `ToUserName`,
    /// `FromUserName`, `CreateTime`, `MsgType`, …), signed with `token` and, in compatible and
    /// safe modes, encrypted with `aes_key` for `appid`. The sender's reply window opens.
    pub fn push_request(
        &self,
        appid: &str,
        token: &str,
        aes_key: &str,
        mode: PushMode,
        format: PushFormat,
        message: &Map<String, Value>,
    ) -> Result<PushRequest, CryptoError> {
        let push = PushParts {
            appid,
            token,
            aes_key,
            mode,
            format,
        };
        self.push_request_at(push, message, unix_now())
    }

    /// [`Simulator::push_request`] signed as of `timestamp` (Unix seconds): a push captured
    /// earlier, as a replay would send it.
    pub fn push_request_at(
        &self,
        push: PushParts<'_>,
        message: &Map<String, Value>,
        timestamp: i64,
    ) -> Result<PushRequest, CryptoError> {
        let PushParts {
            appid,
            token,
            aes_key,
            mode,
            format,
        } = push;
        let timestamp = timestamp.to_string();
        let nonce = (rand::random::<u32>() % 1_000_000_000).to_string();
        let openid = field_text(message, "FromUserName");
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair(
                "signature",
                &crypto::push_signature(token, &timestamp, &nonce),
            )
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("openid", &openid);
        let body = match mode {
            PushMode::Plaintext => render(format, message),
            PushMode::Compatible | PushMode::Safe => {
                let encrypt = PushCipher::new(aes_key)?.encrypt(&render(format, message), appid);
                query.append_pair("encrypt_type", "aes").append_pair(
                    "msg_signature",
                    &crypto::msg_signature(token, &timestamp, &nonce, &encrypt),
                );
                let mut envelope = if mode == PushMode::Compatible {
                    message.clone()
                } else {
                    let mut only = Map::new();
                    if let Some(to) = message.get("ToUserName") {
                        only.insert("ToUserName".into(), to.clone());
                    }
                    only
                };
                envelope.insert("Encrypt".into(), Value::String(encrypt));
                render(format, &envelope)
            }
        };
        self.user_wrote_at(appid, &openid, unix_now());
        Ok(PushRequest {
            query: query.finish(),
            body,
            content_type: match format {
                PushFormat::Json => "application/json",
                PushFormat::Xml => "text/xml",
            },
        })
    }

    /// The query string of WeChat's URL check for `token`.
    pub fn url_check_query(&self, token: &str, echostr: &str) -> String {
        let timestamp = unix_now().to_string();
        let nonce = random_hex(4);
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair(
                "signature",
                &crypto::push_signature(token, &timestamp, &nonce),
            )
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("echostr", echostr)
            .finish()
    }

    /// Record that `openid` wrote to `appid` at `unix_time` (tests move it into the past to
    /// close the 48-hour window).
    pub fn user_wrote_at(&self, appid: &str, openid: &str, unix_time: i64) {
        self.last_messages
            .lock()
            .insert((appid.to_string(), openid.to_string()), unix_time);
    }

    /// Customer-service calls accepted so far.
    pub fn custom_sends(&self) -> Vec<CustomSend> {
        self.custom_sends.lock().clone()
    }

    /// Media uploaded so far.
    pub fn uploads(&self) -> Vec<UploadedMedia> {
        self.media.lock().clone()
    }

    fn within_reply_window(&self, appid: &str, openid: &str) -> bool {
        self.last_messages
            .lock()
            .get(&(appid.to_string(), openid.to_string()))
            .is_some_and(|at| unix_now() - at < REPLY_WINDOW_SECONDS)
    }

    fn known_media(&self, appid: &str, media_id: &str) -> bool {
        self.media
            .lock()
            .iter()
            .any(|m| m.appid == appid && m.media_id == media_id)
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    access_token: String,
    #[serde(default, rename = "type")]
    media_type: String,
}

/// `POST cgi-bin/message/custom/send`.
pub async fn send(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Json<Value> {
    let (appid, body): (String, Value) = match authorized_json(&sim, &q.access_token, &body) {
        Ok(checked) => checked,
        Err(error) => return error,
    };
    let touser = body["touser"].as_str().unwrap_or("");
    if touser.is_empty() {
        return Json(wechat_error(40003, "invalid openid"));
    }
    let msgtype = body["msgtype"].as_str().unwrap_or("");
    let present = |keys: &[&str]| {
        keys.iter()
            .all(|key| body[msgtype][key].as_str().is_some_and(|v| !v.is_empty()))
    };
    let valid = match msgtype {
        "text" => present(&["content"]),
        "image" => {
            let media_id = body["image"]["media_id"].as_str().unwrap_or("");
            if !sim.known_media(&appid, media_id) {
                return Json(wechat_error(40007, "invalid media_id"));
            }
            true
        }
        "link" => present(&["title", "url"]),
        "miniprogrampage" => present(&["title", "pagepath", "thumb_media_id"]),
        _ => return Json(wechat_error(40008, "invalid message type")),
    };
    if !valid {
        return Json(wechat_error(47001, "data format error"));
    }
    let touser = touser.to_string();
    deliver(&sim, appid, &touser, "send", body)
}

/// `POST cgi-bin/message/custom/business/typing`.
pub async fn typing(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    body: Bytes,
) -> Json<Value> {
    let (appid, body): (String, Value) = match authorized_json(&sim, &q.access_token, &body) {
        Ok(checked) => checked,
        Err(error) => return error,
    };
    let touser = body["touser"].as_str().unwrap_or("");
    if !matches!(body["command"].as_str(), Some("Typing" | "CancelTyping")) || touser.is_empty() {
        return Json(wechat_error(47001, "data format error"));
    }
    let touser = touser.to_string();
    deliver(&sim, appid, &touser, "typing", body)
}

/// Record a send to `touser` when the 48-hour window allows it (45015 otherwise).
fn deliver(
    sim: &Simulator,
    appid: String,
    touser: &str,
    kind: &'static str,
    body: Value,
) -> Json<Value> {
    if !sim.within_reply_window(&appid, touser) {
        return Json(wechat_error(
            45015,
            "response out of time limit or subscription is canceled",
        ));
    }
    sim.custom_sends
        .lock()
        .push(CustomSend { appid, kind, body });
    Json(wechat_error(0, "ok"))
}

/// `POST cgi-bin/media/upload?type=image`, multipart field `media`.
pub async fn upload(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let appid = match sim.check_access_token(&q.access_token) {
        Ok(appid) => appid,
        Err(error) => return Json(error),
    };
    if !matches!(q.media_type.as_str(), "image" | "voice" | "video" | "thumb") {
        return Json(wechat_error(40004, "invalid media type"));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(part) = super::multipart::field(content_type, &body, "media") else {
        return Json(wechat_error(41005, "media data missing"));
    };
    if part.data.is_empty() {
        return Json(wechat_error(41005, "media data missing"));
    }
    let media_id = random_hex(16);
    sim.media.lock().push(UploadedMedia {
        appid,
        media_id: media_id.clone(),
        media_type: q.media_type.clone(),
        content_type: part.content_type,
        file_name: part.file_name,
        len: part.data.len(),
    });
    Json(json!({ "type": q.media_type, "media_id": media_id, "created_at": unix_now() }))
}

#[derive(Deserialize)]
pub struct PushBody {
    appid: String,
    token: String,
    #[serde(default)]
    aes_key: String,
    mode: PushMode,
    format: PushFormat,
    message: Map<String, Value>,
    /// When given, the push is sent there (append nothing: the query is added).
    #[serde(default)]
    url: Option<String>,
}

/// `POST /sim/push {"appid","token","aes_key","mode","format","message","url"?}` →
/// `{"query","body"}`, plus `{"answer":{"status","body"}}` when `url` was given and the push
/// delivered there.
pub async fn push(State(sim): State<Arc<Simulator>>, Json(request): Json<PushBody>) -> Json<Value> {
    let push = match sim.push_request(
        &request.appid,
        &request.token,
        &request.aes_key,
        request.mode,
        request.format,
        &request.message,
    ) {
        Ok(push) => push,
        Err(error) => return Json(json!({ "error": error.to_string() })),
    };
    let mut answer = json!({ "query": push.query, "body": push.body });
    if let Some(url) = request.url {
        let separator = if url.contains('?') { '&' } else { '?' };
        let sent = reqwest::Client::new()
            .post(format!("{url}{separator}{}", push.query))
            .header(http::header::CONTENT_TYPE, push.content_type)
            .body(push.body.clone())
            .send()
            .await;
        answer["answer"] = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                json!({ "status": status, "body": body })
            }
            Err(error) => json!({ "error": error.without_url().to_string() }),
        };
    }
    Json(answer)
}

/// A field as WeChat writes it in text.
fn field_text(message: &Map<String, Value>, name: &str) -> String {
    match message.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// `message` in the push format: JSON as is; XML with strings in CDATA and numbers bare.
fn render(format: PushFormat, message: &Map<String, Value>) -> String {
    match format {
        PushFormat::Json => Value::Object(message.clone()).to_string(),
        PushFormat::Xml => {
            let mut xml = String::from("<xml>");
            for (name, value) in message {
                xml.push_str(&format!("<{name}>"));
                match value {
                    Value::Number(n) => xml.push_str(&n.to_string()),
                    Value::String(s) => {
                        // "]]>" cannot appear inside one CDATA section: split it across two.
                        let escaped = s.replace("]]>", "]]]]><![CDATA[>");
                        xml.push_str(&format!("<![CDATA[{escaped}]]>"));
                    }
                    other => xml.push_str(&format!("<![CDATA[{other}]]>")),
                }
                xml.push_str(&format!("</{name}>"));
            }
            xml.push_str("</xml>");
            xml
        }
    }
}
