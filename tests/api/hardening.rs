//! Refusals at the edge: paths that climb out of `/app`, ambiguous identity headers.
//! Raw HTTP, because an HTTP client library would normalise the path before sending it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn exchange(addr: std::net::SocketAddr, request: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").expect("a complete response");
    (status, serde_json::from_str(body).unwrap_or_default())
}

fn get(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\n{extra}Connection: close\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_the_upstream_sees_the_path() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for (sent, upstream) in [
        ("/app/a/../b", "/api/b"),
        ("/app/./x", "/api/x"),
        ("/app/a/%2e%2E/b?q=1", "/api/b"),
        ("/app/a/.%2e/b", "/api/b"),
        ("/app/plain/path", "/api/plain/path"),
    ] {
        let (status, echo) = exchange(app.addr, &get(sent, "")).await;
        assert_eq!(status, 200, "{sent}: {echo}");
        assert_eq!(echo["path"], upstream, "{sent}");
    }
    let (_, echo) = exchange(app.addr, &get("/app/a/../b?q=1", "")).await;
    assert_eq!(echo["query"], "q=1");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_leaving_the_app_or_with_encoded_separators_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for path in [
        "/app/%2e%2e/x",
        "/app/../login",
        "/app/a/../../x",
        "/app/.%2E/x",
        "/app/a%2Fb",
        "/app/a%2fb",
        "/app/a%5cb",
        "/app/a%00b",
    ] {
        let (status, body) = exchange(app.addr, &get(path, "")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["status"], 3, "{path}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_user_app_or_user_token_is_refused_on_every_route() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for (path, extra) in [
        ("/app/x", format!("User-App: {OTHER_APPID}\r\n")),
        ("/app/x", "User-Token: a\r\nUser-Token: b\r\n".to_string()),
        ("/wxcode", format!("User-App: {APPID}\r\n")),
        (
            "/credentials",
            "User-Token: a\r\nUser-Token: b\r\n".to_string(),
        ),
    ] {
        let (status, body) = exchange(app.addr, &get(path, &extra)).await;
        assert_eq!(status, 400, "{path} {extra}: {body}");
        assert_eq!(body["status"], 3, "{path} {extra}");
    }
    let (status, _) = exchange(app.addr, &get("/app/x", "User-Token: \r\n")).await;
    assert_ne!(status, 400, "a single User-Token is not ambiguous");
    app.stop().await;
}

/// Logins from one address over `limits.login_per_ip_per_minute` answer 429 with `Retry-After`
/// and the envelope, before WeChat or the store is asked; other endpoints count per token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_over_the_per_address_limit_answer_429_with_retry_after() {
    let limits = "limits:\n  login_per_ip_per_minute: 3\n  native_per_token_per_minute: 2\n";
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Tweaks {
            sections: Some(limits.to_string()),
            ..Tweaks::default()
        },
    )
    .await;
    let login = || {
        app.client
            .post(app.url("/login"))
            .header("User-App", APPID)
            .body(r#"{"code":"not-a-code"}"#)
            .send()
    };
    for _ in 0..3 {
        let response = login().await.unwrap();
        assert_ne!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    }
    let queries = app.queries();
    let refused = login().await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": 10003, "message": "too many requests"})
    );
    assert_eq!(app.queries(), queries);

    // Per token: the third /wxcode call with one token is refused, another token still passes.
    let statuses = |token: &'static str| {
        let app = &app;
        async move {
            app.client
                .get(app.url("/wxcode?path=pages/index"))
                .header("User-App", APPID)
                .header("User-Token", token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_ne!(
        statuses("token-a").await,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    assert_ne!(
        statuses("token-a").await,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        statuses("token-a").await,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    assert_ne!(
        statuses("token-b").await,
        reqwest::StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}
