//! The client of WeChat's server API.
//!
//! One pooled `reqwest` client for every app. WeChat answers errors as `{"errcode","errmsg"}`
//! with HTTP 200, so every call goes through [`WeChatClient::get_json`]/[`WeChatClient::post_json`],
//! which turn a non-zero `errcode` into [`ApiError::WeChat`] and a network failure or timeout into
//! [`ApiError::WeChatUnavailable`]. URLs carry secrets and access tokens in their query, so no
//! error from here ever includes one (`reqwest::Error::without_url`).

pub mod access_token;
pub mod crypto;
pub mod custom_service;
mod phone;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{AppConfig, WechatConfig};
use crate::error::ApiError;
use crate::observe::Metrics;

/// What `sns/jscode2session` returns.
#[derive(Debug, Deserialize)]
pub struct CodeSession {
    pub openid: String,
    pub session_key: String,
    #[serde(default)]
    pub unionid: Option<String>,
}

/// WeChat's error fields, present on every answer.
#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// Shared client for WeChat's API.
#[derive(Clone)]
pub struct WeChatClient {
    http: reqwest::Client,
    base: Url,
    metrics: Arc<Metrics>,
}

impl WeChatClient {
    pub fn new(config: &WechatConfig, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(3)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: config.api_base.clone(),
            metrics,
        })
    }

    /// The gateway's metrics, for callers that count what came of a call.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The API a URL of this client calls: its path after the API base (`sns/jscode2session`).
    pub fn api_of<'a>(&self, url: &'a Url) -> &'a str {
        url.path()
            .strip_prefix(self.base.path())
            .unwrap_or(url.path())
            .trim_start_matches('/')
    }

    /// Count one call to `url`: `errcode` 0 on success, `None` when WeChat did not answer.
    pub fn record(&self, url: &Url, errcode: Option<i64>, started: Instant) {
        self.metrics
            .wechat_call(self.api_of(url), errcode, started.elapsed());
    }

    /// `path` resolved against the API base, with `query` appended.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ApiError> {
        let mut url = self.base.join(path).map_err(|_| ApiError::Internal)?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url)
    }

    /// Exchange a `wx.login` code for the user's openid and session key.
    pub async fn code2session(&self, app: &AppConfig, code: &str) -> Result<CodeSession, ApiError> {
        let url = self.url(
            "sns/jscode2session",
            &[
                ("appid", app.appid.as_str()),
                ("secret", app.secret.expose()),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ],
        )?;
        self.get_json(url).await
    }

    /// GET `url` and decode WeChat's JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = match self.http.get(url.clone()).send().await {
            Ok(response) => decode(response).await,
            Err(error) => Err(unavailable(error)),
        };
        self.record(&url, errcode_of(&result), started);
        result
    }

    /// POST `body` as JSON to `url` and decode WeChat's JSON answer.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        url: Url,
        body: &serde_json::Value,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = match self.http.post(url.clone()).json(body).send().await {
            Ok(response) => decode(response).await,
            Err(error) => Err(unavailable(error)),
        };
        self.record(&url, errcode_of(&result), started);
        result
    }

    /// The underlying HTTP client, for calls that answer bytes rather than JSON.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The errcode label of a call's outcome: 0, WeChat's errcode, or `None` for no usable answer.
pub fn errcode_of<T>(result: &Result<T, ApiError>) -> Option<i64> {
    match result {
        Ok(_) => Some(0),
        Err(ApiError::WeChat { errcode, .. }) => Some(*errcode),
        Err(_) => None,
    }
}

/// A failure to reach WeChat, described without the URL (it holds secrets).
pub fn unavailable(error: reqwest::Error) -> ApiError {
    let error = error.without_url();
    tracing::warn!(%error, "wechat request failed");
    ApiError::WeChatUnavailable(error.to_string())
}

/// The error WeChat answered in `body` (`{"errcode","errmsg"}`), for calls whose success is
/// not JSON (an image, say): anything else counts as errcode -1.
pub fn error_from(body: &[u8]) -> ApiError {
    let status: Status = serde_json::from_slice(body).unwrap_or_default();
    ApiError::WeChat {
        errcode: if status.errcode == 0 {
            -1
        } else {
            status.errcode
        },
        errmsg: if status.errmsg.is_empty() {
            "unexpected answer".to_string()
        } else {
            status.errmsg
        },
    }
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiError> {
    let status = response.status();
    let body = response.bytes().await.map_err(unavailable)?;
    if !status.is_success() {
        tracing::warn!(status = status.as_u16(), "wechat answered an HTTP error");
        return Err(ApiError::WeChatUnavailable(format!("HTTP {status}")));
    }
    let outcome: Status = serde_json::from_slice(&body).unwrap_or_default();
    if outcome.errcode != 0 {
        return Err(ApiError::WeChat {
            errcode: outcome.errcode,
            errmsg: outcome.errmsg,
        });
    }
    serde_json::from_slice(&body).map_err(|error| {
        tracing::warn!(%error, "wechat answered unexpected JSON");
        ApiError::WeChatUnavailable("unexpected answer".into())
    })
}
