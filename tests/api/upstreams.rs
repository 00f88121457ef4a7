//! HTTPS upstreams verified against the system's roots plus `server.upstream_ca`, never sent a
//! request when their certificate does not verify; upstream host names followed when they move.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::helpers::{Db, TestApp, Tweaks, record_skip};

/// A certificate authority made with the openssl command, and server certificates it signs.
struct Authority {
    dir: PathBuf,
    cert: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> bool {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => {
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
            true
        }
        Err(_) => false,
    }
}

impl Authority {
    /// A new CA in a fresh directory; `None` without the openssl command.
    fn new(name: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("mpapi_ca_{}", mpapi::sim::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let made = openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
            &dir,
        );
        made.then(|| Self {
            cert: dir.join("ca.crt"),
            dir,
        })
    }

    /// A server certificate for `host` (a name or an address) signed by this CA: (cert, key).
    fn issue(&self, host: &str) -> (PathBuf, PathBuf) {
        let san = if host.parse::<std::net::IpAddr>().is_ok() {
            format!("subjectAltName=IP:{host}")
        } else {
            format!("subjectAltName=DNS:{host}")
        };
        let stem = host.replace(['.', ':'], "_");
        let (csr, cert, key, ext) = (
            format!("{stem}.csr"),
            format!("{stem}.crt"),
            format!("{stem}.key"),
            format!("{stem}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!("{san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={host}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
            &self.dir,
        );
        (self.dir.join(cert), self.dir.join(key))
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The echo upstream behind TLS, counting completed handshakes and the SNI names they carried.
struct TlsEcho {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    server_names: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshakes: Arc<AtomicUsize>,
    server_names: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            // A handshake the client gives up on is no connection (and no request).
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                let name = tls.get_ref().1.server_name().unwrap_or("").to_string();
                self.server_names.lock().unwrap().push(name);
                self.handshakes.fetch_add(1, Ordering::SeqCst);
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl TlsEcho {
    /// The echo upstream with a certificate for `host` that `ca` signed.
    async fn signed_by(ca: &Authority, host: &str) -> Self {
        let (cert, key) = ca.issue(host);
        Self::start(&cert, &key).await
    }

    async fn start(cert: &Path, key: &Path) -> Self {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: handshakes.clone(),
            server_names: server_names.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, mpapi::sim::echo::router()).await;
        });
        Self {
            addr,
            handshakes,
            server_names,
            task,
        }
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A line of the machine's hosts file naming a test host, removed when dropped. Resolution
/// through the hosts file is what the gateway's own lookups use, so moving the line moves the
/// host for it. `None` when the file cannot be written (not root).
struct HostsEntry {
    name: String,
}

static HOSTS_FILE: Mutex<()> = Mutex::new(());
const HOSTS: &str = "/etc/hosts";

impl HostsEntry {
    fn add(ip: &str) -> Option<Self> {
        let name = format!("mpapi-{}.test", mpapi::sim::random_hex(6));
        let entry = Self { name };
        entry.point_to(Some(ip)).then_some(entry)
    }

    /// Point the name at `ip`, or take it out of the file; whether the file could be written.
    fn point_to(&self, ip: Option<&str>) -> bool {
        let _guard = HOSTS_FILE.lock().unwrap();
        let Ok(text) = std::fs::read_to_string(HOSTS) else {
            return false;
        };
        let suffix = format!(" {}", self.name);
        let mut lines: Vec<String> = text
            .lines()
            .filter(|line| !line.ends_with(&suffix))
            .map(str::to_string)
            .collect();
        if let Some(ip) = ip {
            lines.push(format!("{ip}{suffix}"));
        }
        std::fs::write(HOSTS, lines.join("\n") + "\n").is_ok()
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        self.point_to(None);
    }
}

/// A gateway whose app's only upstream is `upstream`, with more `server:` lines.
async fn gateway(upstream: String, server: &str) -> TestApp {
    TestApp::spawn_with(
        Db::Sqlite,
        Tweaks {
            upstreams: Some(vec![upstream]),
            server: Some(server.to_string()),
            ..Tweaks::default()
        },
    )
    .await
}

#[tokio::test]
async fn an_https_upstream_behind_a_private_ca_is_reached_with_its_name_as_sni() {
    let Some(ca) = Authority::new("mpapi test CA") else {
        record_skip("no openssl command to make certificates");
        return;
    };
    let Some(hosts) = HostsEntry::add("127.0.0.1") else {
        record_skip("the hosts file cannot be written");
        return;
    };
    let (cert, key) = ca.issue(&hosts.name);
    let upstream = TlsEcho::start(&cert, &key).await;
    let app = gateway(
        format!("https://{}:{}/api", hosts.name, upstream.addr.port()),
        &format!("  upstream_ca: \"{}\"", ca.cert.display()),
    )
    .await;
    let token = app.login("alice").await;
    // The health checks make handshakes of their own (one at start, then one a second): count
    // from the first request's connection on, over a few milliseconds.
    let mut handshakes_after_first = 0;
    for round in 0..5 {
        let (status, echo) = app.get_app("/hello?x=1", Some(&token)).await;
        if round == 0 {
            handshakes_after_first = upstream.handshakes.load(Ordering::SeqCst);
        }
        assert_eq!(status, StatusCode::OK, "round {round}: {echo}");
        assert_eq!(echo["path"], "/api/hello");
        assert_eq!(echo["query"], "x=1");
        assert_eq!(
            crate::helpers::received(&echo, "user-openid").as_deref(),
            Some("alice")
        );
        let host = format!("{}:{}", hosts.name, upstream.addr.port());
        assert_eq!(crate::helpers::received(&echo, "host"), Some(host));
    }
    // Keep-alive: the four requests after the first open no connection (at most one health
    // check can fall in between).
    let more = upstream.handshakes.load(Ordering::SeqCst) - handshakes_after_first;
    assert!(more <= 1, "{more} handshakes for four requests");
    // Every handshake, the requests' and the checks', named the host.
    let names = upstream.server_names.lock().unwrap().clone();
    assert!(!names.is_empty());
    assert!(names.iter().all(|name| *name == hosts.name), "{names:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_https_upstream_by_address_is_verified_against_its_ip_name() {
    let Some(ca) = Authority::new("mpapi test CA") else {
        record_skip("no openssl command to make certificates");
        return;
    };
    let (cert, key) = ca.issue("127.0.0.1");
    let upstream = TlsEcho::start(&cert, &key).await;
    let app = gateway(
        format!("https://{}/api", upstream.addr),
        &format!("  upstream_ca: \"{}\"", ca.cert.display()),
    )
    .await;
    let (status, echo) = app.get_app("/open", None).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["path"], "/api/open");
    app.stop().await;
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_gets_no_request_and_the_client_a_502() {
    let (Some(trusted), Some(other)) = (Authority::new("trusted CA"), Authority::new("other CA"))
    else {
        record_skip("no openssl command to make certificates");
        return;
    };
    // Signed by a CA the gateway does not trust; then a trusted one naming another host.
    let untrusted = TlsEcho::signed_by(&other, "127.0.0.1").await;
    let wrong_name = TlsEcho::signed_by(&trusted, "127.0.0.2").await;
    for upstream in [&untrusted, &wrong_name] {
        let app = gateway(
            format!("https://{}/api", upstream.addr),
            &format!("  upstream_ca: \"{}\"", trusted.cert.display()),
        )
        .await;
        for _ in 0..2 {
            let (status, body) = app.get_app("/secret", None).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
            assert_eq!(body["status"], 10002, "{body}");
        }
        assert_eq!(upstream.handshakes.load(Ordering::SeqCst), 0);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_upstream_whose_certificate_does_not_verify_leaves_the_pool_and_the_other_serves() {
    let (Some(trusted), Some(other)) = (Authority::new("trusted CA"), Authority::new("other CA"))
    else {
        record_skip("no openssl command to make certificates");
        return;
    };
    let untrusted = TlsEcho::signed_by(&other, "127.0.0.1").await;
    let verified = TlsEcho::signed_by(&trusted, "127.0.0.1").await;
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Tweaks {
            upstreams: Some(vec![
                format!("https://{}/api", untrusted.addr),
                format!("https://{}/api", verified.addr),
            ]),
            server: Some(format!("  upstream_ca: \"{}\"", trusted.cert.display())),
            ..Tweaks::default()
        },
    )
    .await;
    // The first check runs at start, the next every second: once the untrusted upstream's
    // handshake has failed a check, every request goes to the other one.
    only_verified_upstreams_serve(&app).await;
    assert_eq!(untrusted.handshakes.load(Ordering::SeqCst), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_the_checks_verify_against_the_upstream_ca_as_read_again() {
    let (Some(first), Some(second)) = (Authority::new("first CA"), Authority::new("second CA"))
    else {
        record_skip("no openssl command to make certificates");
        return;
    };
    let by_first = TlsEcho::signed_by(&first, "127.0.0.1").await;
    let by_second = TlsEcho::signed_by(&second, "127.0.0.1").await;
    // `server.upstream_ca` names one file; its content changes from the first CA to the second.
    let ca_file = first.dir.join("upstream_ca.pem");
    std::fs::copy(&first.cert, &ca_file).unwrap();
    let tweaks = Tweaks {
        upstreams: Some(vec![
            format!("https://{}/api", by_first.addr),
            format!("https://{}/api", by_second.addr),
        ]),
        server: Some(format!("  upstream_ca: \"{}\"", ca_file.display())),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks.clone()).await;
    only_verified_upstreams_serve(&app).await;
    assert_eq!(
        by_second.handshakes.load(Ordering::SeqCst),
        0,
        "the second CA is not trusted yet"
    );

    let reloaded = reload_with_ca(&app, &tweaks, &ca_file, &second.cert).await;
    assert!(reloaded.needing_restart.is_empty(), "{reloaded:?}");
    // The pool is kept (same upstream list); its next check trusts the second CA, so its
    // handshake with that upstream completes (a rejected one never does). Requests cannot be
    // the first to reach it: the checks under the first CA took it out of the round-robin.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while by_second.handshakes.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checks still verify against the first CA"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    only_verified_upstreams_serve(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_that_drops_a_ca_no_connection_it_verified_serves_again() {
    let (Some(first), Some(second)) = (Authority::new("first CA"), Authority::new("second CA"))
    else {
        record_skip("no openssl command to make certificates");
        return;
    };
    let by_first = TlsEcho::signed_by(&first, "127.0.0.1").await;
    let ca_file = first.dir.join("upstream_ca.pem");
    std::fs::copy(&first.cert, &ca_file).unwrap();
    // One health check, at start: every later handshake is a request's.
    let tweaks = Tweaks {
        upstreams: Some(vec![format!("https://{}/api", by_first.addr)]),
        server: Some(format!("  upstream_ca: \"{}\"", ca_file.display())),
        health_check_seconds: 60,
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks.clone()).await;
    // Served over a connection verified against the first CA, which stays pooled.
    let (status, body) = app.get_app("/open", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The first CA is no longer trusted: the next request must not ride the pooled connection.
    reload_with_ca(&app, &tweaks, &ca_file, &second.cert).await;
    let (status, body) = app.get_app("/open", None).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "a connection verified against the dropped CA served: {body}"
    );
    assert_eq!(body["status"], 10002, "{body}");

    // Trusted again, then a reload that reads the same certificates: the connection verified
    // against them serves on, with no new handshake.
    reload_with_ca(&app, &tweaks, &ca_file, &first.cert).await;
    reload_with_ca(&app, &tweaks, &ca_file, &first.cert).await;
    let handshakes = by_first.handshakes.load(Ordering::SeqCst);
    for _ in 0..3 {
        let (status, body) = app.get_app("/open", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        by_first.handshakes.load(Ordering::SeqCst),
        handshakes,
        "a reload that changed no certificate dropped the pooled connections"
    );
    app.stop().await;
}

/// Put `ca` in `ca_file` (the file `server.upstream_ca` names) and reload the configuration.
async fn reload_with_ca(
    app: &TestApp,
    tweaks: &Tweaks,
    ca_file: &Path,
    ca: &Path,
) -> mpapi::state::Reloaded {
    std::fs::copy(ca, ca_file).unwrap();
    let yaml = crate::helpers::config_yaml(&app.database.url, &app.backends, tweaks);
    let config = mpapi::config::Config::parse(&yaml, &|_| None).unwrap();
    app.gateway().reload(&config).await.unwrap()
}

/// Within ten seconds, six requests in a row are served: the health checks have taken every
/// upstream whose certificate does not verify out of the round-robin.
async fn only_verified_upstreams_serve(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests still reach an upstream whose certificate does not verify"
        );
        let (status, _) = app.get_app("/open", None).await;
        in_a_row = if status == StatusCode::OK {
            in_a_row + 1
        } else {
            0
        };
        if in_a_row == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An upstream that answers every request with `{"who": name}`.
fn named_upstream(listener: tokio::net::TcpListener, name: &'static str) {
    let router = axum::Router::new()
        .fallback(move || async move { axum::Json(serde_json::json!({ "who": name })) });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
}

#[tokio::test]
async fn an_upstream_whose_address_moves_is_followed_and_one_that_vanishes_keeps_its_last_address()
{
    // Two upstreams on the same port of two loopback addresses.
    let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let Ok(second) = tokio::net::TcpListener::bind(("127.0.0.2", port)).await else {
        record_skip("127.0.0.2 cannot be bound here");
        return;
    };
    named_upstream(first, "first");
    named_upstream(second, "second");
    let Some(hosts) = HostsEntry::add("127.0.0.1") else {
        record_skip("the hosts file cannot be written");
        return;
    };
    let app = gateway(
        format!("http://{}:{port}/api", hosts.name),
        "  upstream_dns_refresh_seconds: 1",
    )
    .await;
    let who = || async {
        let (status, body) = app.get_app("/where", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["who"].as_str().unwrap().to_string()
    };
    assert_eq!(who().await, "first");

    hosts.point_to(Some("127.0.0.2"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while who().await != "second" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the move was not followed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The name disappears: the last good address stays in use, with a warning.
    hosts.point_to(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let warned = || {
        crate::helpers::logs().lines().any(|line| {
            line.contains(&format!("upstream={} ", hosts.name))
                && (line.contains("does not resolve") || line.contains("resolves to nothing"))
        })
    };
    while !warned() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning was logged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        assert_eq!(who().await, "second");
    }
    app.stop().await;
}
