//! Test harness: each test gets its own database, simulator, echo upstream and gateway, all
//! real and all on ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;

use mpapi::config::Config;
use mpapi::server::RunningGateway;
use mpapi::sim::Simulator;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::watch;

pub const APPID: &str = "wxtest00000000001";
pub const SECRET: &str = "test-secret-value-1";
pub const OTHER_APPID: &str = "wxtest00000000002";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
    MySql,
}

impl Db {
    /// The admin URL for this database, when the environment provides one.
    fn admin_url(self) -> Option<String> {
        match self {
            Db::Sqlite => Some(String::new()),
            Db::Postgres => std::env::var("MPAPI_TEST_POSTGRES_URL").ok(),
            Db::MySql => std::env::var("MPAPI_TEST_MYSQL_URL").ok(),
        }
    }

    /// Whether this database is available to the tests. When it is not, the calling test is
    /// recorded as skipped (in the file `MPAPI_TEST_SKIP_LOG` names, which `scripts/test.sh`
    /// counts), so that it is never reported as passed.
    pub fn available(self) -> bool {
        let available = self.admin_url().is_some();
        if !available {
            record_skip(&format!("no {self:?} URL in the environment"));
        }
        available
    }
}

/// Record the calling test as skipped (in the file `MPAPI_TEST_SKIP_LOG` names, which
/// `scripts/test.sh` counts), so that it is never reported as passed.
pub fn record_skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("skipped: {test}: {reason}");
    if let Ok(path) = std::env::var("MPAPI_TEST_SKIP_LOG") {
        use std::io::Write as _;
        let line = format!("{test}\n");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
    }
}

/// A database created for one test and dropped after it.
pub struct TestDatabase {
    pub db: Db,
    pub url: String,
    admin_url: String,
    name: String,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestDatabase {
    pub async fn create(db: Db) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("mpapi_t_{}", mpapi::sim::random_hex(8));
        match db {
            Db::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}/mpapi.db?mode=rwc", dir.display());
                Self {
                    db,
                    url,
                    admin_url: String::new(),
                    name,
                    _dir: Some(tempfile_dir::TempDir(dir)),
                }
            }
            Db::Postgres | Db::MySql => {
                let admin_url = db.admin_url().unwrap();
                let mut conn = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                let mut url = url::Url::parse(&admin_url).unwrap();
                url.set_path(&format!("/{name}"));
                Self {
                    db,
                    url: url.to_string(),
                    admin_url,
                    name,
                    _dir: None,
                }
            }
        }
    }

    /// A direct connection, for assertions on what the store holds.
    pub async fn connect(&self) -> sqlx::AnyConnection {
        sqlx::AnyConnection::connect(&self.url).await.unwrap()
    }

    /// PostgreSQL only: refuse (or allow again) new connections to this database, cutting
    /// those open — the database going away as far as a gateway can tell.
    pub async fn set_reachable(&self, reachable: bool) {
        assert_eq!(
            self.db,
            Db::Postgres,
            "only PostgreSQL can take one database away"
        );
        let mut conn = sqlx::AnyConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        if !reachable {
            sqlx::query(&format!(
                "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }

    pub async fn drop_database(&self) {
        if self.db == Db::Sqlite {
            return;
        }
        if let Ok(mut conn) = sqlx::AnyConnection::connect(&self.admin_url).await {
            let force = if self.db == Db::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {}{force}", self.name))
                .execute(&mut conn)
                .await;
        }
    }
}

/// A running simulator and echo upstream, shared by one test's gateways.
pub struct Backends {
    pub sim: Arc<Simulator>,
    pub sim_addr: SocketAddr,
    pub upstream_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl Backends {
    pub async fn start() -> Self {
        let (shutdown, rx) = watch::channel(false);
        let sim = Simulator::new([
            (APPID.to_string(), SECRET.to_string()),
            (OTHER_APPID.to_string(), SECRET.to_string()),
        ]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_addr = listener.local_addr().unwrap();
        tokio::spawn(mpapi::sim::serve(
            listener,
            sim.clone(),
            mpapi::shutdown::wait_for(rx.clone()),
        ));
        let upstream_addr = spawn_echo(rx).await;
        Self {
            sim,
            sim_addr,
            upstream_addr,
            shutdown,
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Start another echo upstream, stopped with `shutdown`.
pub async fn spawn_echo(shutdown: watch::Receiver<bool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mpapi::sim::echo::serve(
        listener,
        mpapi::shutdown::wait_for(shutdown),
    ));
    addr
}

/// The configuration every test starts from; `extra_app` and `session` are YAML fragments.
pub fn config_yaml(database_url: &str, backends: &Backends, tweaks: &Tweaks) -> String {
    let upstreams = tweaks
        .upstreams
        .clone()
        .unwrap_or_else(|| vec![format!("http://{}/api", backends.upstream_addr)]);
    let upstreams = upstreams
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let api_base = tweaks
        .api_base
        .clone()
        .unwrap_or_else(|| format!("http://{}", backends.sim_addr));
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  threads: 1
  body_limit: {body_limit}
  health_check_interval_seconds: {health_check_seconds}
  upstream_connect_timeout_ms: 500
  upstream_read_timeout_ms: 3000
{server_extra}
database:
  url: "{database_url}"
  max_connections: 4
  acquire_timeout_ms: 1500
session:
{session}
wechat:
  api_base: "{api_base}"
  timeout_ms: {wechat_timeout}
apps:
  - appid: "{APPID}"
    secret: "{SECRET}"
    upstreams: [{upstreams}]
{app_extra}
  - appid: "{OTHER_APPID}"
    secret: "{SECRET}"
    upstreams: ["http://{upstream}/other"]
    require_login: true
{notify}
{sections}
"#,
        body_limit = tweaks.body_limit,
        health_check_seconds = tweaks.health_check_seconds,
        server_extra = tweaks.server.as_deref().unwrap_or(""),
        session = tweaks.session.as_deref().unwrap_or("  ttl_seconds: 604800"),
        wechat_timeout = tweaks.wechat_timeout_ms,
        app_extra = tweaks.app_extra.as_deref().unwrap_or(""),
        upstream = backends.upstream_addr,
        notify = tweaks
            .notify
            .as_deref()
            .map(|n| format!("notify:\n{n}"))
            .unwrap_or_default(),
        sections = tweaks.sections.as_deref().unwrap_or(""),
    )
}

/// What a test changes in the standard configuration.
#[derive(Clone)]
pub struct Tweaks {
    pub body_limit: usize,
    pub session: Option<String>,
    pub app_extra: Option<String>,
    pub upstreams: Option<Vec<String>>,
    pub api_base: Option<String>,
    pub wechat_timeout_ms: u64,
    /// Lines under `notify:`, e.g. `  poll_interval_ms: 50`.
    pub notify: Option<String>,
    /// More top-level sections, e.g. `limits:` with its lines.
    pub sections: Option<String>,
    /// More lines under `server:`, e.g. `  trusted_proxies: ["127.0.0.0/8"]`.
    pub server: Option<String>,
    /// `server.health_check_interval_seconds`.
    pub health_check_seconds: u64,
}

impl Default for Tweaks {
    fn default() -> Self {
        Self {
            body_limit: 1 << 20,
            session: None,
            app_extra: None,
            upstreams: None,
            api_base: None,
            wechat_timeout_ms: 2_000,
            notify: None,
            sections: None,
            server: None,
            health_check_seconds: 1,
        }
    }
}

/// One test's world: database, simulator, upstream and gateway.
pub struct TestApp {
    pub database: TestDatabase,
    pub backends: Backends,
    pub gateway: Option<RunningGateway>,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(db: Db) -> Self {
        Self::spawn_with(db, Tweaks::default()).await
    }

    pub async fn spawn_with(db: Db, tweaks: Tweaks) -> Self {
        capture_logs();
        let database = TestDatabase::create(db).await;
        let backends = Backends::start().await;
        let gateway = start_gateway(&database.url, &backends, &tweaks).await;
        Self {
            addr: gateway.addr,
            gateway: Some(gateway),
            database,
            backends,
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn gateway(&self) -> &RunningGateway {
        self.gateway.as_ref().unwrap()
    }

    /// Statements the gateway's store has executed so far.
    pub fn queries(&self) -> u64 {
        self.gateway().state.store.query_count()
    }

    /// A fresh `wx.login` code for `openid` of `appid`.
    pub async fn code_for(&self, appid: &str, openid: &str, unionid: Option<&str>) -> String {
        self.backends.sim.mint_code(appid, openid, unionid)
    }

    /// Log `openid` in through the gateway; returns the token.
    pub async fn login(&self, openid: &str) -> String {
        self.login_as(APPID, openid, None).await
    }

    /// `POST /login` as `appid` with a fresh code for `openid`: the answer, whatever it is.
    pub async fn try_login(&self, appid: &str, openid: &str) -> (StatusCode, Value) {
        let code = self.code_for(appid, openid, None).await;
        self.call(
            Method::POST,
            "/login",
            &[("User-App", appid)],
            Some(json!({ "code": code })),
        )
        .await
    }

    pub async fn login_as(&self, appid: &str, openid: &str, unionid: Option<&str>) -> String {
        let code = self.code_for(appid, openid, unionid).await;
        let (status, body) = self
            .call(
                Method::POST,
                "/login",
                &[("User-App", appid)],
                Some(json!({ "code": code })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], 0, "{body}");
        assert_eq!(body["data"]["openid"], openid);
        body["data"]["token"].as_str().unwrap().to_string()
    }

    /// Send a request through the gateway; returns the status and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// GET `/app{path}` as the holder of `token` (anonymous when `None`).
    pub async fn get_app(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut headers = vec![("User-App", APPID)];
        if let Some(token) = token {
            headers.push(("User-Token", token));
        }
        self.call(Method::GET, &format!("/app{path}"), &headers, None)
            .await
    }

    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        self.database.drop_database().await;
    }
}

/// Start a gateway on an ephemeral port for `database_url`.
pub async fn start_gateway(
    database_url: &str,
    backends: &Backends,
    tweaks: &Tweaks,
) -> RunningGateway {
    capture_logs();
    let yaml = config_yaml(database_url, backends, tweaks);
    let config = Config::parse(&yaml, &|_| None).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    mpapi::server::spawn(config, listener).await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The identity headers the echo upstream received, by lower-case name (first value).
pub fn received(echo: &Value, name: &str) -> Option<String> {
    echo["headers"][name][0].as_str().map(str::to_string)
}

/// Every log line written by any gateway in this test binary.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get().unwrap().lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = OnceLock::new();

/// Route all tracing output (and Pingora's `log` output, as the binary routes it) into
/// [`logs`], at debug level for mpapi.
pub fn capture_logs() {
    let buffer = LOGS
        .get_or_init(|| Arc::new(std::sync::Mutex::new(Vec::new())))
        .clone();
    let writer = move || LogWriter(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,mpapi=debug"))
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        mpapi::observe::pingora_log::install().unwrap();
    }
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Generate one test per database for each named async fn taking a [`Db`].
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::helpers::Db;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(Db::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { if Db::Postgres.available() { super::$name(Db::Postgres).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { if Db::MySql.available() { super::$name(Db::MySql).await } }
        }
    )*};
}

/// A request to the gateway at `addr` as the holder of `token`.
pub async fn call_at(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client()
        .request(method, format!("http://{addr}{path}"))
        .header("User-App", APPID)
        .header("User-Token", token);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
