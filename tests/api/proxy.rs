//! `/app/*`: routing to the upstream, identity headers, spoofing.

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::db_tests;
use crate::helpers::*;

db_tests!(
    identity_headers_reach_the_upstream_with_the_path_rewritten,
    spoofed_identity_headers_never_reach_the_upstream,
);

async fn identity_headers_reach_the_upstream_with_the_path_rewritten(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login_as(APPID, "frank", Some("union-frank")).await;
    let (status, echo) = app.get_app("/orders/7?page=2&q=a%20b", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["path"], "/api/orders/7");
    assert_eq!(echo["query"], "page=2&q=a%20b");
    assert_eq!(
        received(&echo, "host"),
        Some(app.backends.upstream_addr.to_string())
    );
    let user_id = received(&echo, "user-id").unwrap();
    assert!(user_id.parse::<i64>().unwrap() > 0);
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("frank"));
    assert_eq!(
        received(&echo, "user-unionid").as_deref(),
        Some("union-frank")
    );
    assert_eq!(
        received(&echo, "user-extra").as_deref(),
        Some(""),
        "no profile stored yet"
    );
    assert_eq!(
        received(&echo, "user-mobile").as_deref(),
        Some(""),
        "no mobile stored yet"
    );
    assert_eq!(
        received(&echo, "user-token"),
        None,
        "the token never leaves mpapi"
    );
    app.stop().await;
}

async fn spoofed_identity_headers_never_reach_the_upstream(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("grace").await;
    let spoofed = [
        ("User-Id", "999999"),
        ("user_openid", "admin"),
        ("User-Unionid", "u-admin"),
        ("user_extra", "{\"nickName\":\"admin\"}"),
        ("User-Mobile", "{\"phoneNumber\":\"110\"}"),
    ];
    // Anonymous: nothing of the spoofed identity may pass.
    let mut headers = vec![("User-App", APPID)];
    headers.extend(spoofed);
    let (status, echo) = app.call(Method::GET, "/app/anon", &headers, None).await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "user-id",
        "user-openid",
        "user-unionid",
        "user-extra",
        "user-mobile",
        "user_openid",
        "user_extra",
    ] {
        assert_eq!(received(&echo, name), None, "{name} leaked: {echo}");
    }
    // Authenticated: only mpapi's values, exactly once each.
    headers.push(("User-Token", &token));
    let (status, echo) = app.call(Method::GET, "/app/authed", &headers, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("grace"));
    assert_eq!(echo["headers"]["user-id"].as_array().unwrap().len(), 1);
    assert_ne!(received(&echo, "user-id").as_deref(), Some("999999"));
    assert_eq!(received(&echo, "user-mobile").as_deref(), Some(""));
    assert_eq!(received(&echo, "user_openid"), None);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_header_names_are_stripped_whatever_their_case() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let request = format!(
        "GET /app/case HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\nUSER-ID: 1\r\nuser-OpenID: admin\r\nUSER_UNIONID: u\r\nConnection: close\r\n\r\n"
    );
    let response = raw_exchange(app.addr, &request).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let lower = response.to_ascii_lowercase();
    for leaked in [
        "\"user-id\"",
        "\"user-openid\"",
        "\"user_unionid\"",
        "admin",
    ] {
        assert!(!lower.contains(leaked), "{leaked} leaked: {response}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_pass_without_identity_unless_the_app_requires_login() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (status, echo) = app.get_app("/public", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "user-id"), None);

    let (status, body) = app
        .call(
            Method::GET,
            "/app/private",
            &[("User-App", OTHER_APPID)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], 10001);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appid_query_parameter_names_the_app_when_the_header_is_absent() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (status, echo) = app
        .call(Method::GET, &format!("/app/q?appid={APPID}&x=1"), &[], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["query"], format!("appid={APPID}&x=1"));
    let (status, body) = app
        .call(Method::GET, "/app/q?appid=wxunknown", &[], None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["status"], 10000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_token_is_sent_as_authorization() {
    let tweaks = Tweaks {
        app_extra: Some("    host_token: \"Bearer backend-secret\"".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let (_, echo) = app
        .call(
            Method::GET,
            "/app/h",
            &[("User-App", APPID), ("Authorization", "client-value")],
            None,
        )
        .await;
    assert_eq!(
        received(&echo, "authorization").as_deref(),
        Some("Bearer backend-secret")
    );
    assert_eq!(
        echo["headers"]["authorization"].as_array().unwrap().len(),
        1
    );

    // Without a host_token the client's Authorization passes through.
    let token = app.login_as(OTHER_APPID, "heidi", None).await;
    let (status, echo) = app
        .call(
            Method::GET,
            "/app/h",
            &[
                ("User-App", OTHER_APPID),
                ("User-Token", &token),
                ("Authorization", "client-value"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["path"], "/other/h");
    assert_eq!(
        received(&echo, "authorization").as_deref(),
        Some("client-value")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_robin_and_a_dead_upstream_stops_receiving_traffic() {
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let second = spawn_echo(rx).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backends = Backends::start().await;
    let live = [backends.upstream_addr.to_string(), second.to_string()];

    let tweaks = Tweaks {
        upstreams: Some(vec![
            format!("http://{}/api", live[0]),
            format!("http://{}/api", live[1]),
            format!("http://{dead}/api"),
        ]),
        ..Tweaks::default()
    };
    let database = TestDatabase::create(Db::Sqlite).await;
    let gateway = start_gateway(&database.url, &backends, &tweaks).await;
    let client = client();
    // Let the 1-second health check mark the dead upstream down.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut hits = std::collections::HashMap::new();
    for _ in 0..20 {
        // A request to the dead upstream would fail.
        *hits
            .entry(upstream_reached(&client, gateway.addr).await)
            .or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(
        hits.values().all(|n| *n >= 5),
        "round robin spreads the load: {hits:?}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_again_receives_traffic_again() {
    let revived = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backends = Backends::start().await;
    let live = backends.upstream_addr.to_string();
    let tweaks = Tweaks {
        upstreams: Some(vec![
            format!("http://{live}/api"),
            format!("http://{revived}/api"),
        ]),
        ..Tweaks::default()
    };
    let database = TestDatabase::create(Db::Sqlite).await;
    let gateway = start_gateway(&database.url, &backends, &tweaks).await;
    let client = client();
    let host_reached = || upstream_reached(&client, gateway.addr);
    // Let the 1-second health check mark the stopped upstream down.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    for _ in 0..6 {
        assert_eq!(
            host_reached().await,
            live,
            "the stopped upstream is skipped"
        );
    }

    let (_stop, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind(revived).await.unwrap();
    tokio::spawn(mpapi::sim::echo::serve(
        listener,
        mpapi::shutdown::wait_for(rx),
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while host_reached().await != revived.to_string() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream that answers again gets no request"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_answers_502_in_the_envelope() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tweaks = Tweaks {
        upstreams: Some(vec![format!("http://{dead}/api")]),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let (status, body) = app.get_app("/x", None).await;
    assert!(
        status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status}"
    );
    assert_eq!(body["status"], 10002, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_alive() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let refused = format!(
        "GET /app/x HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\nUser-Token: forged\r\n\r\n"
    );
    let allowed = format!("GET /app/y HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\n\r\n");
    stream.write_all(refused.as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(
        first.to_ascii_lowercase().contains("content-length:"),
        "{first}"
    );
    stream.write_all(allowed.as_bytes()).await.unwrap();
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_what_connection_names_never_reach_the_upstream() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = |extra: &str| {
        format!(
            "GET /app/hop HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\nX-Kept: yes\r\n{extra}\r\n"
        )
    };
    let echo_of = |response: &str| -> serde_json::Value {
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    };
    let exchanges = [
        // Only a plain `Connection`: the gateway drops it itself.
        ("Connection: keep-alive\r\n", vec!["connection"]),
        // Hop-by-hop headers and one that `Connection` names: Pingora's standard policy.
        (
            "Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
             TE: trailers\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n",
            vec![
                "connection",
                "x-hop",
                "keep-alive",
                "te",
                "proxy-authorization",
                "proxy-connection",
            ],
        ),
        ("", vec![]),
    ];
    for (extra, dropped) in exchanges {
        stream.write_all(request(extra).as_bytes()).await.unwrap();
        let echo = echo_of(&read_response(&mut stream).await);
        assert_eq!(received(&echo, "x-kept").as_deref(), Some("yes"), "{echo}");
        for name in dropped {
            assert_eq!(received(&echo, name), None, "{name} was forwarded: {echo}");
        }
    }
    // A `Connection` may not strip what the upstream relies on.
    let refused = raw_exchange(app.addr, &request("Connection: close, X-Forwarded-For\r\n")).await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    // The last request of a connection: `Connection: close` is not forwarded either.
    let last = raw_exchange(app.addr, &request("Connection: close\r\n")).await;
    let echo = echo_of(&last);
    assert_eq!(received(&echo, "connection"), None, "{echo}");
    assert_eq!(received(&echo, "x-kept").as_deref(), Some("yes"), "{echo}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_whatever_their_framing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!("POST /app/orders HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\n");
    let requests = [
        // No hop-by-hop header: Pingora's sanitation is skipped.
        format!("{head}Content-Length: 11\r\n\r\nhello=world"),
        // Only `Connection`: the gateway drops it itself.
        format!("{head}Connection: keep-alive\r\nContent-Length: 11\r\n\r\nhello=world"),
        // Chunked: the standard policy strips `Transfer-Encoding` and Pingora frames the body.
        format!("{head}Transfer-Encoding: chunked\r\n\r\n6\r\nhello=\r\n5\r\nworld\r\n0\r\n\r\n"),
    ];
    for request in requests {
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echo["method"], "POST", "{echo}");
        assert_eq!(echo["body"], "hello=world", "{request:?}: {echo}");
        assert_eq!(received(&echo, "connection"), None, "{echo}");
    }
    app.stop().await;
}

/// The `Host` (the upstream's address) that an anonymous `/app/` request reached; the request
/// must succeed.
async fn upstream_reached(client: &reqwest::Client, gateway: std::net::SocketAddr) -> String {
    let response = client
        .get(format!("http://{gateway}/app/where"))
        .header("User-App", APPID)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo: serde_json::Value = response.json().await.unwrap();
    received(&echo, "host").unwrap()
}

/// Send `request` on a new connection and read until it closes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one response with a Content-Length body.
pub(crate) async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return text;
            }
        }
    }
}
