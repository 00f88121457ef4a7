//! Configuration: the YAML file ([`file`](mod@file)) is read, `${VAR}`s are expanded
//! ([`env`](mod@env)), and one validation pass turns it into [`Config`], the typed model the
//! rest of mpapi trusts. Every error names the key it is about
//! (`apps[2].upstreams[0]: not a URL`), and nothing panics.

mod env;
pub mod file;

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::gateway::forwarded::TrustedProxies;
use crate::observe::AccessLogTarget;
use crate::tls::{CertificateFiles, CertificateSet, TlsError, UpstreamRoots};
use crate::types::Secret;
use file::{AppSection, FileConfig};

/// A configuration problem, with the key it concerns (empty for the file as a whole).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl ConfigError {
    /// Several problems found in one pass, one per line.
    fn all(mut errors: Vec<ConfigError>) -> Self {
        if errors.len() == 1 {
            return errors.remove(0);
        }
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        Self::at(
            "",
            format!("{} problems:\n{}", errors.len(), lines.join("\n")),
        )
    }

    pub fn at(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub session: SessionConfig,
    pub wechat: WechatConfig,
    pub apps: Vec<AppConfig>,
    pub notify: NotifyConfig,
    pub limits: LimitsConfig,
    pub dev: DevConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

/// The admin listener (metrics and probes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdminConfig {
    /// `None`: no admin listener.
    pub listen: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogConfig {
    /// Where the access log goes; `None`: off.
    pub access: Option<AccessLogTarget>,
    /// Application log lines as JSON objects rather than text.
    pub json: bool,
}

/// Per-node rate limits on the native endpoints (`None`: off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    /// `/login` calls per client address per minute.
    pub login_per_ip_per_minute: Option<u32>,
    /// Native-endpoint calls per `User-Token` per minute.
    pub native_per_token_per_minute: Option<u32>,
}

/// The subscribe-message dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// How often each node looks for due notifications.
    pub poll_interval: Duration,
    /// Most notifications claimed per poll.
    pub batch_size: u32,
    /// Most sends in flight at once per node.
    pub concurrency: usize,
    /// Attempts before a transient failure becomes final.
    pub max_attempts: u32,
    /// First retry delay; doubled at each attempt.
    pub retry_backoff: Duration,
    /// How long a claim holds a notification; an expired claim returns it to pending.
    pub lease: Duration,
}

/// How an app obtains its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// `cgi-bin/stable_token`: every caller gets the same token while it is valid.
    Stable,
    /// `cgi-bin/token`: every fetch issues a new token and retires the previous one.
    Classic,
}

/// Customer-service message settings of one app.
#[derive(Debug, Clone)]
pub struct MessagesConfig {
    pub token: Secret,
    pub aes_key: Option<Secret>,
    pub forward_url: Option<Url>,
    pub forward_token: Option<Secret>,
    pub reply_token: Option<Secret>,
    /// Replay window: a push signed further than this from now is refused before decryption.
    pub max_age: Duration,
}

/// Listening side of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Plain HTTP; absent when only TLS is served.
    pub listen: Option<SocketAddr>,
    /// TLS termination; absent when only plain HTTP is served.
    pub tls: Option<TlsConfig>,
    pub threads: usize,
    pub body_limit: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_read_timeout: Duration,
    /// From a request's first byte (a new connection's first request: from its opening) to the
    /// end of its header (slow-header clients).
    pub client_header_timeout: Duration,
    /// How long a write to a client may make no progress (clients that stop reading).
    pub client_send_timeout: Duration,
    /// How long a client connection may wait idle between requests (HTTP/1 and HTTP/2).
    pub client_keepalive_timeout: Duration,
    /// Requests an HTTP/1 client connection serves before it is closed; `None`: no limit.
    pub client_keepalive_requests: Option<u32>,
    /// Connections one client address (the TCP peer) may have open at once; 0: no cap.
    pub client_connections_per_address: u32,
    pub health_check_interval: Duration,
    /// Peers whose `X-Forwarded-For` chain is believed (none by default).
    pub trusted_proxies: TrustedProxies,
    /// Roots an HTTPS upstream's certificate may chain to, when a private CA is added to the
    /// system's; `None`: the system's alone.
    pub upstream_ca: Option<UpstreamCa>,
    /// How often upstream host names are resolved again.
    pub upstream_dns_refresh: Duration,
    /// Pingora's upgrade socket: a new process (`-u`) takes the listeners over through it.
    pub upgrade_sock: PathBuf,
    /// Where a daemon (`-d`) writes its process id.
    pub pid_file: PathBuf,
    /// After SIGQUIT (upgrade) or SIGTERM: how long the old process goes on serving.
    pub grace_period: Duration,
    /// Then how long requests still in flight get before the process exits.
    pub graceful_shutdown_timeout: Duration,
}

/// `server.upstream_ca` loaded: the system's roots and the file's certificates.
#[derive(Clone)]
pub struct UpstreamCa {
    pub path: PathBuf,
    pub roots: Arc<UpstreamRoots>,
    /// A digest of the roots' certificates. Upstream connections are pooled under it, so a
    /// reload that changes the roots reuses no connection verified against the old ones.
    pub digest: u64,
}

impl PartialEq for UpstreamCa {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UpstreamCa({}, {} roots)",
            self.path.display(),
            self.roots.len()
        )
    }
}

/// TLS termination: where, and the certificate files (the first is the default).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub certificates: Vec<CertificateFiles>,
}

impl TlsConfig {
    /// Load the certificate files, every one checked (readable, parsed, key matching).
    pub fn load_certificates(&self) -> Result<CertificateSet, TlsError> {
        CertificateSet::load(&self.certificates)
    }
}

/// The store's connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseConfig {
    /// May carry a password, hence a [`Secret`].
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// Token lifetime and cache sizing.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How long a token lives after its last use.
    pub ttl: Duration,
    /// Minimum time between two writes of one session's sliding expiry.
    pub extend_interval: Duration,
    /// Most sessions held in memory.
    pub cache_capacity: u64,
    /// How long a cached session is trusted before it is read again from the store: the
    /// backstop for a session change this node did not hear of.
    pub cache_ttl: Duration,
    /// How long a token the store does not know is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// Key that signs issued tokens; `None` means "generate one and share it through the store".
    pub token_key: Option<Secret>,
    /// MySQL: how often the other nodes' session changes are read (PostgreSQL pushes them).
    pub sync_interval: Duration,
}

/// How to reach WeChat.
#[derive(Debug, Clone, PartialEq)]
pub struct WechatConfig {
    pub api_base: Url,
    pub timeout: Duration,
}

/// One mini program.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub appid: String,
    pub secret: Secret,
    pub upstreams: Vec<UpstreamConfig>,
    pub host_token: Option<Secret>,
    pub require_login: bool,
    pub token_mode: TokenMode,
    pub timezone: chrono_tz::Tz,
    pub messages: Option<MessagesConfig>,
}

/// One backend base URL. Its host name is resolved at start, then again every
/// `server.upstream_dns_refresh_seconds` (see the gateway's routing).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Url,
    /// The address found at start.
    pub addr: SocketAddr,
    /// The host name to resolve again; `None` for an address literal.
    pub host_name: Option<String>,
    pub port: u16,
    /// `https`: TLS to the upstream, its certificate verified for `sni`.
    pub tls: bool,
    /// The URL's host (name or address) the certificate must be valid for.
    pub sni: String,
    /// `Host` sent upstream: the URL's host, with the port when it is not the scheme's.
    pub host_header: String,
    /// Path the `/app` prefix is replaced with, without a trailing `/` (may be empty).
    pub path_prefix: String,
}

/// Side services for local development.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevConfig {
    pub simulator: Option<SocketAddr>,
    pub echo_upstream: Option<SocketAddr>,
}

impl Config {
    /// The keys whose value differs in `new` but cannot change in a running process: they take
    /// effect at the next start or upgrade (`-u`). Apps, `server.trusted_proxies` and the TLS
    /// certificate files can.
    pub fn keys_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        let (old_server, new_server) = (&self.server, &new.server);
        let tls_listen = |server: &ServerConfig| server.tls.as_ref().map(|tls| tls.listen);
        let checks = [
            ("server.listen", old_server.listen != new_server.listen),
            (
                "server.tls",
                old_server.tls.is_some() != new_server.tls.is_some(),
            ),
            (
                "server.tls.listen",
                tls_listen(old_server) != tls_listen(new_server),
            ),
            ("server.threads", old_server.threads != new_server.threads),
            (
                "server.body_limit",
                old_server.body_limit != new_server.body_limit,
            ),
            (
                "server.upstream_connect_timeout_ms",
                old_server.upstream_connect_timeout != new_server.upstream_connect_timeout,
            ),
            (
                "server.upstream_read_timeout_ms",
                old_server.upstream_read_timeout != new_server.upstream_read_timeout,
            ),
            (
                "server.client_header_timeout_ms",
                old_server.client_header_timeout != new_server.client_header_timeout,
            ),
            (
                "server.client_send_timeout_ms",
                old_server.client_send_timeout != new_server.client_send_timeout,
            ),
            (
                "server.client_keepalive_timeout_seconds",
                old_server.client_keepalive_timeout != new_server.client_keepalive_timeout,
            ),
            (
                "server.client_keepalive_requests",
                old_server.client_keepalive_requests != new_server.client_keepalive_requests,
            ),
            (
                "server.client_connections_per_address",
                old_server.client_connections_per_address
                    != new_server.client_connections_per_address,
            ),
            (
                "server.health_check_interval_seconds",
                old_server.health_check_interval != new_server.health_check_interval,
            ),
            (
                "server.upgrade_sock",
                old_server.upgrade_sock != new_server.upgrade_sock,
            ),
            (
                "server.pid_file",
                old_server.pid_file != new_server.pid_file,
            ),
            (
                "server.grace_period_seconds",
                old_server.grace_period != new_server.grace_period,
            ),
            (
                "server.graceful_shutdown_timeout_seconds",
                old_server.graceful_shutdown_timeout != new_server.graceful_shutdown_timeout,
            ),
            ("database", self.database != new.database),
            ("session", self.session != new.session),
            ("wechat", self.wechat != new.wechat),
            ("notify", self.notify != new.notify),
            ("limits", self.limits != new.limits),
            ("dev", self.dev != new.dev),
            ("admin", self.admin != new.admin),
            ("log", self.log != new.log),
        ];
        checks
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }

    /// Read, expand and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::at("", format!("cannot read the file: {e}")))?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parse YAML text; `lookup` answers `${VAR}` references.
    pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut tree: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::at("", e.to_string()))?;
        let mut unset = Vec::new();
        env::expand_tree(&mut tree, "", lookup, &mut unset);
        if !unset.is_empty() {
            return Err(ConfigError::all(unset));
        }
        // Deserialize from text again (not from the tree) so serde_yaml's errors carry the path
        // of the offending key.
        let expanded =
            serde_yaml::to_string(&tree).map_err(|e| ConfigError::at("", e.to_string()))?;
        let file: FileConfig = serde_yaml::from_str(&expanded).map_err(yaml_error)?;
        validate(file)
    }

    /// The app registered under `appid`.
    pub fn app(&self, appid: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|app| app.appid == appid)
    }
}

fn yaml_error(error: serde_yaml::Error) -> ConfigError {
    // serde_yaml writes "path: problem at line L column C"; keep its path as the key.
    let text = plain_type_names(&error.to_string());
    match text.split_once(": ") {
        Some((key, problem)) if !key.contains(' ') => ConfigError::at(key, problem),
        _ => ConfigError::at("", text),
    }
}

/// serde's Rust type names (`expected usize`) in words an operator reads.
fn plain_type_names(text: &str) -> String {
    const WHOLE: [&str; 10] = [
        "usize", "u64", "u32", "u16", "u8", "isize", "i64", "i32", "i16", "i8",
    ];
    let mut text = text.to_string();
    for name in WHOLE {
        text = text.replace(&format!("expected {name}"), "expected a whole number");
    }
    text.replace("expected f64", "expected a number")
        .replace("expected f32", "expected a number")
}

/// `server.tls`, with its files checked now so that `-t` and the start refuse a bad one.
fn tls_config(section: &file::TlsSection) -> Result<TlsConfig, ConfigError> {
    let pair = |prefix: String, cert: &str, key: &str| CertificateFiles {
        cert_key: format!("{prefix}.cert"),
        cert: cert.into(),
        key_key: format!("{prefix}.key"),
        key: key.into(),
    };
    let mut certificates = vec![pair("server.tls".into(), &section.cert, &section.key)];
    for (i, extra) in section.certificates.iter().enumerate() {
        certificates.push(pair(
            format!("server.tls.certificates[{i}]"),
            &extra.cert,
            &extra.key,
        ));
    }
    let tls = TlsConfig {
        listen: socket_addr("server.tls.listen", &section.listen)?,
        certificates,
    };
    tls.load_certificates().map_err(tls_error)?;
    Ok(tls)
}

/// `server.trusted_proxies`: CIDRs, or single addresses (a host route).
fn trusted_proxies(raw: &[String]) -> Result<TrustedProxies, ConfigError> {
    let mut networks = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let network = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                ConfigError::at(
                    format!("server.trusted_proxies[{i}]"),
                    format!("not a CIDR or an IP address: {text:?}"),
                )
            })?;
        networks.push(network);
    }
    Ok(TrustedProxies::new(networks))
}

/// A certificate error as a configuration error naming the same key.
fn tls_error(error: TlsError) -> ConfigError {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((key, problem)) => ConfigError::at(key, problem),
        None => ConfigError::at("server.tls", text),
    }
}

/// Turn the file model into the typed model, refusing anything that would fail later.
fn validate(file: FileConfig) -> Result<Config, ConfigError> {
    let server = ServerConfig {
        listen: optional_socket_addr("server.listen", file.server.listen.as_deref())?,
        tls: file.server.tls.as_ref().map(tls_config).transpose()?,
        threads: positive("server.threads", file.server.threads.unwrap_or(2))?,
        body_limit: positive(
            "server.body_limit",
            file.server.body_limit.unwrap_or(1 << 20),
        )?,
        upstream_connect_timeout: millis(file.server.upstream_connect_timeout_ms, 2_000),
        upstream_read_timeout: millis(file.server.upstream_read_timeout_ms, 30_000),
        client_header_timeout: millis(file.server.client_header_timeout_ms, 10_000),
        client_send_timeout: millis(file.server.client_send_timeout_ms, 60_000),
        client_keepalive_timeout: Duration::from_secs(positive(
            "server.client_keepalive_timeout_seconds",
            file.server.client_keepalive_timeout_seconds.unwrap_or(60),
        )?),
        client_keepalive_requests: Some(file.server.client_keepalive_requests.unwrap_or(1_000))
            .filter(|&limit| limit > 0),
        client_connections_per_address: file.server.client_connections_per_address.unwrap_or(0),
        health_check_interval: Duration::from_secs(
            file.server
                .health_check_interval_seconds
                .unwrap_or(5)
                .max(1),
        ),
        trusted_proxies: trusted_proxies(file.server.trusted_proxies.as_deref().unwrap_or(&[]))?,
        upstream_ca: file
            .server
            .upstream_ca
            .as_deref()
            .map(|path| {
                let path = PathBuf::from(path);
                crate::tls::load_upstream_roots("server.upstream_ca", &path)
                    .map(|(roots, digest)| UpstreamCa {
                        path,
                        roots,
                        digest,
                    })
                    .map_err(tls_error)
            })
            .transpose()?,
        upstream_dns_refresh: Duration::from_secs(positive(
            "server.upstream_dns_refresh_seconds",
            file.server.upstream_dns_refresh_seconds.unwrap_or(30),
        )?),
        upgrade_sock: PathBuf::from(
            file.server
                .upgrade_sock
                .as_deref()
                .unwrap_or("/tmp/mpapi_upgrade.sock"),
        ),
        pid_file: PathBuf::from(file.server.pid_file.as_deref().unwrap_or("/tmp/mpapi.pid")),
        grace_period: Duration::from_secs(file.server.grace_period_seconds.unwrap_or(30)),
        graceful_shutdown_timeout: Duration::from_secs(
            file.server.graceful_shutdown_timeout_seconds.unwrap_or(10),
        ),
    };
    if server.listen.is_none() && server.tls.is_none() {
        return Err(ConfigError::at(
            "server.listen",
            "required unless server.tls is set",
        ));
    }
    let database = DatabaseConfig {
        url: database_url(&file.database.url)?,
        max_connections: positive(
            "database.max_connections",
            file.database.max_connections.unwrap_or(16),
        )?,
        acquire_timeout: millis(file.database.acquire_timeout_ms, 3_000),
    };
    let s = &file.session;
    let session = SessionConfig {
        ttl: Duration::from_secs(positive(
            "session.ttl_seconds",
            s.ttl_seconds.unwrap_or(7 * 86_400),
        )?),
        extend_interval: Duration::from_secs(s.extend_interval_seconds.unwrap_or(3_600)),
        cache_capacity: positive(
            "session.cache_capacity",
            s.cache_capacity.unwrap_or(1_000_000),
        )?,
        cache_ttl: Duration::from_secs(positive(
            "session.cache_ttl_seconds",
            s.cache_ttl_seconds.unwrap_or(300),
        )?),
        negative_cache_ttl: Duration::from_secs(s.negative_cache_seconds.unwrap_or(10)),
        token_key: match &s.token_key {
            Some(key) if key.len() < 32 => {
                return Err(ConfigError::at(
                    "session.token_key",
                    "must be at least 32 characters",
                ));
            }
            key => key.clone().map(Secret::new),
        },
        sync_interval: Duration::from_millis(positive(
            "session.sync_interval_ms",
            s.sync_interval_ms.unwrap_or(500),
        )?),
    };
    let mut api_base = http_url("wechat.api_base", &file.wechat.api_base)?;
    if !api_base.path().ends_with('/') {
        // Url::join replaces the last segment of a path without a trailing slash.
        let path = format!("{}/", api_base.path());
        api_base.set_path(&path);
    }
    let wechat = WechatConfig {
        api_base,
        timeout: millis(file.wechat.timeout_ms, 5_000),
    };
    if file.apps.is_empty() {
        return Err(ConfigError::at("apps", "at least one app is required"));
    }
    let mut seen = HashSet::new();
    let mut apps = Vec::with_capacity(file.apps.len());
    for (index, app) in file.apps.into_iter().enumerate() {
        let key = format!("apps[{index}]");
        if !seen.insert(app.appid.clone()) {
            return Err(ConfigError::at(format!("{key}.appid"), "duplicate appid"));
        }
        apps.push(validate_app(&key, app)?);
    }
    let n = &file.notify;
    let notify = NotifyConfig {
        poll_interval: millis(n.poll_interval_ms, 1_000),
        batch_size: positive("notify.batch_size", n.batch_size.unwrap_or(32))?,
        concurrency: positive("notify.concurrency", n.concurrency.unwrap_or(8))?,
        max_attempts: positive("notify.max_attempts", n.max_attempts.unwrap_or(5))?,
        retry_backoff: Duration::from_secs(n.retry_backoff_seconds.unwrap_or(30)),
        lease: Duration::from_secs(positive(
            "notify.lease_seconds",
            n.lease_seconds.unwrap_or(60),
        )?),
    };
    let dev = match file.dev {
        None => DevConfig::default(),
        Some(dev) => DevConfig {
            simulator: optional_socket_addr("dev.simulator", dev.simulator.as_deref())?,
            echo_upstream: optional_socket_addr("dev.echo_upstream", dev.echo_upstream.as_deref())?,
        },
    };
    let limits = LimitsConfig {
        login_per_ip_per_minute: Some(file.limits.login_per_ip_per_minute.unwrap_or(60))
            .filter(|&n| n > 0),
        native_per_token_per_minute: Some(file.limits.native_per_token_per_minute.unwrap_or(600))
            .filter(|&n| n > 0),
    };
    let admin = AdminConfig {
        listen: optional_socket_addr("admin.listen", file.admin.listen.as_deref())?,
    };
    let log = LogConfig {
        access: match file.log.access.as_deref() {
            None | Some("off") => None,
            Some("stdout") => Some(AccessLogTarget::Stdout),
            Some("") => return Err(ConfigError::at("log.access", "off, stdout or a file path")),
            Some(path) => Some(AccessLogTarget::File(PathBuf::from(path))),
        },
        json: match file.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::at(
                    "log.format",
                    format!("{other:?} is neither text nor json"),
                ));
            }
        },
    };
    Ok(Config {
        server,
        database,
        session,
        wechat,
        apps,
        notify,
        limits,
        dev,
        admin,
        log,
    })
}

fn validate_app(key: &str, app: AppSection) -> Result<AppConfig, ConfigError> {
    let appid_ok = !app.appid.is_empty()
        && app.appid.len() <= 64
        && app
            .appid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !appid_ok {
        return Err(ConfigError::at(
            format!("{key}.appid"),
            "must be 1-64 letters, digits, '_' or '-'",
        ));
    }
    if app.secret.trim().is_empty() {
        return Err(ConfigError::at(format!("{key}.secret"), "missing secret"));
    }
    if app.upstreams.is_empty() {
        return Err(ConfigError::at(
            format!("{key}.upstreams"),
            "at least one upstream is required",
        ));
    }
    let upstreams = app
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, raw)| upstream(&format!("{key}.upstreams[{i}]"), raw))
        .collect::<Result<Vec<_>, _>>()?;
    let host_token = match app.host_token {
        Some(token) if token.is_empty() => {
            return Err(ConfigError::at(
                format!("{key}.host_token"),
                "empty; remove the key instead",
            ));
        }
        Some(token) => {
            http::HeaderValue::from_str(&token).map_err(|_| {
                ConfigError::at(format!("{key}.host_token"), "not a valid header value")
            })?;
            Some(Secret::new(token))
        }
        None => None,
    };
    let token_mode = match app.token_mode.as_deref() {
        None | Some("stable") => TokenMode::Stable,
        Some("classic") => TokenMode::Classic,
        Some(other) => {
            return Err(ConfigError::at(
                format!("{key}.token_mode"),
                format!("{other}: use stable or classic"),
            ));
        }
    };
    let timezone = match app.timezone.as_deref() {
        None => chrono_tz::Asia::Shanghai,
        Some(name) => name.parse().map_err(|_| {
            ConfigError::at(
                format!("{key}.timezone"),
                format!("unknown time zone {name}"),
            )
        })?,
    };
    let messages = app
        .messages
        .map(|m| validate_messages(&format!("{key}.messages"), m))
        .transpose()?;
    Ok(AppConfig {
        appid: app.appid,
        secret: Secret::new(app.secret),
        upstreams,
        host_token,
        require_login: app.require_login,
        token_mode,
        timezone,
        messages,
    })
}

fn validate_messages(key: &str, m: file::MessagesSection) -> Result<MessagesConfig, ConfigError> {
    if m.token.is_empty() {
        return Err(ConfigError::at(format!("{key}.token"), "missing token"));
    }
    if m.aes_key.as_ref().is_some_and(|k| k.len() != 43) {
        return Err(ConfigError::at(
            format!("{key}.aes_key"),
            "must be the 43-character EncodingAESKey",
        ));
    }
    if let Some(aes_key) = &m.aes_key
        && crate::wechat::crypto::PushCipher::new(aes_key).is_err()
    {
        return Err(ConfigError::at(
            format!("{key}.aes_key"),
            "not a valid EncodingAESKey (base64)",
        ));
    }
    if let Some(token) = &m.forward_token
        && http::HeaderValue::from_str(token).is_err()
    {
        return Err(ConfigError::at(
            format!("{key}.forward_token"),
            "not a valid header value",
        ));
    }
    let forward_url = m
        .forward_url
        .map(|url| http_url(&format!("{key}.forward_url"), &url))
        .transpose()?;
    Ok(MessagesConfig {
        token: Secret::new(m.token),
        aes_key: m.aes_key.map(Secret::new),
        forward_url,
        forward_token: m.forward_token.map(Secret::new),
        reply_token: m.reply_token.map(Secret::new),
        max_age: Duration::from_secs(positive(
            &format!("{key}.max_age_seconds"),
            m.max_age_seconds.unwrap_or(300),
        )?),
    })
}

fn upstream(key: &str, raw: &str) -> Result<UpstreamConfig, ConfigError> {
    let url = http_url(key, raw)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::at(key, "a base URL has no query or fragment"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ConfigError::at(key, "no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let (host_name, sni) = match url.host() {
        Some(url::Host::Domain(name)) => (Some(name.to_string()), name.to_string()),
        Some(url::Host::Ipv4(ip)) => (None, ip.to_string()),
        Some(url::Host::Ipv6(ip)) => (None, ip.to_string()),
        None => return Err(ConfigError::at(key, "no host")),
    };
    let addr = (sni.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::at(key, format!("cannot resolve host {host}")))?;
    // The url crate leaves out a port that is the scheme's default.
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let path_prefix = url.path().trim_end_matches('/').to_string();
    Ok(UpstreamConfig {
        tls: url.scheme() == "https",
        url,
        addr,
        host_name,
        port,
        sni,
        host_header,
        path_prefix,
    })
}

fn http_url(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError::at(key, format!("not a URL ({e})")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(ConfigError::at(key, format!("unsupported scheme {other}"))),
    }
}

fn database_url(raw: &str) -> Result<Secret, ConfigError> {
    let known = ["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"];
    if known.iter().any(|scheme| raw.starts_with(scheme)) {
        Ok(Secret::new(raw))
    } else {
        Err(ConfigError::at(
            "database.url",
            "must start with sqlite:, postgres: or mysql:",
        ))
    }
}

/// An address key that may be absent.
fn optional_socket_addr(key: &str, raw: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    raw.map(|raw| socket_addr(key, raw)).transpose()
}

fn socket_addr(key: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::at(key, format!("not a host:port address: {raw}")))
}

fn positive<T: PartialOrd + Default>(key: &str, value: T) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::at(key, "must be greater than zero"))
    }
}

fn millis(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default).max(1))
}
