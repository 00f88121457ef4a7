//! The database going away and coming back; what the logs may never contain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::task::AbortHandle;

use crate::helpers::*;

/// A TCP relay to a database that a test can cut and restore.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().push(task.abort_handle());
            }
        });
        Self {
            addr,
            up,
            connections,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Wait (at most 15 s) for a log line containing both `field` and `text`.
async fn wait_for_log(field: &str, text: &str) {
    for _ in 0..300 {
        if logs()
            .lines()
            .any(|line| line.contains(field) && line.contains(text))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no log line with {field} and {text:?}");
}

crate::db_tests!(the_database_going_down_keeps_cached_sessions_working_and_recovers);

async fn the_database_going_down_keeps_cached_sessions_working_and_recovers(db: Db) {
    if db == Db::Sqlite {
        return; // an embedded file cannot go away; the server databases can.
    }
    let database = TestDatabase::create(db).await;
    let mut url = url::Url::parse(&database.url).unwrap();
    let target: SocketAddr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap();
    let relay = Relay::start(target).await;
    url.set_port(Some(relay.addr.port())).unwrap();
    let backends = Backends::start().await;
    let tweaks = Tweaks {
        notify: Some("  poll_interval_ms: 50".into()),
        ..Tweaks::default()
    };
    let gateway = start_gateway(url.as_str(), &backends, &tweaks).await;
    let app = TestApp {
        addr: gateway.addr,
        gateway: Some(gateway),
        database,
        backends,
        client: client(),
    };

    let token = app.login("pat").await;
    relay.cut();

    let (status, echo) = app.get_app("/x", Some(&token)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a cached session needs no database: {echo}"
    );
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("pat"));

    let (status, body) = app.try_login(APPID, "quinn").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], 10002);
    // The background loops say so once per outage (the rule itself: types::Outage's test).
    wait_for_log("task=\"notification dispatcher\"", "store unavailable").await;

    relay.restore();
    let token = app.login("quinn").await;
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "recovered without a restart");
    wait_for_log("task=\"notification dispatcher\"", "store available again").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_session_key_reaches_the_logs() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("rosa").await;
    app.get_app("/x", Some(&token)).await;
    let forged = format!("{}x", &token[..42]);
    app.get_app("/x", Some(&forged)).await;
    let code = app.code_for(APPID, "rosa", None).await;
    app.call(
        Method::POST,
        "/login",
        &[("User-App", APPID)],
        Some(json!({ "code": code })),
    )
    .await;
    app.call(
        Method::POST,
        "/login",
        &[("User-App", APPID)],
        Some(json!({ "code": code })),
    )
    .await;
    let session_key = app
        .backends
        .sim
        .user(APPID, "rosa")
        .unwrap()
        .session_key
        .unwrap();

    let logs = logs();
    assert!(logs.contains("login"), "the capture works: {logs}");
    for secret in [SECRET, token.as_str(), session_key.as_str(), code.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    app.stop().await;
}
