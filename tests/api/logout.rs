//! `POST /logout`: the session ends at once and stays ended, in the cache and in the store.

use reqwest::{Method, StatusCode};

use crate::db_tests;
use crate::helpers::*;

db_tests!(
    logout_retires_the_token_at_once,
    logout_of_an_unknown_or_retired_token_is_refused,
    logout_survives_a_restart,
    logout_needs_post,
);

async fn logout(app: &TestApp, token: &str) -> (StatusCode, serde_json::Value) {
    app.call(
        Method::POST,
        "/logout",
        &[("User-App", APPID), ("User-Token", token)],
        None,
    )
    .await
}

async fn logout_retires_the_token_at_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("olga").await;
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "the session is cached and live");
    let (status, body) = logout(&app, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"status": 0, "message": "成功"}));
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the cached copy is gone");
    // Another login of the same user works as before.
    let fresh = app.login("olga").await;
    let (status, _) = app.get_app("/x", Some(&fresh)).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn logout_of_an_unknown_or_retired_token_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("pavel").await;
    let (status, _) = logout(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = logout(&app, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "already retired");
    assert_eq!(body["status"], 10001, "{body}");
    let retired = app.login("pavel").await;
    let _current = app.login("pavel").await;
    let (status, _) = logout(&app, &retired).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "retired by a login");
    let (status, _) = logout(&app, "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown");
    app.stop().await;
}

async fn logout_survives_a_restart(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("rita").await;
    let (status, _) = logout(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    // A second gateway on the same database never saw the session cached: the store must
    // have forgotten the token.
    let other = start_gateway(&app.database.url, &app.backends, &Tweaks::default()).await;
    let response = app
        .client
        .get(format!("http://{}/app/x", other.addr))
        .header("User-App", APPID)
        .header("User-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    other.stop().await;
    app.stop().await;
}

async fn logout_needs_post(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("sasha").await;
    let (status, _) = app
        .call(
            Method::GET,
            "/logout",
            &[("User-App", APPID), ("User-Token", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a refused logout leaves the session live"
    );
    app.stop().await;
}
