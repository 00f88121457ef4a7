//! `POST /message_reply` — the help desk answers a user through WeChat's customer-service API.
//!
//! Called by the help desk, not by the mini program: it proves itself with
//! `Authorization: <apps[].messages.reply_token>` (compared in constant time). Body:
//! `{"source", "target": openid, "type", "content"}` where `type` is `text` (content: the text),
//! `image` (content: `{"internal_url"}`, downloaded here and uploaded to WeChat, or
//! `{"media_id"}`), `link` (`{"title","description","url","thumb_url"}`), `miniprogrampage`
//! (`{"title","pagepath","thumb_media_id"}`) or `typing` (`Typing` / `CancelTyping`).
//! `source` is the help desk's own label: accepted, logged, not used. WeChat's refusals come
//! back with their errcode (45015: the user's 48-hour window has closed).

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session as HttpSession;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{parse_json, read_body, require_method};
use crate::config::MessagesConfig;
use crate::error::{ApiError, ok_message};
use crate::gateway::routing::App;
use crate::state::State;
use crate::wechat::crypto::secure_eq;

/// Largest image accepted from `internal_url` (WeChat's limit for temporary images).
const MAX_IMAGE_BYTES: usize = 10 << 20;

#[derive(Deserialize)]
pub(super) struct ReplyRequest {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    target: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    content: Value,
}

impl ReplyRequest {
    /// The structured content its `type` names, parsed as [`deliver`] parses it.
    pub(super) fn parse_content(&self) -> Result<(), ApiError> {
        match self.kind.as_str() {
            "image" => structured::<ImageContent>(&self.content).map(drop),
            "link" => structured::<LinkContent>(&self.content).map(drop),
            "miniprogrampage" => structured::<PageContent>(&self.content).map(drop),
            _ => Ok(()),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ImageContent {
    #[serde(default)]
    internal_url: String,
    #[serde(default)]
    media_id: String,
}

#[derive(Deserialize)]
pub(super) struct LinkContent {
    title: String,
    #[serde(default)]
    description: String,
    url: String,
    #[serde(default)]
    thumb_url: String,
}

#[derive(Deserialize)]
pub(super) struct PageContent {
    title: String,
    pagepath: String,
    thumb_media_id: String,
}

pub async fn handle(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Value, ApiError> {
    require_method(session, &http::Method::POST)?;
    let config = app.config.messages.as_ref().ok_or_else(|| {
        ApiError::Forbidden("customer-service messages are not configured for this app".into())
    })?;
    authorize(config, session)?;
    let body = read_body(session, state.config.server.body_limit).await?;
    let request: ReplyRequest = parse_json(&body)?;
    let target = request.target.trim();
    if target.is_empty() || target.len() > 128 {
        return Err(ApiError::InvalidParam(
            "target (the user's openid) is required".into(),
        ));
    }
    let appid = &app.config.appid;
    let source = request.source.as_deref().unwrap_or("");
    let outcome = deliver(state, app, target, &request).await;
    match &outcome {
        Ok(()) => tracing::info!(%appid, kind = %request.kind, %source, "message reply sent"),
        Err(ApiError::WeChat { errcode, .. }) => {
            tracing::warn!(%appid, kind = %request.kind, %source, errcode, "message reply refused by WeChat")
        }
        Err(error) => {
            tracing::warn!(%appid, kind = %request.kind, %source, status = error.status(), "message reply not sent")
        }
    }
    outcome.map(|()| ok_message("sent"))
}

/// Build the customer-service message of `request` and send it to `target` through WeChat.
async fn deliver(
    state: &State,
    app: &App,
    target: &str,
    request: &ReplyRequest,
) -> Result<(), ApiError> {
    let message = match request.kind.as_str() {
        "text" => {
            let text = request.content.as_str().unwrap_or("");
            if text.is_empty() {
                return Err(ApiError::InvalidParam(
                    "content (the text) is required".into(),
                ));
            }
            json!({ "touser": target, "msgtype": "text", "text": { "content": text } })
        }
        "image" => {
            let image: ImageContent = structured(&request.content)?;
            let media_id = if image.media_id.is_empty() {
                upload(state, app, &image.internal_url).await?
            } else {
                image.media_id
            };
            json!({ "touser": target, "msgtype": "image", "image": { "media_id": media_id } })
        }
        "link" => {
            let link: LinkContent = structured(&request.content)?;
            json!({ "touser": target, "msgtype": "link", "link": {
                "title": link.title, "description": link.description,
                "url": link.url, "thumb_url": link.thumb_url,
            }})
        }
        "miniprogrampage" => {
            let page: PageContent = structured(&request.content)?;
            json!({ "touser": target, "msgtype": "miniprogrampage", "miniprogrampage": {
                "title": page.title, "pagepath": page.pagepath, "thumb_media_id": page.thumb_media_id,
            }})
        }
        "typing" => {
            let command = match request.content.as_str() {
                Some(command @ ("Typing" | "CancelTyping")) => command,
                _ => {
                    return Err(ApiError::InvalidParam(
                        "content must be Typing or CancelTyping".into(),
                    ));
                }
            };
            state
                .access_tokens
                .call(&app.config, |token| async move {
                    state.wechat.custom_typing(&token, target, command).await
                })
                .await?;
            return Ok(());
        }
        _ => {
            return Err(ApiError::InvalidParam(
                "type must be text, image, link, miniprogrampage or typing".into(),
            ));
        }
    };
    state
        .access_tokens
        .call(&app.config, |token| {
            let message = &message;
            async move { state.wechat.send_custom_message(&token, message).await }
        })
        .await?;
    Ok(())
}

/// The caller must present the app's `reply_token`; an app without one takes no replies.
fn authorize(config: &MessagesConfig, session: &HttpSession) -> Result<(), ApiError> {
    let expected = config.reply_token.as_ref().ok_or_else(|| {
        ApiError::Forbidden("replies are not enabled for this app (no reply_token)".into())
    })?;
    let given = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if secure_eq(given, expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("invalid reply token".into()))
    }
}

/// `content` as a JSON object, whether sent as one or as a string holding one.
fn structured<T: DeserializeOwned>(content: &Value) -> Result<T, ApiError> {
    let parsed;
    let value = match content {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|_| ApiError::InvalidParam("content is not valid JSON".into()))?;
            &parsed
        }
        other => other,
    };
    T::deserialize(value)
        .map_err(|error| ApiError::InvalidParam(format!("invalid content: {error}")))
}

/// Download the help desk's image and upload it to WeChat; its `media_id`.
async fn upload(state: &State, app: &App, internal_url: &str) -> Result<String, ApiError> {
    let url = url::Url::parse(internal_url)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| {
            ApiError::InvalidParam("content.internal_url is not an http(s) URL".into())
        })?;
    let file_name = url
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .filter(|name| !name.is_empty())
        .unwrap_or("image.jpg")
        .to_string();
    let (image, content_type) = download(state, url).await?;
    state
        .access_tokens
        .call(&app.config, |token| {
            let (image, file_name, content_type) = (image.clone(), &file_name, &content_type);
            async move {
                state
                    .wechat
                    .upload_image(&token, image, file_name, content_type)
                    .await
            }
        })
        .await
}

/// The image bytes and their content type, refusing anything over [`MAX_IMAGE_BYTES`].
async fn download(state: &State, url: url::Url) -> Result<(Bytes, String), ApiError> {
    let failed = |error: reqwest::Error| {
        let error = error.without_url();
        tracing::warn!(%error, "image download failed");
        ApiError::UpstreamUnavailable("image download failed".into())
    };
    let mut response = state.wechat.http().get(url).send().await.map_err(failed)?;
    if !response.status().is_success() {
        return Err(ApiError::InvalidParam(format!(
            "content.internal_url answered HTTP {}",
            response.status().as_u16()
        )));
    }
    let too_large = || ApiError::InvalidParam("the image is larger than 10 MiB".into());
    if response
        .content_length()
        .is_some_and(|len| len > MAX_IMAGE_BYTES as u64)
    {
        return Err(too_large());
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("image/"))
        .unwrap_or("image/jpeg")
        .to_string();
    let mut image = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if image.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err(too_large());
        }
        image.extend_from_slice(&chunk);
    }
    Ok((image.freeze(), content_type))
}
