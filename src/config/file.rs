//! The YAML file as written by an operator: plain serde structs, unknown keys refused.
//!
//! Nothing here is trusted yet; [`super::validate`] turns it into the typed model. Key names are
//! part of mpapi's public interface (the original service's operators already have files), so
//! renaming a field here is a breaking change.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub database: DatabaseSection,
    #[serde(default)]
    pub session: SessionSection,
    pub wechat: WechatSection,
    pub apps: Vec<AppSection>,
    #[serde(default)]
    pub notify: NotifySection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub dev: Option<DevSection>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub log: LogSection,
}

/// `admin:` — the listener for metrics and probes (absent: off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
}

/// `log:` — the access log and the application log's format.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `off` (default), `stdout`, or a file path.
    pub access: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

/// `limits:` — per-node rate limits on the native endpoints; 0 turns one off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub login_per_ip_per_minute: Option<u32>,
    pub native_per_token_per_minute: Option<u32>,
}

/// `server:` — the listening side of the gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub tls: Option<TlsSection>,
    pub threads: Option<usize>,
    /// Largest request body a native endpoint accepts, in bytes.
    pub body_limit: Option<usize>,
    pub upstream_connect_timeout_ms: Option<u64>,
    pub upstream_read_timeout_ms: Option<u64>,
    /// From a request's first byte (a new connection's first request: from its opening) to the
    /// end of its header.
    pub client_header_timeout_ms: Option<u64>,
    /// How long a write to a client may make no progress.
    pub client_send_timeout_ms: Option<u64>,
    /// How long a client connection may wait idle between requests.
    pub client_keepalive_timeout_seconds: Option<u64>,
    /// Requests one HTTP/1 client connection serves before it is closed; 0: no limit.
    pub client_keepalive_requests: Option<u32>,
    /// Connections one client address may have open at once; 0: no cap.
    pub client_connections_per_address: Option<u32>,
    pub health_check_interval_seconds: Option<u64>,
    /// CIDRs whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// PEM file of CAs an HTTPS upstream may chain to, besides the system's roots.
    pub upstream_ca: Option<String>,
    /// How often upstream host names are resolved again.
    pub upstream_dns_refresh_seconds: Option<u64>,
    /// Where a new process (`-u`) asks the old one for its listening sockets.
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    /// After SIGQUIT/SIGTERM: how long the old process keeps serving.
    pub grace_period_seconds: Option<u64>,
    /// Then how long requests in flight get before the runtimes stop.
    pub graceful_shutdown_timeout_seconds: Option<u64>,
}

/// `server.tls:` — TLS termination: the default certificate, then any chosen by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: String,
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub certificates: Vec<CertificatePairSection>,
}

/// `server.tls.certificates[]` — one more certificate chain and its key (PEM files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePairSection {
    pub cert: String,
    pub key: String,
}

/// `database:` — where users and sessions live.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub url: String,
    pub max_connections: Option<u32>,
    pub acquire_timeout_ms: Option<u64>,
}

/// `session:` — token lifetime and the cache in front of the store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    pub ttl_seconds: Option<u64>,
    pub extend_interval_seconds: Option<u64>,
    pub cache_capacity: Option<u64>,
    pub cache_ttl_seconds: Option<u64>,
    pub negative_cache_seconds: Option<u64>,
    pub token_key: Option<String>,
    /// MySQL: how often each node reads the other nodes' session changes.
    pub sync_interval_ms: Option<u64>,
}

/// `wechat:` — how mpapi reaches WeChat's server API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSection {
    pub api_base: String,
    pub timeout_ms: Option<u64>,
}

/// One entry of `apps:` — a mini program and the backends behind it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub appid: String,
    pub secret: String,
    pub upstreams: Vec<String>,
    pub host_token: Option<String>,
    #[serde(default)]
    pub require_login: bool,
    /// `stable` (default) or `classic` access tokens.
    pub token_mode: Option<String>,
    /// IANA time zone of `active_at` in `/notify` (default Asia/Shanghai).
    pub timezone: Option<String>,
    /// Customer-service message push settings.
    pub messages: Option<MessagesSection>,
}

/// `apps[].messages:` — customer-service messages pushed by WeChat and replies to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesSection {
    /// The push Token set in the mini-program console.
    pub token: String,
    /// The 43-character EncodingAESKey (safe and compatible modes).
    pub aes_key: Option<String>,
    /// Where received messages are forwarded.
    pub forward_url: Option<String>,
    /// Sent to `forward_url` as `Authorization`.
    pub forward_token: Option<String>,
    /// Callers of `/message_reply` must send it as `Authorization`.
    pub reply_token: Option<String>,
    /// Pushes whose `timestamp` is further than this from the node's clock are refused.
    pub max_age_seconds: Option<u64>,
}

/// `notify:` — the subscribe-message dispatcher.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    pub poll_interval_ms: Option<u64>,
    pub batch_size: Option<u32>,
    pub concurrency: Option<usize>,
    pub max_attempts: Option<u32>,
    pub retry_backoff_seconds: Option<u64>,
    pub lease_seconds: Option<u64>,
}

/// `dev:` — side services started in-process for local development and demos.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevSection {
    /// Start the built-in WeChat simulator on this address.
    pub simulator: Option<String>,
    /// Start an echo upstream on this address (answers with what it received).
    pub echo_upstream: Option<String>,
}
