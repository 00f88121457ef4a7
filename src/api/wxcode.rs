//! `GET /wxcode` — a mini-program code (`wxa/getwxacodeunlimit`) as an image.
//!
//! Everything WeChat would refuse is refused here first, with a message naming the parameter,
//! so a bad request never spends the app's daily quota.

use std::collections::HashMap;

use bytes::Bytes;
use pingora_proxy::Session as HttpSession;
use serde_json::{Value, json};

use super::{Reply, require_method, require_session};
use crate::error::ApiError;
use crate::gateway::routing::App;
use crate::state::State;

/// Characters WeChat allows in `scene`.
const SCENE_CHARS: &str = "!#$&'()*+,/:;=?@-._~";

pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Reply, ApiError> {
    require_method(session, &http::Method::GET)?;
    require_session(state, session, app).await?;
    let query: HashMap<String, String> = session
        .req_header()
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let body = request_body(&query)?;
    state
        .access_tokens
        .call(&app.config, |token| {
            let body = body.clone();
            async move { fetch(state, &token, &body).await }
        })
        .await
}

/// The JSON WeChat expects, validated.
fn request_body(query: &HashMap<String, String>) -> Result<Value, ApiError> {
    let invalid = |what: &str| ApiError::InvalidParam(what.to_string());
    let scene = query.get("scene").map(String::as_str).unwrap_or("");
    if scene.is_empty() || scene.chars().count() > 32 {
        return Err(invalid("scene: 1 to 32 characters"));
    }
    if !scene
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SCENE_CHARS.contains(c))
    {
        return Err(invalid("scene: only 0-9 A-Z a-z and !#$&'()*+,/:;=?@-._~"));
    }
    let mut body = json!({ "scene": scene });
    if let Some(page) = query.get("page").filter(|p| !p.is_empty()) {
        if page.starts_with('/') || page.contains('?') {
            return Err(invalid("page: no leading '/' and no query string"));
        }
        body["page"] = json!(page);
    }
    if let Some(width) = query.get("width") {
        let width: u32 = width.parse().map_err(|_| invalid("width: a number"))?;
        if !(280..=1280).contains(&width) {
            return Err(invalid("width: 280 to 1280"));
        }
        body["width"] = json!(width);
    }
    for flag in ["auto_color", "is_hyaline", "check_path"] {
        if let Some(value) = query.get(flag) {
            body[flag] =
                json!(parse_bool(value).ok_or_else(|| invalid(&format!("{flag}: true or false")))?);
        }
    }
    if let Some(version) = query.get("env_version") {
        if !["release", "trial", "develop"].contains(&version.as_str()) {
            return Err(invalid("env_version: release, trial or develop"));
        }
        body["env_version"] = json!(version);
    }
    if let Some(color) = query.get("line_color") {
        body["line_color"] = line_color(color)
            .ok_or_else(|| invalid("line_color: {\"r\":0-255,\"g\":…,\"b\":…}"))?;
    }
    Ok(body)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `{"r","g","b"}` with values 0-255, given as numbers or strings; WeChat wants strings.
fn line_color(raw: &str) -> Option<Value> {
    let color: Value = serde_json::from_str(raw).ok()?;
    let mut out = json!({});
    for channel in ["r", "g", "b"] {
        let value = match &color[channel] {
            Value::Number(n) => n.as_u64()?,
            Value::String(s) => s.parse().ok()?,
            _ => return None,
        };
        if value > 255 {
            return None;
        }
        out[channel] = json!(value.to_string());
    }
    Some(out)
}

/// One call to WeChat, counted in the metrics.
async fn fetch(state: &State, token: &str, body: &Value) -> Result<Reply, ApiError> {
    let url = state
        .wechat
        .url("wxa/getwxacodeunlimit", &[("access_token", token)])?;
    let started = std::time::Instant::now();
    let reply = fetch_from(state, url.clone(), body).await;
    state
        .wechat
        .record(&url, crate::wechat::errcode_of(&reply), started);
    reply
}

/// Image bytes on success, WeChat's errcode otherwise.
async fn fetch_from(state: &State, url: url::Url, body: &Value) -> Result<Reply, ApiError> {
    let response = state
        .wechat
        .http()
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(crate::wechat::unavailable)?;
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = response.status();
    let bytes: Bytes = response.bytes().await.map_err(crate::wechat::unavailable)?;
    if !status.is_success() {
        return Err(ApiError::WeChatUnavailable(format!("HTTP {status}")));
    }
    if content_type.starts_with("image/") {
        return Ok(Reply::Bytes {
            content_type,
            body: bytes,
        });
    }
    // WeChat answers errors as JSON (with HTTP 200).
    Err(crate::wechat::error_from(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn valid_parameters_become_wechats_body() {
        let body = request_body(&query(&[
            ("scene", "id=7&x=a.b"),
            ("page", "pages/index/index"),
            ("width", "430"),
            ("is_hyaline", "true"),
            ("line_color", "{\"r\":1,\"g\":\"2\",\"b\":3}"),
            ("env_version", "trial"),
        ]))
        .unwrap();
        assert_eq!(body["scene"], "id=7&x=a.b");
        assert_eq!(body["width"], 430);
        assert_eq!(body["is_hyaline"], true);
        assert_eq!(body["line_color"], json!({"r":"1","g":"2","b":"3"}));
    }

    #[test]
    fn invalid_parameters_are_refused_before_wechat() {
        let cases = [
            vec![],
            vec![("scene", "x".repeat(33))],
            vec![("scene", "空".to_string())],
            vec![("scene", "a b".to_string())],
            vec![("scene", "a".to_string()), ("width", "279".to_string())],
            vec![("scene", "a".to_string()), ("width", "1281".to_string())],
            vec![("scene", "a".to_string()), ("page", "/pages/x".to_string())],
            vec![
                ("scene", "a".to_string()),
                ("page", "pages/x?y=1".to_string()),
            ],
            vec![
                ("scene", "a".to_string()),
                ("env_version", "prod".to_string()),
            ],
            vec![
                ("scene", "a".to_string()),
                ("line_color", "{\"r\":300,\"g\":0,\"b\":0}".to_string()),
            ],
            vec![
                ("scene", "a".to_string()),
                ("auto_color", "yes".to_string()),
            ],
        ];
        for case in cases {
            let q: HashMap<String, String> = case
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            assert!(request_body(&q).is_err(), "{case:?}");
        }
    }
}
