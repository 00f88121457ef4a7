//! `POST /login`.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Row;

use crate::db_tests;
use crate::helpers::*;

db_tests!(
    login_answers_a_token_and_the_openid,
    a_reused_code_is_refused_with_wechats_errcode,
    an_invalid_code_is_refused_with_wechats_errcode,
    a_new_login_retires_the_previous_token_at_once,
    unionid_is_kept_when_wechat_omits_it,
    the_store_holds_only_a_hash_of_the_token,
);

async fn login_answers_a_token_and_the_openid(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("alice").await;
    assert!(token.len() >= 22, "token carries at least 128 bits");
    let (status, echo) = app.get_app("/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("alice"));
    app.stop().await;
}

async fn a_reused_code_is_refused_with_wechats_errcode(db: Db) {
    let app = TestApp::spawn(db).await;
    let code = app.code_for(APPID, "bob", None).await;
    let login = |code: String| {
        app.call(
            Method::POST,
            "/login",
            &[("User-App", APPID)],
            Some(json!({ "code": code })),
        )
    };
    let (status, _) = login(code.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = login(code).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["status"], 3);
    assert_eq!(body["errcode"], 40163);
    assert!(
        body["message"].as_str().unwrap().contains("40163"),
        "{body}"
    );
    app.stop().await;
}

async fn an_invalid_code_is_refused_with_wechats_errcode(db: Db) {
    let app = TestApp::spawn(db).await;
    let before = count_users(&app).await;
    let (status, body) = app
        .call(
            Method::POST,
            "/login",
            &[("User-App", APPID)],
            Some(json!({ "code": "never-issued" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errcode"], 40029);
    assert_eq!(
        count_users(&app).await,
        before,
        "a refused login writes nothing"
    );
    app.stop().await;
}

async fn a_new_login_retires_the_previous_token_at_once(db: Db) {
    let app = TestApp::spawn(db).await;
    let first = app.login("carol").await;
    let (status, _) = app.get_app("/x", Some(&first)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first token works and is now cached"
    );
    let second = app.login("carol").await;
    assert_ne!(first, second);
    let (status, body) = app.get_app("/x", Some(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 10001);
    let (status, _) = app.get_app("/x", Some(&second)).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn unionid_is_kept_when_wechat_omits_it(db: Db) {
    let app = TestApp::spawn(db).await;
    app.login_as(APPID, "dave", Some("union-dave")).await;
    let token = app.login_as(APPID, "dave", None).await;
    let (_, echo) = app.get_app("/x", Some(&token)).await;
    assert_eq!(
        received(&echo, "user-unionid").as_deref(),
        Some("union-dave")
    );
    app.stop().await;
}

async fn the_store_holds_only_a_hash_of_the_token(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("erin").await;
    let mut conn = app.database.connect().await;
    let row = sqlx::query("SELECT token_hash FROM users WHERE openid = 'erin'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let stored: String = row.try_get("token_hash").unwrap();
    assert_ne!(stored, token);
    assert!(!stored.contains(&token));
    assert_eq!(stored.len(), 64, "hex SHA-256");
    drop(conn);
    app.stop().await;
}

pub async fn count_users(app: &TestApp) -> i64 {
    let mut conn = app.database.connect().await;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.try_get::<i64, _>("n").unwrap()
}
