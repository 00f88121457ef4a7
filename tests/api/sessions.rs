//! Token authentication: the cache, sliding expiry, and refusals that cost no query.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use sqlx::Row;

use crate::db_tests;
use crate::helpers::*;

db_tests!(
    a_cached_token_costs_no_store_query,
    sliding_expiry_writes_at_most_once_per_session_per_interval,
    a_session_survives_a_restart_and_is_then_served_from_the_cache,
    retired_tokens_cost_a_bounded_number_of_queries,
);

async fn a_cached_token_costs_no_store_query(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("ivan").await;
    let before = app.queries();
    for _ in 0..25 {
        let (status, _) = app.get_app("/x", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        app.queries(),
        before,
        "cached sessions are served without the store"
    );
    app.stop().await;
}

async fn sliding_expiry_writes_at_most_once_per_session_per_interval(db: Db) {
    let tweaks = Tweaks {
        session: Some("  ttl_seconds: 3600\n  extend_interval_seconds: 2".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(db, tweaks).await;
    let token = app.login("judy").await;
    let expires_at_login = stored_expiry(&app, "judy").await;
    // Expiry is kept in whole seconds: waiting just over two seconds makes the first request
    // due for a write, and twenty quick requests cannot reach the next two-second boundary.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = app.queries();
    for _ in 0..20 {
        let (status, _) = app.get_app("/x", Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
    }
    // The write happens in the background; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.queries() - before,
        1,
        "one expiry write for twenty requests"
    );
    assert!(
        stored_expiry(&app, "judy").await > expires_at_login,
        "the stored expiry slid forward"
    );
    app.stop().await;
}

async fn a_session_survives_a_restart_and_is_then_served_from_the_cache(db: Db) {
    let mut app = TestApp::spawn(db).await;
    let token = app.login("kim").await;
    app.gateway.take().unwrap().stop().await;
    let gateway = start_gateway(&app.database.url, &app.backends, &Tweaks::default()).await;
    app.addr = gateway.addr;
    app.gateway = Some(gateway);
    let before = app.queries();
    let (status, echo) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("kim"));
    assert_eq!(app.queries() - before, 1, "a cache miss is one query");
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.queries() - before, 1, "and then cached");
    app.stop().await;
}

async fn retired_tokens_cost_a_bounded_number_of_queries(db: Db) {
    let app = TestApp::spawn(db).await;
    let retired = app.login("liam").await;
    app.login("liam").await;
    let before = app.queries();
    for _ in 0..20 {
        let (status, body) = app.get_app("/x", Some(&retired)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["status"], 10001);
    }
    assert!(
        app.queries() - before <= 1,
        "unknown tokens are remembered: {}",
        app.queries() - before
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused_without_any_store_query() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let real = app.login("mia").await;
    let before = app.queries();
    let mut forged = real.clone().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for token in [forged.as_str(), "guess", &"A".repeat(43), ""] {
        let (status, body) = app.get_app("/x", Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(body["status"], 10001);
    }
    assert_eq!(app.queries(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_valid_only_for_the_app_it_was_issued_for() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("noah").await;
    let (status, body) = app
        .call(
            Method::GET,
            "/app/x",
            &[("User-App", OTHER_APPID), ("User-Token", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let tweaks = Tweaks {
        session: Some("  ttl_seconds: 1".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let token = app.login("olga").await;
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, body) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], 10001);
    app.stop().await;
}

async fn stored_expiry(app: &TestApp, openid: &str) -> i64 {
    let mut conn = app.database.connect().await;
    let row = sqlx::query(&format!(
        "SELECT expires_at FROM users WHERE openid = '{openid}'"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    row.try_get("expires_at").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_session_is_read_again_from_the_store_after_cache_ttl() {
    let tweaks = Tweaks {
        session: Some("  ttl_seconds: 3600\n  cache_ttl_seconds: 1".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let token = app.login("pia").await;
    let before = app.queries();
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.queries(), before, "fresh from the login: cached");

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, echo) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("pia"));
    assert_eq!(app.queries() - before, 1, "past cache_ttl: read again");
    let (status, _) = app.get_app("/x", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.queries() - before, 1, "and cached again");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_live_sessions_than_the_cache_holds_are_all_served() {
    let tweaks = Tweaks {
        session: Some("  ttl_seconds: 3600\n  cache_capacity: 4".into()),
        ..Tweaks::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, tweaks).await;
    let mut tokens = Vec::new();
    for n in 0..12 {
        tokens.push((format!("quinn{n}"), app.login(&format!("quinn{n}")).await));
    }
    let before = app.queries();
    for _ in 0..2 {
        for (openid, token) in &tokens {
            let (status, echo) = app.get_app("/x", Some(token)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                received(&echo, "user-openid").as_deref(),
                Some(openid.as_str())
            );
        }
    }
    assert!(
        app.gateway().state.sessions.cached() <= 4,
        "the cache stays within its capacity"
    );
    assert!(
        app.queries() > before,
        "evicted sessions come from the store"
    );
    app.stop().await;
}
