//! What every request and background task shares: the configuration, the apps and their pools,
//! the store, the sessions and the WeChat client.
//!
//! Built once at start. What a reload (SIGHUP) may change — the apps and their per-app keys,
//! the trusted proxies — lives in one [`Routing`] swapped whole: a request takes the routing in
//! force when it starts (one atomic load, no lock) and keeps it to the end. Everything else is
//! fixed for the life of the process; a reload that changes it says so.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{AppConfig, Config};
use crate::gateway::forwarded::TrustedProxies;
use crate::gateway::limits::RateLimits;
use crate::gateway::routing::{App, Apps};
use crate::messages::Forwarder;
use crate::observe::{AccessLog, Metrics};
use crate::session::Sessions;
use crate::store::Store;
use crate::wechat::WeChatClient;
use crate::wechat::access_token::AccessTokens;

/// Shared state of one gateway.
pub struct State {
    /// The configuration the process started with. Its keys outside `apps` and
    /// `server.trusted_proxies` are the ones in force; per-app keys are read from
    /// [`State::routing`], which a reload replaces.
    pub config: Config,
    routing: ArcSwap<Routing>,
    pub store: Arc<Store>,
    pub sessions: Sessions,
    pub wechat: WeChatClient,
    pub access_tokens: AccessTokens,
    /// Wakes the customer-service message forwarder.
    pub messages: Forwarder,
    /// Per-node rate limits on the native endpoints.
    pub limits: RateLimits,
    pub metrics: Arc<Metrics>,
    /// Whether requests are counted in the metrics: only when something can scrape them
    /// (`admin.listen` is set), so a gateway without monitoring pays nothing per request.
    pub counts_requests: bool,
    /// `None` when `log.access` is off.
    pub access_log: Option<AccessLog>,
    /// Where the admin listener took its port (known once it is bound).
    pub admin_addr: OnceLock<SocketAddr>,
    /// The process's shutdown, which also ends the health checks of pools a reload adds.
    shutdown: watch::Receiver<bool>,
}

/// What a reload replaces, as one value.
pub struct Routing {
    pub apps: Apps,
    pub trusted_proxies: TrustedProxies,
}

impl Routing {
    async fn build(
        config: &Config,
        previous: Option<&Routing>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let apps = Apps::build(config, previous.map(|routing| &routing.apps), metrics)
            .await
            .map_err(|e| StartError::Upstreams(e.to_string()))?;
        Ok(Self {
            apps,
            trusted_proxies: config.server.trusted_proxies.clone(),
        })
    }

    /// Whether any app forwards customer-service messages to a help desk.
    pub fn forwards_messages(&self) -> bool {
        self.apps.iter().any(|app| {
            app.config
                .messages
                .as_ref()
                .is_some_and(|m| m.forward_url.is_some())
        })
    }
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
    #[error("log.access: {0}")]
    AccessLog(std::io::Error),
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// Keys whose new values wait for the next start (or an upgrade with `-u`).
    pub needing_restart: Vec<&'static str>,
}

impl State {
    /// Connect the store (migrating it), build the pools and the clients. Health checks start
    /// here and end with `shutdown`.
    pub async fn build(
        config: Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StartError> {
        let metrics = Metrics::new();
        let store = Arc::new(Store::connect(&config.database).await?);
        let sessions = Sessions::new(store.clone(), &config.session, metrics.clone()).await?;
        let routing = Routing::build(&config, None, &metrics).await?;
        routing.apps.start_health_checks(&shutdown);
        let wechat = WeChatClient::new(&config.wechat, metrics.clone())?;
        let access_log = match &config.log.access {
            Some(target) => {
                Some(AccessLog::start(target, metrics.clone()).map_err(StartError::AccessLog)?)
            }
            None => None,
        };
        let access_tokens = AccessTokens::new(store.clone(), wechat.clone());
        let messages = Forwarder::new()?;
        let limits = RateLimits::new(&config.limits);
        Ok(Self {
            routing: ArcSwap::from_pointee(routing),
            access_tokens,
            messages,
            limits,
            metrics,
            counts_requests: config.admin.listen.is_some(),
            access_log,
            admin_addr: OnceLock::new(),
            config,
            store,
            sessions,
            wechat,
            shutdown,
        })
    }

    /// Whether anything records requests (metrics or the access log): when nothing does, a
    /// request reads no clock and its logging phase does nothing.
    pub fn observes_requests(&self) -> bool {
        self.counts_requests || self.access_log.is_some()
    }

    /// Whether the process is shutting down (SIGTERM, SIGINT, or the end of a handover).
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The routing in force. Hold the guard for one request at most.
    pub fn routing(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.routing.load()
    }

    /// The app registered as `appid` in the routing in force.
    pub fn app(&self, appid: &str) -> Option<Arc<App>> {
        self.routing.load().apps.get(appid).cloned()
    }

    /// The configuration of the app registered as `appid` now.
    pub fn app_config(&self, appid: &str) -> Option<AppConfig> {
        self.app(appid).map(|app| app.config.clone())
    }

    /// Put `config`'s apps and trusted proxies in force for the next requests (requests under
    /// way finish with the routing they started with). Keys that cannot change in place are
    /// named in the answer and keep their old values. `config` has been validated already; a
    /// failure here (an upstream that cannot be set up) changes nothing.
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, StartError> {
        let routing = Routing::build(config, Some(&self.routing.load()), &self.metrics).await?;
        routing.apps.start_health_checks(&self.shutdown);
        self.routing.store(Arc::new(routing));
        self.messages.wake();
        Ok(Reloaded {
            needing_restart: self.config.keys_needing_restart(config),
        })
    }
}
