//! `GET /wxcode`, and through it the access-token manager.

use std::time::Duration;

use mpapi::sim::{CODE_PNG, Fault};
use reqwest::StatusCode;

use crate::db_tests;
use crate::helpers::*;

const CODE_PATH: &str = "/wxa/getwxacodeunlimit";

async fn wxcode(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    token: &str,
    query: &str,
) -> (StatusCode, String, Vec<u8>) {
    let response = client
        .get(format!("http://{addr}/wxcode?{query}"))
        .header("User-App", APPID)
        .header("User-Token", token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

db_tests!(
    classic_tokens_are_fetched_once_for_two_nodes_sharing_a_database,
    stable_tokens_are_shared_by_two_nodes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wxcode_answers_wechats_png_with_its_content_type() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("sam").await;
    let (status, content_type, body) = wxcode(
        &app.client,
        app.addr,
        &token,
        "scene=id%3D7&page=pages/index/index&width=430",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "image/png");
    assert_eq!(body, CODE_PNG);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wxcode_refuses_bad_parameters_before_calling_wechat() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("tia").await;
    for query in [
        "",
        "scene=a%20b",
        "scene=a&width=100",
        "scene=a&page=/pages/index/index",
        &format!("scene={}", "x".repeat(33)),
    ] {
        let (status, _, body) = wxcode(&app.client, app.addr, &token, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], 3);
    }
    assert_eq!(
        app.backends.sim.requests(CODE_PATH),
        0,
        "WeChat was never called"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wxcode_reports_wechats_errcode_and_needs_a_login() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("uma").await;
    let (status, _, body) = wxcode(
        &app.client,
        app.addr,
        &token,
        "scene=a&page=pages/missing/missing",
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], 41030);
    let (status, _, _) = wxcode(&app.client, app.addr, "not-a-token", "scene=a").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_access_token_is_refreshed_and_the_call_retried_once() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("vic").await;
    let sim = &app.backends.sim;
    assert_eq!(
        wxcode(&app.client, app.addr, &token, "scene=a").await.0,
        StatusCode::OK
    );
    assert_eq!(sim.token_fetches(APPID), 1);

    sim.revoke_tokens(APPID);
    assert_eq!(
        wxcode(&app.client, app.addr, &token, "scene=a").await.0,
        StatusCode::OK
    );
    assert_eq!(sim.token_fetches(APPID), 2, "one refresh after 40001");

    // A WeChat that keeps answering 40001: exactly one retry, then the error.
    let before = sim.requests(CODE_PATH);
    sim.inject(CODE_PATH, Fault::Errcode(40001), 5);
    let (status, _, body) = wxcode(&app.client, app.addr, &token, "scene=a").await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["errcode"], 40001);
    assert_eq!(
        sim.requests(CODE_PATH) - before,
        2,
        "the call and one retry, no loop"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_wait_on_a_single_token_fetch() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("wes").await;
    app.backends.sim.inject(
        "/cgi-bin/stable_token",
        Fault::Slow(Duration::from_millis(300)),
        1,
    );
    let calls = (0..12).map(|_| {
        let (client, addr, token) = (app.client.clone(), app.addr, token.clone());
        async move { wxcode(&client, addr, &token, "scene=a").await }
    });
    for (status, _, _) in futures_join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(app.backends.sim.token_fetches(APPID), 1);
    app.stop().await;
}

async fn classic_tokens_are_fetched_once_for_two_nodes_sharing_a_database(db: Db) {
    let tweaks = Tweaks {
        app_extra: Some("    token_mode: classic".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(db, tweaks.clone()).await;
    let second = start_gateway(&app.database.url, &app.backends, &tweaks).await;
    let token = app.login("xia").await;
    app.backends
        .sim
        .inject("/cgi-bin/token", Fault::Slow(Duration::from_millis(300)), 1);
    let calls = (0..6).map(|i| {
        let addr = if i % 2 == 0 { app.addr } else { second.addr };
        let (client, token) = (app.client.clone(), token.clone());
        async move { wxcode(&client, addr, &token, "scene=a").await }
    });
    for (status, _, body) in futures_join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(
        app.backends.sim.token_fetches(APPID),
        1,
        "one classic fetch for both nodes"
    );
    second.stop().await;
    app.stop().await;
}

async fn stable_tokens_are_shared_by_two_nodes(db: Db) {
    let app = TestApp::spawn(db).await;
    let second = start_gateway(&app.database.url, &app.backends, &Tweaks::default()).await;
    let token = app.login("yan").await;
    for addr in [app.addr, second.addr, app.addr, second.addr] {
        assert_eq!(
            wxcode(&app.client, addr, &token, "scene=a").await.0,
            StatusCode::OK
        );
    }
    assert!(app.backends.sim.token_fetches(APPID) <= 2);
    // After a revocation, both nodes recover with one retry each at most.
    app.backends.sim.revoke_tokens(APPID);
    for addr in [second.addr, app.addr] {
        assert_eq!(
            wxcode(&app.client, addr, &token, "scene=a").await.0,
            StatusCode::OK
        );
    }
    second.stop().await;
    app.stop().await;
}

/// Run futures concurrently (a tiny join_all without another dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
