//! Access tokens as WeChat issues them.
//!
//! - `cgi-bin/token` (classic): every fetch issues a new token; the previous one keeps working
//!   for an overlap, then answers 40001.
//! - `cgi-bin/stable_token`: the same token for every caller while it is valid;
//!   `force_refresh` issues a new one (and retires the old after the overlap).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Simulator, random_hex, wechat_error};

/// One issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub appid: String,
    pub value: String,
    pub stable: bool,
    pub expires_at: Instant,
    /// Set when a newer token replaced this one: it dies at this instant.
    pub retires_at: Option<Instant>,
}

/// Token lifetimes, adjustable by tests.
#[derive(Debug, Clone, Copy)]
pub struct TokenTimes {
    /// `expires_in` of a new token.
    pub ttl: Duration,
    /// How long a replaced token keeps working.
    pub overlap: Duration,
}

impl Default for TokenTimes {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7_200),
            overlap: Duration::from_secs(300),
        }
    }
}

impl Simulator {
    /// The appid a valid `access_token` belongs to, or WeChat's 40001 body.
    pub fn check_access_token(&self, access_token: &str) -> Result<String, Value> {
        let now = Instant::now();
        let tokens = self.tokens.lock();
        match tokens.iter().find(|t| t.value == access_token) {
            Some(t) if t.expires_at > now && t.retires_at.is_none_or(|r| r > now) => {
                Ok(t.appid.clone())
            }
            Some(_) => Err(wechat_error(42001, "access_token expired")),
            None if access_token.is_empty() => Err(wechat_error(41001, "access_token missing")),
            None => Err(wechat_error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            )),
        }
    }

    /// How many tokens were fetched for `appid` (classic and stable fetches that issued or
    /// returned a token).
    pub fn token_fetches(&self, appid: &str) -> usize {
        self.token_fetches.lock().get(appid).copied().unwrap_or(0)
    }

    /// Kill every token of `appid` at once (as a secret reset would).
    pub fn revoke_tokens(&self, appid: &str) {
        let now = Instant::now();
        for token in self.tokens.lock().iter_mut().filter(|t| t.appid == appid) {
            token.retires_at = Some(now);
        }
    }

    /// Set token lifetimes for tokens issued from now on.
    pub fn set_token_times(&self, times: TokenTimes) {
        *self.token_times.lock() = times;
    }

    fn issue_token(&self, appid: &str, stable: bool) -> IssuedToken {
        let times = *self.token_times.lock();
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        // A new token of the same kind retires the previous ones after the overlap.
        for old in tokens
            .iter_mut()
            .filter(|t| t.appid == appid && t.stable == stable)
        {
            if old.retires_at.is_none() {
                old.retires_at = Some(now + times.overlap);
            }
        }
        let token = IssuedToken {
            appid: appid.to_string(),
            value: format!("{}{}", if stable { "ST" } else { "CT" }, random_hex(48)),
            stable,
            expires_at: now + times.ttl,
            retires_at: None,
        };
        tokens.push(token.clone());
        token
    }

    fn current_stable(&self, appid: &str) -> Option<IssuedToken> {
        let now = Instant::now();
        self.tokens
            .lock()
            .iter()
            .rev()
            .find(|t| t.appid == appid && t.stable && t.retires_at.is_none() && t.expires_at > now)
            .cloned()
    }

    fn count_fetch(&self, appid: &str) {
        *self
            .token_fetches
            .lock()
            .entry(appid.to_string())
            .or_insert(0) += 1;
    }
}

fn answer(token: &IssuedToken) -> Json<Value> {
    let expires_in = token
        .expires_at
        .saturating_duration_since(Instant::now())
        .as_secs();
    Json(json!({ "access_token": token.value, "expires_in": expires_in }))
}

/// The credentials both token endpoints take (query for classic, JSON for stable).
#[derive(Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    grant_type: String,
    #[serde(default)]
    appid: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    force_refresh: bool,
}

impl TokenRequest {
    /// WeChat's checks, counting the fetch when they pass.
    fn check(&self, sim: &Simulator) -> Result<(), Json<Value>> {
        sim.check_app(&self.appid, &self.secret).map_err(Json)?;
        if self.grant_type != "client_credential" {
            return Err(Json(wechat_error(40002, "invalid grant_type")));
        }
        sim.count_fetch(&self.appid);
        Ok(())
    }
}

/// `GET cgi-bin/token`.
pub async fn classic(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenRequest>,
) -> Json<Value> {
    if let Err(error) = q.check(&sim) {
        return error;
    }
    answer(&sim.issue_token(&q.appid, false))
}

/// `POST cgi-bin/stable_token`.
pub async fn stable(
    State(sim): State<Arc<Simulator>>,
    Json(request): Json<TokenRequest>,
) -> Json<Value> {
    if let Err(error) = request.check(&sim) {
        return error;
    }
    if let Some(current) = sim
        .current_stable(&request.appid)
        .filter(|_| !request.force_refresh)
    {
        return answer(&current);
    }
    answer(&sim.issue_token(&request.appid, true))
}
