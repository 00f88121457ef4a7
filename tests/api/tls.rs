//! TLS termination: HTTP/2 over TLS through to the upstream with identity injected, SNI
//! choosing the certificate, and a bad handshake closing only its own connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mpapi::config::Config;
use mpapi::server::{Listeners, RunningGateway, TlsListener};
use mpapi::tls::{CertificateFiles, CertificateResolver, CertificateSet};
use reqwest::{StatusCode, Version};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{APPID, Backends, Db, TestDatabase, Tweaks, config_yaml, received};
use crate::slow_clients::closed_between;

const HOST: &str = "api.example.com";

/// A self-signed certificate for `host`, made with the openssl command (None without it).
fn certificate(dir: &Path, host: &str) -> Option<(CertificateFiles, PathBuf)> {
    let cert = dir.join(format!("{host}.crt"));
    let key = dir.join(format!("{host}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        // A server certificate, not a CA: clients refuse a CA as end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?;
    assert!(out.status.success(), "openssl: {out:?}");
    let files = CertificateFiles {
        cert_key: "server.tls.cert".into(),
        cert: cert.clone(),
        key_key: "server.tls.key".into(),
        key,
    };
    Some((files, cert))
}

struct TlsWorld {
    database: TestDatabase,
    backends: Backends,
    gateway: RunningGateway,
    tls_addr: SocketAddr,
    ca: reqwest::Certificate,
    /// The certificate's PEM file, for clients other than reqwest.
    cert: PathBuf,
    dir: PathBuf,
}

impl TlsWorld {
    async fn start() -> Option<Self> {
        Self::start_with(Tweaks::default()).await
    }

    /// One with these lines added under `server:`.
    async fn start_with_server(lines: &str) -> Option<Self> {
        Self::start_with(Tweaks {
            server: Some(lines.to_string()),
            ..Tweaks::default()
        })
        .await
    }

    async fn start_with(tweaks: Tweaks) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("mpapi_tls_{}", mpapi::sim::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let Some((files, cert)) = certificate(&dir, HOST) else {
            eprintln!("skipped: no openssl command to make certificates");
            return None;
        };
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let database = TestDatabase::create(Db::Sqlite).await;
        let backends = Backends::start().await;
        let yaml = config_yaml(&database.url, &backends, &tweaks);
        let config = Config::parse(&yaml, &|_| None).unwrap();
        let certificates = CertificateResolver::new(CertificateSet::load(&[files]).unwrap());
        let listeners = Listeners {
            plain: None,
            tls: Some(TlsListener {
                listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                certificates,
            }),
        };
        let gateway = mpapi::server::spawn_with(config, listeners).await.unwrap();
        let tls_addr = gateway.tls_addr.unwrap();
        Some(Self {
            database,
            backends,
            gateway,
            tls_addr,
            ca,
            cert,
            dir,
        })
    }

    /// A client trusting the test certificate that reaches the gateway as `host`.
    fn client(&self, host: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.clone())
            .resolve(host, self.tls_addr)
            .build()
            .unwrap()
    }

    /// A TLS connection to the gateway as `host` offering only `alpn`, without an HTTP client
    /// on top: the test writes the bytes.
    async fn raw_connection(
        &self,
        host: &'static str,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&self.cert).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.tls_addr).await.unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from(host).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// A well-behaved client is still served, over HTTP/2, after another one failed.
    async fn still_serves(&self) {
        let response = self
            .client(HOST)
            .get(self.url(HOST, "/app/public"))
            .header("User-App", APPID)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the listener still serves"
        );
        assert_eq!(response.version(), Version::HTTP_2);
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls_addr.port())
    }

    async fn stop(self) {
        self.gateway.stop().await;
        self.database.drop_database().await;
        drop(self.backends);
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

#[tokio::test]
async fn http2_over_tls_reaches_the_upstream_with_identity_headers() {
    let Some(world) = TlsWorld::start().await else {
        return;
    };
    let client = world.client(HOST);
    let code = world.backends.sim.mint_code(APPID, "tess", None);
    let login = client
        .post(world.url(HOST, "/login"))
        .header("User-App", APPID)
        .body(json!({ "code": code }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(login.version(), Version::HTTP_2, "ALPN chose HTTP/2");
    let body: Value = login.json().await.unwrap();
    let token = body["data"]["token"].as_str().unwrap().to_string();

    let response = client
        .get(world.url(HOST, "/app/orders/7"))
        .header("User-App", APPID)
        .header("User-Token", &token)
        .header("User-Openid", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("tess"));
    assert!(received(&echo, "user-id").is_some(), "{echo}");
    assert_eq!(
        received(&echo, "x-forwarded-proto").as_deref(),
        Some("https")
    );
    world.stop().await;
}

#[tokio::test]
async fn over_tls_a_slow_header_is_cut_off_and_http2_is_not_timed_as_one() {
    let Some(world) = TlsWorld::start_with(Tweaks {
        server: Some("  client_header_timeout_ms: 600".to_string()),
        sections: Some(crate::observability::ADMIN.to_string()),
        ..Tweaks::default()
    })
    .await
    else {
        return;
    };
    let header_timeouts = || async {
        let scrape = crate::observability::scrape_gateway(&world.gateway).await;
        crate::observability::value(
            &scrape,
            "mpapi_client_timeouts_total",
            &[("timeout", "header")],
        )
    };
    // HTTP/2 frames its own headers: a connection idle for longer than the header timeout
    // between two requests is not cut.
    let client = world.client(HOST);
    for _ in 0..2 {
        let response = client
            .get(world.url(HOST, "/app/public"))
            .header("User-App", APPID)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    assert_eq!(header_timeouts().await, 0.0);
    // HTTP/1.1 inside TLS is timed as over plain TCP.
    let mut connection = world.raw_connection(HOST, b"http/1.1").await;
    crate::slow_clients::drip_until_cut_off(&mut connection).await;
    assert_eq!(header_timeouts().await, 1.0);
    world.stop().await;
}

#[tokio::test]
async fn an_http2_connection_idle_longer_than_the_keepalive_timeout_is_closed() {
    let Some(world) = TlsWorld::start_with_server("  client_keepalive_timeout_seconds: 1").await
    else {
        return;
    };
    let mut connection = world.raw_connection(HOST, b"h2").await;
    // HTTP/2's connection preface and an empty SETTINGS frame, then no stream.
    connection
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let idle = Instant::now();
    let (earliest, latest) = (Duration::from_millis(900), Duration::from_secs(5));
    closed_between(&mut connection, idle, earliest, latest).await;
    world.stop().await;
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_preface_is_closed_at_the_header_timeout() {
    let Some(world) = TlsWorld::start_with_server("  client_header_timeout_ms: 600").await else {
        return;
    };
    // HTTP/2 chosen in the handshake, then nothing, and then half a preface: Pingora alone
    // would wait for the rest for good.
    let opened = Instant::now();
    let mut silent = world.raw_connection(HOST, b"h2").await;
    let mut halting = world.raw_connection(HOST, b"h2").await;
    halting.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (earliest, latest) = (Duration::from_millis(500), Duration::from_secs(10));
    for connection in [&mut silent, &mut halting] {
        closed_between(connection, opened, earliest, latest).await;
    }
    client_failures_are_logged_at_info("server.client_header_timeout_ms").await;
    world.stop().await;
}

#[tokio::test]
async fn reloaded_certificates_serve_new_handshakes_without_a_restart() {
    let Some(world) = TlsWorld::start().await else {
        return;
    };
    let next_dir = world.dir.join("next");
    std::fs::create_dir_all(&next_dir).unwrap();
    let (next, next_cert) = certificate(&next_dir, HOST).unwrap();
    let next_ca = reqwest::Certificate::from_pem(&std::fs::read(next_cert).unwrap()).unwrap();
    let trusting_next = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(next_ca)
        .resolve(HOST, world.tls_addr)
        .build()
        .unwrap();
    let path = world.url(HOST, "/app/public");
    assert!(
        trusting_next.get(&path).send().await.is_err(),
        "not served yet"
    );
    let tls = mpapi::config::TlsConfig {
        listen: world.tls_addr,
        certificates: vec![next],
    };
    world.gateway.reload_certificates(&tls).unwrap();
    let response = trusting_next
        .get(&path)
        .header("User-App", APPID)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        world.client(HOST).get(&path).send().await.is_err(),
        "the old one is gone"
    );
    world.stop().await;
}

#[tokio::test]
async fn plain_http_or_an_unknown_name_on_the_tls_port_fails_only_that_connection() {
    crate::helpers::capture_logs();
    let Some(world) = TlsWorld::start().await else {
        return;
    };
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let cleartext = plain
        .get(format!("http://{}/app/x", world.tls_addr))
        .send()
        .await;
    assert!(
        cleartext.is_err() || !cleartext.unwrap().status().is_success(),
        "plain HTTP is not served on the TLS port"
    );
    // The client accepts any certificate: only the gateway can refuse this handshake.
    let unknown = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve("other.example.com", world.tls_addr)
        .build()
        .unwrap()
        .get(world.url("other.example.com", "/app/x"))
        .send()
        .await;
    assert!(unknown.is_err(), "no certificate for an unknown name");
    client_failures_are_logged_at_info("Downstream handshake").await;

    world.still_serves().await;
    world.stop().await;
}

#[tokio::test]
async fn a_client_that_chooses_http2_and_speaks_http1_fails_only_that_connection() {
    crate::helpers::capture_logs();
    let Some(world) = TlsWorld::start().await else {
        return;
    };
    // ALPN agrees on HTTP/2; the client then sends an HTTP/1.1 request instead of HTTP/2's
    // connection preface.
    let mut connection = world.raw_connection(HOST, b"h2").await;
    assert_eq!(connection.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    connection
        .write_all(b"GET /app/public HTTP/1.1\r\nHost: api.example.com\r\nUser-App: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway closes the connection");
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "not served as HTTP/1.1"
    );
    client_failures_are_logged_at_info("H2 handshake error").await;

    world.still_serves().await;
    world.stop().await;
}

/// Pingora's line for a client's failure (containing `marker`) arrives, at INFO,
/// and no such line is an ERROR (the client's doing: see `mpapi::observe::pingora_log`).
pub(crate) async fn client_failures_are_logged_at_info(marker: &str) {
    let lines = || -> Vec<String> {
        crate::helpers::logs()
            .lines()
            .filter(|line| line.contains(marker))
            .map(str::to_string)
            .collect()
    };
    let started = Instant::now();
    while lines().is_empty() && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = lines();
    assert!(
        lines.iter().any(|line| line.contains(" INFO ")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|line| line.contains("ERROR")),
        "{lines:#?}"
    );
}

/// `mpapi -t` on a file whose `server:` section is `server`; returns success and stderr.
fn dash_t(dir: &Path, server: &str) -> (bool, String) {
    let yaml = format!(
        r#"
server: {server}
database: {{ url: "sqlite://x.db?mode=rwc" }}
wechat: {{ api_base: "https://api.weixin.qq.com" }}
apps:
  - appid: "wx1"
    secret: "s"
    upstreams: ["http://127.0.0.1:9000/api"]
"#
    );
    let file = dir.join("mpapi.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mpapi"))
        .args(["-t", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dash_t_names_the_key_of_a_missing_certificate_or_a_key_that_does_not_match() {
    let dir = std::env::temp_dir().join(format!("mpapi_tls_{}", mpapi::sim::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((api, _)) = certificate(&dir, HOST) else {
        eprintln!("skipped: no openssl command to make certificates");
        return;
    };
    let (other, _) = certificate(&dir, "other.example.com").unwrap();
    let tls = |cert: &Path, key: &Path| {
        format!(
            r#"{{ tls: {{ listen: "127.0.0.1:0", cert: "{}", key: "{}" }} }}"#,
            cert.display(),
            key.display()
        )
    };

    let (ok, stderr) = dash_t(&dir, &tls(&api.cert, &api.key));
    assert!(ok, "TLS alone, without server.listen: {stderr}");

    let (ok, stderr) = dash_t(&dir, &tls(&dir.join("absent.crt"), &api.key));
    assert!(!ok);
    assert!(stderr.contains("server.tls.cert: cannot read"), "{stderr}");

    let (ok, stderr) = dash_t(&dir, &tls(&api.cert, &other.key));
    assert!(!ok);
    assert!(
        stderr.contains("server.tls.key: the key does not match"),
        "{stderr}"
    );

    let extra = format!(
        r#"{{ tls: {{ listen: "127.0.0.1:0", cert: "{}", key: "{}", certificates: [{{ cert: "{}", key: "{}" }}] }} }}"#,
        api.cert.display(),
        api.key.display(),
        other.cert.display(),
        api.key.display()
    );
    let (ok, stderr) = dash_t(&dir, &extra);
    assert!(!ok);
    assert!(
        stderr.contains("server.tls.certificates[0].key: the key does not match"),
        "{stderr}"
    );

    let (ok, stderr) = dash_t(&dir, "{ threads: 2 }");
    assert!(!ok);
    assert!(
        stderr.contains("server.listen: required unless server.tls is set"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
