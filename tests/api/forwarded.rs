//! What the upstream learns about the client (`X-Forwarded-For`, `X-Real-IP`,
//! `X-Forwarded-Proto`) and the request id every answer carries.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

async fn spawn_trusting(trusted: Option<&str>, sections: Option<&str>) -> TestApp {
    TestApp::spawn_with(
        Db::Sqlite,
        Tweaks {
            server: trusted.map(|cidrs| format!("  trusted_proxies: {cidrs}")),
            sections: sections.map(str::to_string),
            ..Tweaks::default()
        },
    )
    .await
}

/// With no trusted proxy, whatever the client claims is replaced by its TCP peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_its_forwarded_address() {
    let app = spawn_trusting(None, None).await;
    let headers = [
        ("User-App", APPID),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
    ];
    let (status, echo) = app.call(Method::GET, "/app/who", &headers, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        received(&echo, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(received(&echo, "x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        received(&echo, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        echo["headers"]["x-forwarded-for"].as_array().unwrap().len(),
        1
    );
    app.stop().await;
}

/// Behind a trusted proxy the chain is kept, the peer appended, and the client address is the
/// first one from the right that is not a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_chain_is_kept_and_names_the_client() {
    let app = spawn_trusting(Some(r#"["127.0.0.0/8", "10.0.0.0/8"]"#), None).await;
    let headers = [
        ("User-App", APPID),
        ("X-Forwarded-For", "6.6.6.6, 203.0.113.5"),
        ("X-Forwarded-For", "10.9.9.9"),
    ];
    let (status, echo) = app.call(Method::GET, "/app/who", &headers, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        received(&echo, "x-forwarded-for").as_deref(),
        Some("6.6.6.6, 203.0.113.5, 10.9.9.9, 127.0.0.1")
    );
    assert_eq!(received(&echo, "x-real-ip").as_deref(), Some("203.0.113.5"));
    app.stop().await;
}

/// `/login`'s per-address limit counts the client address a trusted proxy names, so one proxy
/// does not put all its clients in one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limits_count_the_address_a_trusted_proxy_names() {
    let limits = "limits:\n  login_per_ip_per_minute: 2\n";
    let app = spawn_trusting(Some(r#"["127.0.0.1"]"#), Some(limits)).await;
    let login = |client: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/login"))
                .header("User-App", APPID)
                .header("X-Forwarded-For", client)
                .body(r#"{"code":"not-a-code"}"#)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_ne!(login("198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(login("198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login("198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(login("198.51.100.2").await, StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

/// A client's acceptable id travels upstream and back; any other is replaced by a fresh one,
/// the same upstream and back; native answers and refusals carry one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_request_id_the_upstream_saw() {
    let app = spawn_trusting(None, None).await;
    let send = |path: &'static str, id: Option<String>| {
        let app = &app;
        async move {
            let mut request = app.client.get(app.url(path)).header("User-App", APPID);
            if let Some(id) = id {
                request = request.header("X-Request-Id", id);
            }
            let response = request.send().await.unwrap();
            let id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let body: serde_json::Value = response.json().await.unwrap();
            (id, body)
        }
    };
    let (id, echo) = send("/app/id", Some("trace-42/abc".into())).await;
    assert_eq!(id, "trace-42/abc");
    assert_eq!(
        received(&echo, "x-request-id").as_deref(),
        Some(id.as_str())
    );

    for unacceptable in [None, Some("x".repeat(129)), Some("two words".into())] {
        let (id, echo) = send("/app/id", unacceptable.clone()).await;
        assert!(id.len() >= 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_ne!(Some(id.clone()), unacceptable);
        assert_eq!(
            received(&echo, "x-request-id").as_deref(),
            Some(id.as_str())
        );
    }
    let (first, _) = send("/app/id", None).await;
    let (second, _) = send("/app/id", None).await;
    assert_ne!(first, second);

    // Native answers and refusals.
    let (id, body) = send("/wxcode?path=x", Some("native-1".into())).await;
    assert_eq!(id, "native-1");
    assert_ne!(body["status"], 0);
    let (id, _) = send("/no/such/route", Some("unknown-1".into())).await;
    assert_eq!(id, "unknown-1");
    app.stop().await;
}

/// A failed proxy attempt is logged with the request's id, the client's or a made-up one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_logged_with_the_request_id() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Tweaks {
            upstreams: Some(vec![format!("http://{dead}/api")]),
            ..Tweaks::default()
        },
    )
    .await;
    let id = format!("failing-{}", mpapi::sim::random_hex(8));
    let response = app
        .client
        .get(app.url("/app/x"))
        .header("User-App", APPID)
        .header("X-Request-Id", &id)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    assert_eq!(response.headers()["x-request-id"], id.as_str());
    assert!(logs().contains(&id), "no log line names {id}");

    let response = app
        .client
        .get(app.url("/app/x"))
        .header("User-App", APPID)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error());
    let made_up = response.headers()["x-request-id"].to_str().unwrap();
    assert!(
        logs().contains(made_up),
        "the answer's id {made_up} is not the one logged"
    );
    app.stop().await;
}
