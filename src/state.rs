//! What every request and background task shares: the configuration, the apps and their pools,
//! the store, the sessions and the WeChat client. Built once at start, then read-only.

use std::sync::Arc;

use crate::config::Config;
use crate::gateway::limits::RateLimits;
use crate::gateway::routing::Apps;
use crate::messages::Forwarder;
use crate::session::Sessions;
use crate::store::Store;
use crate::wechat::WeChatClient;
use crate::wechat::access_token::AccessTokens;

/// Shared state of one gateway.
pub struct State {
    pub config: Config,
    pub apps: Apps,
    pub store: Arc<Store>,
    pub sessions: Sessions,
    pub wechat: WeChatClient,
    pub access_tokens: AccessTokens,
    /// Wakes the customer-service message forwarder.
    pub messages: Forwarder,
    /// Per-node rate limits on the native endpoints.
    pub limits: RateLimits,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("upstreams: {0}")]
    Upstreams(String),
    #[error("wechat client: {0}")]
    WeChat(#[from] reqwest::Error),
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

impl State {
    /// Connect the store (migrating it), build the pools and the clients.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let store = Arc::new(Store::connect(&config.database).await?);
        let sessions = Sessions::new(store.clone(), &config.session).await?;
        let apps = Apps::build(&config)
            .await
            .map_err(|e| StartError::Upstreams(e.to_string()))?;
        let wechat = WeChatClient::new(&config.wechat)?;
        let access_tokens = AccessTokens::new(
            store.clone(),
            wechat.clone(),
            config.apps.iter().map(|app| app.appid.clone()),
        );
        let messages = Forwarder::new(&config)?;
        let limits = RateLimits::new(&config.limits);
        Ok(Self {
            access_tokens,
            messages,
            limits,
            config,
            apps,
            store,
            sessions,
            wechat,
        })
    }
}
