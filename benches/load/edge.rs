//! The edge rows: TLS termination against the same bare Pingora built with TLS, and reloads
//! under load.
//!
//! TLS is driven by wrk (OpenSSL, no certificate verification on its side, so the client pays
//! less per handshake than the server): keep-alive requests over TLS, and handshakes — every
//! request on a new connection (`Connection: close`). Both servers get the same certificate
//! (ECDSA P-256, made with the openssl command) and offer the same ALPN.
//!
//! Reloads: the bench's generator drives a gateway for a few seconds twice, once steady and
//! once while the configuration is put in force again every 250 ms (as SIGHUP does), each
//! reload changing the app's upstream list so that a new pool is built and swapped in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mpapi::config::Config;
use mpapi::server::{Listeners, RunningGateway, TlsListener};
use mpapi::tls::{CertificateFiles, CertificateResolver, CertificateSet};

use crate::generator::{self, Load};
use crate::report::Row;

/// A certificate for `127.0.0.1` in a temp directory removed on drop.
pub struct Certificate {
    dir: PathBuf,
    pub files: CertificateFiles,
}

impl Certificate {
    /// `None` without the openssl command.
    pub fn make() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("mpapi_bench_tls_{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(&dir)
            .output()
            .ok()?;
        status.status.success().then(|| Self {
            files: CertificateFiles {
                cert_key: "server.tls.cert".into(),
                cert: dir.join("cert.pem"),
                key_key: "server.tls.key".into(),
                key: dir.join("key.pem"),
            },
            dir,
        })
    }

    pub fn cert(&self) -> &Path {
        &self.files.cert
    }

    pub fn key(&self) -> &Path {
        &self.files.key
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bench's gateway configuration, TLS only.
pub async fn tls_gateway(yaml: &str, certificate: &Certificate) -> (RunningGateway, SocketAddr) {
    let config = Config::parse(yaml, &|_| None).unwrap();
    let set = CertificateSet::load(std::slice::from_ref(&certificate.files)).unwrap();
    let listeners = Listeners {
        plain: None,
        tls: Some(TlsListener {
            listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            certificates: CertificateResolver::new(set),
        }),
    };
    let gateway = mpapi::server::spawn_with(config, listeners).await.unwrap();
    let addr = gateway.tls_addr.unwrap();
    (gateway, addr)
}

/// How long each of the two reload runs lasts, and how often the reloading one reloads.
const RELOAD_RUN: Duration = Duration::from_secs(4);
const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// A steady run and a reloading run of `load` against `gateway`, whose configuration is
/// `yaml`; the reloading run alternates the app's upstream URL between two spellings.
pub fn reload_rows(
    client: &tokio::runtime::Runtime,
    gateway: &RunningGateway,
    yaml: &str,
    upstream: SocketAddr,
    load: Load,
    threads: usize,
    smoke: bool,
) -> Vec<Row> {
    let run = if smoke {
        Duration::from_millis(400)
    } else {
        RELOAD_RUN
    };
    let load = Load {
        duration: run,
        ..load
    };
    let mut steady = client.block_on(generator::run(&load));
    let variants = [
        Config::parse(yaml, &|_| None).unwrap(),
        Config::parse(
            &yaml.replace(
                &format!("http://{upstream}/api"),
                &format!("http://{upstream}/api/"),
            ),
            &|_| None,
        )
        .unwrap(),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let reloads = Arc::new(AtomicU64::new(0));
    let mut reloading = client.block_on(async {
        let reloader = {
            let done = done.clone();
            let reloads = reloads.clone();
            async move {
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep(RELOAD_EVERY).await;
                    gateway.reload(&variants[n % 2]).await.unwrap();
                    reloads.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            }
        };
        let measured = async {
            let outcome = generator::run(&load).await;
            done.store(true, Ordering::Relaxed);
            outcome
        };
        let (outcome, ()) = tokio::join!(measured, reloader);
        outcome
    });
    let reloads = reloads.load(Ordering::Relaxed);
    let steady_p99 = steady.percentile_ms(99);
    let steady_per_second = steady.per_second();
    let row = |name: String, outcome: &mut generator::Outcome, compared: bool| {
        let p99 = outcome.percentile_ms(99);
        Row {
            scenario: name,
            threads,
            per_second: outcome.per_second(),
            p50_ms: outcome.percentile_ms(50),
            p99_ms: p99,
            ratio: compared.then(|| outcome.per_second() / steady_per_second),
            ratio_quartiles: None,
            p99_over_bare_ms: compared.then_some(p99 - steady_p99),
            answered: outcome.answered,
            failed: outcome.failed,
            failures: outcome.failures.clone(),
            store_queries: None,
            cpu_us: None,
            kernel_cpu_us: None,
            generator_cpu_us: None,
            upstream_cpu_us: None,
            rounds_per_second: vec![outcome.per_second().round()],
        }
    };
    vec![
        row(
            "cached token, steady (reload baseline)".into(),
            &mut steady,
            false,
        ),
        row(
            format!("cached token, {reloads} reloads (1 every 250 ms)"),
            &mut reloading,
            true,
        ),
    ]
}

/// How fast a session change made through one node reaches another on one database.
pub struct CrossNode {
    pub database: &'static str,
    /// From the re-login's answer on node A to node B refusing the retired token.
    pub median_ms: f64,
    pub max_ms: f64,
    pub changes: usize,
    /// Store statements a node runs per second while no request comes (the sync's own cost).
    pub idle_queries_per_second: f64,
}

/// Two gateways on `url`: their idle store load, then `changes` re-logins through A, each
/// timed until B refuses the token the re-login retired.
pub async fn cross_node(
    database: &'static str,
    url: &str,
    upstream: SocketAddr,
    simulator_addr: SocketAddr,
    simulator: &Arc<mpapi::sim::Simulator>,
    changes: usize,
    idle: Duration,
) -> CrossNode {
    let a = crate::world::gateway(1, url, 1_000_000, upstream, simulator_addr).await;
    let b = crate::world::gateway(1, url, 1_000_000, upstream, simulator_addr).await;
    let store = &b.state.store;
    let before = store.query_count() + store.background_query_count();
    tokio::time::sleep(idle).await;
    let idle_queries = store.query_count() + store.background_query_count() - before;

    let login = |addr: SocketAddr| {
        let code = simulator.mint_code(crate::world::APPID, "cross-node-user", None);
        let mut request = crate::scenarios::get("/login", crate::scenarios::client_headers(addr));
        *request.method_mut() = http::Method::POST;
        *request.body_mut() =
            http_body_util::Full::new(bytes::Bytes::from(format!(r#"{{"code":"{code}"}}"#)));
        async move {
            let (status, body) = generator::fetch(addr, request).await.unwrap();
            assert_eq!(status, http::StatusCode::OK);
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            body["data"]["token"].as_str().unwrap().to_string()
        }
    };
    let status_on = |addr: SocketAddr, token: &str| {
        let mut request = crate::scenarios::get(
            crate::scenarios::APP_PATH,
            crate::scenarios::client_headers(addr),
        );
        request
            .headers_mut()
            .insert("user-token", http::HeaderValue::from_str(token).unwrap());
        async move { generator::fetch(addr, request).await.unwrap().0 }
    };
    let mut delays = Vec::with_capacity(changes);
    let mut token = login(a.addr).await;
    for _ in 0..changes {
        assert_eq!(status_on(b.addr, &token).await, http::StatusCode::OK);
        let next = login(a.addr).await;
        let started = std::time::Instant::now();
        while status_on(b.addr, &token).await != http::StatusCode::UNAUTHORIZED {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node B never saw the change"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(started.elapsed().as_secs_f64() * 1000.0);
        token = next;
    }
    a.stop().await;
    b.stop().await;
    delays.sort_by(f64::total_cmp);
    CrossNode {
        database,
        median_ms: delays.get(delays.len() / 2).copied().unwrap_or(0.0),
        max_ms: delays.last().copied().unwrap_or(0.0),
        changes,
        idle_queries_per_second: idle_queries as f64 / idle.as_secs_f64(),
    }
}
