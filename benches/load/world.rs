//! Everything the scenarios run against: databases, seeded sessions, the simulator and the
//! gateways, all real and all on 127.0.0.1 ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mpapi::config::{Config, DatabaseConfig, SessionConfig};
use mpapi::server::RunningGateway;
use mpapi::session::Sessions;
use mpapi::sim::Simulator;
use mpapi::store::Store;
use mpapi::types::Secret;
use sqlx::Connection;

pub const APPID: &str = "wxbench000000001";
pub const SECRET: &str = "bench-secret-value";

/// A database created for this run and removed after it.
pub struct Database {
    pub url: String,
    admin_url: Option<String>,
    name: String,
    dir: Option<std::path::PathBuf>,
}

impl Database {
    /// A fresh SQLite file in the temp dir.
    pub fn sqlite() -> Self {
        let name = format!("mpapi_bench_{}", mpapi::sim::random_hex(6));
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            url: format!("sqlite://{}/mpapi.db?mode=rwc", dir.display()),
            admin_url: None,
            name,
            dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL or MySQL database next to the one `admin_url` names.
    pub async fn server(admin_url: &str) -> Self {
        Self::postgres(admin_url).await
    }

    /// A fresh PostgreSQL database next to the one `admin_url` names.
    pub async fn postgres(admin_url: &str) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("mpapi_bench_{}", mpapi::sim::random_hex(6));
        let mut conn = sqlx::AnyConnection::connect(admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Self {
            url: url.to_string(),
            admin_url: Some(admin_url.to_string()),
            name,
            dir: None,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(admin_url) = self.admin_url.clone() {
            // Drop runs outside any runtime here: give the statement a small one of its own.
            let name = self.name.clone();
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mut conn = sqlx::AnyConnection::connect(&admin_url).await?;
                    let force = if admin_url.starts_with("postgres") {
                        " WITH (FORCE)"
                    } else {
                        ""
                    };
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}{force}"))
                        .execute(&mut conn)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop database {}", self.name);
            }
        }
    }
}

/// Tokens of sessions seeded before the gateways start.
pub struct Seeded {
    /// Live sessions whose users have a unionid, a profile and a mobile (all five headers).
    pub live: Vec<String>,
    /// Valid-looking, correctly signed tokens that a later login retired.
    pub retired: Vec<String>,
    /// More live sessions, for the gateway whose cache is smaller than this.
    pub overflow: Vec<String>,
    /// Live sessions of users with neither profile nor mobile (empty `User-Extra` and
    /// `User-Mobile`), the most common kind.
    pub plain: Vec<String>,
}

/// Log users in through a standalone [`Sessions`] on `url` (the gateways start later with cold
/// caches), then give all but the `plain` ones a profile and a mobile.
///
/// mpapi has no endpoint that stores a profile or a mobile yet, so the bench writes those
/// columns with SQL, as those endpoints will; the gateways then load complete rows from the
/// store and render all five identity headers.
pub async fn seed(url: &str, live: usize, overflow: usize) -> Seeded {
    let store = Arc::new(Store::connect(&database_config(url)).await.unwrap());
    let sessions = Arc::new(
        Sessions::new(
            store.clone(),
            &seed_session_config(),
            mpapi::observe::Metrics::new(),
        )
        .await
        .unwrap(),
    );
    let first = login_many(&sessions, "live", live).await;
    let second = login_many(&sessions, "live", live).await;
    let overflow = login_many(&sessions, "more", overflow).await;
    let plain = login_many(&sessions, "plain", live).await;
    store.close().await;

    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(
        "UPDATE users SET \
           nickname = '微信用户 ' || openid, \
           avatar_url = 'https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4TwGTfTKbqNzXvBnWdJ8cX0Zicg9YmGhibtDA5ESYicJ0o5iaPfdLrh7jQ/132', \
           phone_number = '+86 13800138000', \
           pure_phone_number = '13800138000', \
           country_code = '86' \
         WHERE openid NOT LIKE 'oplain%'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    Seeded {
        live: second,
        retired: first,
        overflow,
        plain,
    }
}

/// Log `count` users named `{prefix}-{n}` in, a few at a time; returns their tokens in order.
async fn login_many(sessions: &Arc<Sessions>, prefix: &str, count: usize) -> Vec<String> {
    const WORKERS: usize = 4;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let sessions = sessions.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let mut tokens = Vec::new();
            for n in (worker..count).step_by(WORKERS) {
                let openid = openid(&prefix, n);
                let unionid = format!("u{}", &openid[1..]);
                let login = sessions
                    .login(APPID, &openid, Some(&unionid), SESSION_KEY)
                    .await
                    .unwrap();
                tokens.push((n, login.token));
            }
            tokens
        });
    }
    let mut tokens = vec![String::new(); count];
    while let Some(done) = tasks.join_next().await {
        for (n, token) in done.unwrap() {
            tokens[n] = token;
        }
    }
    tokens
}

/// The session key every seeded user got from "WeChat" (base64 of 16 bytes), so one
/// `/credentials` payload serves them all.
pub const SESSION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZg==";

/// A 28-character openid, shaped like WeChat's.
pub fn openid(prefix: &str, n: usize) -> String {
    format!("o{prefix:-<5}{n:0>22}")
}

fn database_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: Secret::new(url),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(10),
    }
}

fn seed_session_config() -> SessionConfig {
    SessionConfig {
        ttl: Duration::from_secs(7 * 86_400),
        extend_interval: Duration::from_secs(3_600),
        cache_capacity: 16,
        cache_ttl: Duration::from_secs(300),
        negative_cache_ttl: Duration::from_secs(10),
        token_key: None,
        sync_interval: Duration::from_millis(500),
    }
}

/// Start a gateway with `threads` workers on `database_url`, everything else at its defaults
/// but the session cache's capacity.
pub async fn gateway(
    threads: usize,
    database_url: &str,
    cache_capacity: u64,
    upstream: SocketAddr,
    simulator: SocketAddr,
) -> RunningGateway {
    start(&config_yaml(
        threads,
        database_url,
        cache_capacity,
        upstream,
        simulator,
        "",
    ))
    .await
}

/// [`gateway`] with monitoring on: the admin listener (so requests are counted in the
/// metrics) and, with `access_log`, the access log, written to a file as in production.
pub async fn observed_gateway(
    threads: usize,
    database_url: &str,
    upstream: SocketAddr,
    simulator: SocketAddr,
    access_log: bool,
) -> RunningGateway {
    let mut extra = "admin:\n  listen: \"127.0.0.1:0\"\n".to_string();
    if access_log {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mpapi-bench");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("access-{threads}.log"));
        let _ = std::fs::remove_file(&log);
        extra.push_str(&format!("log:\n  access: \"{}\"\n", log.display()));
    }
    start(&config_yaml(
        threads,
        database_url,
        1_000_000,
        upstream,
        simulator,
        &extra,
    ))
    .await
}

/// Start a gateway with the configuration `yaml`.
pub async fn start(yaml: &str) -> RunningGateway {
    let config = Config::parse(yaml, &|_| None).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    mpapi::server::spawn(config, listener).await.unwrap()
}

/// The bench gateways' configuration, with `extra` top-level sections.
pub fn config_yaml(
    threads: usize,
    database_url: &str,
    cache_capacity: u64,
    upstream: SocketAddr,
    simulator: SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  threads: {threads}
  # Unlimited, as for the bare pass-through and nginx: the generator keeps each connection
  # for the whole run and counts a closed one as a failure.
  client_keepalive_requests: 0
database:
  url: "{database_url}"
session:
  cache_capacity: {cache_capacity}
# One load generator on one address: per-address and per-token limits would refuse it.
limits:
  login_per_ip_per_minute: 0
  native_per_token_per_minute: 0
wechat:
  api_base: "http://{simulator}"
apps:
  - appid: "{APPID}"
    secret: "{SECRET}"
    upstreams: ["http://{upstream}/api"]
{extra}
"#
    )
}

/// The simulator that knows the bench's app.
pub fn simulator() -> Arc<Simulator> {
    Simulator::new([(APPID.to_string(), SECRET.to_string())])
}
