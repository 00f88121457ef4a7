//! Bad input gets a clear error in the envelope and changes nothing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::login::count_users;

async fn post_login(app: &TestApp, body: &str) -> (StatusCode, serde_json::Value) {
    let response = app
        .client
        .post(app.url("/login"))
        .header("User-App", APPID)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_incomplete_login_bodies_are_refused_and_change_nothing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for body in [
        "{not json",
        "",
        "[]",
        "{}",
        "{\"code\":\"\"}",
        "{\"code\":\"   \"}",
        "{\"code\":42}",
    ] {
        let (status, answer) = post_login(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["status"], 3, "{body}");
        assert!(answer["message"].as_str().unwrap().len() > 5);
    }
    // A real code in an array: serde alone would take it as the `code` field.
    let code = app.code_for(APPID, "ivan", None).await;
    let (status, answer) = post_login(&app, &format!("[\"{code}\"]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        answer["message"],
        "invalid parameter: body must be a JSON object"
    );
    assert_eq!(count_users(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_with_413() {
    let tweaks = Tweaks {
        body_limit: 64,
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let big = json!({ "code": "x".repeat(200) }).to_string();
    let (status, answer) = post_login(&app, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["status"], 3);
    // A chunked body without Content-Length is cut off as well.
    let chunk = "y".repeat(200);
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nUser-App: {APPID}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&head), "HTTP/1.1 413");
    assert_eq!(count_users(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_unknown_apps_are_refused_in_the_envelope() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (status, body) = app
        .call(Method::GET, "/nope", &[("User-App", APPID)], None)
        .await;
    assert_eq!(
        (status, body["status"].as_i64()),
        (StatusCode::NOT_FOUND, Some(3))
    );
    let (status, body) = app
        .call(Method::GET, "/application", &[("User-App", APPID)], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) = app
        .call(Method::POST, "/login", &[], Some(json!({"code": "c"})))
        .await;
    assert_eq!(
        (status, body["status"].as_i64()),
        (StatusCode::FORBIDDEN, Some(10000))
    );
    let (status, body) = app
        .call(
            Method::GET,
            "/app/x",
            &[("User-App", "wxnotregistered")],
            None,
        )
        .await;
    assert_eq!(
        (status, body["status"].as_i64()),
        (StatusCode::FORBIDDEN, Some(10000))
    );

    let (status, _) = app
        .call(Method::GET, "/login", &[("User-App", APPID)], None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_unreachable_answers_502_and_writes_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tweaks = Tweaks {
        api_base: Some(format!("http://{closed}")),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let (status, body) = post_login(&app, "{\"code\":\"abc\"}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["status"], 10002);
    assert_eq!(count_users(&app).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_wechat_times_out_with_502() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let tweaks = Tweaks {
        api_base: Some(format!("http://{addr}")),
        wechat_timeout_ms: 400,
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let started = std::time::Instant::now();
    let (status, body) = post_login(&app, "{\"code\":\"abc\"}").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    app.stop().await;
}
