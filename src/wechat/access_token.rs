//! Access tokens: one per app, held in memory and shared through the store.
//!
//! - `stable` mode (default) uses `cgi-bin/stable_token`: WeChat hands every caller the same
//!   token while it is valid, so any number of nodes can fetch without invalidating each other.
//! - `classic` mode uses `cgi-bin/token`, where every fetch retires the previous token: nodes
//!   take a lease in the store so that only one of them fetches per expiry, write with
//!   compare-and-set, and the others read what it wrote.
//!
//! Within a node, concurrent callers wait on one refresh (a per-app async mutex: single
//! flight). [`AccessTokens::call`] retries a call once with a fresh token when WeChat says the
//! token is invalid or expired (40001, 40014, 42001) — once, never in a loop. Tokens are
//! never logged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::WeChatClient;
use crate::config::{AppConfig, TokenMode};
use crate::error::ApiError;
use crate::store::{Store, StoredToken};
use crate::types::unix_now;

/// errcodes that mean "this access token is no good".
pub const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];
/// How long a node may hold the classic-fetch lease.
const FETCH_LEASE_SECONDS: i64 = 15;
/// How long a node waits for another node's classic fetch before giving up.
const WAIT_FOR_PEER: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
}

/// A token in memory.
#[derive(Clone)]
struct Held {
    token: Arc<str>,
    refresh_at: i64,
}

/// Per-app slot: the held token, and the mutex that makes refreshes single-flight.
#[derive(Default)]
struct Slot {
    held: parking_lot::RwLock<Option<Held>>,
    refresh: tokio::sync::Mutex<()>,
}

/// The access-token manager of every app.
pub struct AccessTokens {
    store: Arc<Store>,
    wechat: WeChatClient,
    /// Made on an app's first call, so apps a reload adds get one too.
    slots: parking_lot::RwLock<HashMap<String, Arc<Slot>>>,
}

impl AccessTokens {
    pub fn new(store: Arc<Store>, wechat: WeChatClient) -> Self {
        Self {
            store,
            wechat,
            slots: parking_lot::RwLock::default(),
        }
    }

    /// The app's slot, made on first use.
    fn slot(&self, appid: &str) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().get(appid) {
            return slot.clone();
        }
        self.slots
            .write()
            .entry(appid.to_string())
            .or_default()
            .clone()
    }

    /// Run `call` with the app's access token; when WeChat refuses the token, drop it, fetch a
    /// fresh one and run `call` once more.
    pub async fn call<T, F, Fut>(&self, app: &AppConfig, call: F) -> Result<T, ApiError>
    where
        F: Fn(Arc<str>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let token = self.get(app).await?;
        match call(token.clone()).await {
            Err(ApiError::WeChat { errcode, .. }) if TOKEN_ERRCODES.contains(&errcode) => {
                tracing::warn!(appid = %app.appid, errcode, "access token refused; refreshing once");
                self.invalidate(app, &token).await;
                let token = self.get(app).await?;
                call(token).await
            }
            other => other,
        }
    }

    /// The app's current access token, fetching one when needed.
    pub async fn get(&self, app: &AppConfig) -> Result<Arc<str>, ApiError> {
        let slot = self.slot(&app.appid);
        if let Some(token) = fresh(&slot.held.read()) {
            return Ok(token);
        }
        let _single_flight = slot.refresh.lock().await;
        if let Some(token) = fresh(&slot.held.read()) {
            return Ok(token);
        }
        let held = self.refresh(app).await?;
        let token = held.token.clone();
        *slot.held.write() = Some(held);
        Ok(token)
    }

    /// Forget `token` here and in the store (unless a newer token replaced it already).
    async fn invalidate(&self, app: &AppConfig, token: &str) {
        if let Some(slot) = self.slots.read().get(&app.appid).cloned() {
            let mut held = slot.held.write();
            if held.as_ref().is_some_and(|h| &*h.token == token) {
                *held = None;
            }
        }
        if let Err(error) = self.store.expire_access_token(&app.appid, token).await {
            tracing::warn!(appid = %app.appid, %error, "could not expire the access token in the store");
        }
    }

    /// A token from the store when it is still fresh there, else from WeChat.
    async fn refresh(&self, app: &AppConfig) -> Result<Held, ApiError> {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_PEER;
        loop {
            let stored = match self.store.access_token(&app.appid).await {
                Ok(stored) => stored,
                Err(error @ crate::store::StoreError::Unavailable(_)) => {
                    // Without the store, serve from WeChat directly rather than fail every call.
                    tracing::warn!(appid = %app.appid, %error, "token store unavailable; fetching directly");
                    return self.fetch(app).await.map(|t| held_from(&t));
                }
                Err(error) => return Err(error.into()),
            };
            let now = unix_now();
            if !stored.token.is_empty() && now < stored.refresh_at {
                return Ok(held_from(&stored));
            }
            let may_fetch = match app.token_mode {
                TokenMode::Stable => true,
                TokenMode::Classic => self
                    .store
                    .claim_token_fetch(&app.appid, now, now + FETCH_LEASE_SECONDS)
                    .await
                    .unwrap_or(false),
            };
            if may_fetch {
                let mut fetched = self.fetch(app).await?;
                fetched.version = stored.version;
                if !self
                    .store
                    .save_access_token(&app.appid, &fetched)
                    .await
                    .unwrap_or(false)
                {
                    // Another node wrote first (stable mode: the same token, most likely).
                    tracing::debug!(appid = %app.appid, "access token row changed meanwhile");
                }
                tracing::info!(appid = %app.appid, mode = ?app.token_mode, "access token fetched");
                return Ok(held_from(&fetched));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::WeChatUnavailable(
                    "waited too long for another node's token fetch".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ask WeChat for a token.
    async fn fetch(&self, app: &AppConfig) -> Result<StoredToken, ApiError> {
        let fetched = self.fetch_from_wechat(app).await;
        if fetched.is_ok() {
            self.wechat.metrics().access_token_refreshed(&app.appid);
        }
        fetched
    }

    async fn fetch_from_wechat(&self, app: &AppConfig) -> Result<StoredToken, ApiError> {
        let answer: TokenAnswer = match app.token_mode {
            TokenMode::Stable => {
                let url = self.wechat.url("cgi-bin/stable_token", &[])?;
                let body = json!({
                    "grant_type": "client_credential",
                    "appid": app.appid,
                    "secret": app.secret.expose(),
                    "force_refresh": false,
                });
                self.wechat.post_json(url, &body).await?
            }
            TokenMode::Classic => {
                let url = self.wechat.url(
                    "cgi-bin/token",
                    &[
                        ("grant_type", "client_credential"),
                        ("appid", &app.appid),
                        ("secret", app.secret.expose()),
                    ],
                )?;
                self.wechat.get_json(url).await?
            }
        };
        let now = unix_now();
        let expires_in = answer.expires_in.max(1);
        // Refresh early (up to 5 minutes, never more than half the lifetime: a stable token in
        // its rotation window comes with a short expires_in).
        let margin = (expires_in / 2).min(300);
        Ok(StoredToken {
            token: answer.access_token,
            expires_at: now + expires_in,
            refresh_at: now + expires_in - margin,
            version: 0,
        })
    }
}

fn fresh(held: &Option<Held>) -> Option<Arc<str>> {
    held.as_ref()
        .filter(|h| unix_now() < h.refresh_at)
        .map(|h| h.token.clone())
}

fn held_from(stored: &StoredToken) -> Held {
    Held {
        token: Arc::from(stored.token.as_str()),
        refresh_at: stored.refresh_at,
    }
}
