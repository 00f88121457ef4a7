//! Two nodes on one database: a login that retires a token, a logout and a profile or mobile
//! change made through one node reach the other's session cache within a second — PostgreSQL
//! by NOTIFY, MySQL by the polled changes table — with the cache's own expiry set far away, so
//! only the sync can explain it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mpapi::server::RunningGateway;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row as _;

use crate::helpers::*;

/// Each rule on PostgreSQL and MySQL; SQLite serves one node.
macro_rules! cluster_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::helpers::Db;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { if Db::Postgres.available() { super::$name(Db::Postgres).await } }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { if Db::MySql.available() { super::$name(Db::MySql).await } }
        }
    )*};
}

cluster_tests!(
    a_relogin_on_one_node_retires_the_token_on_the_other_within_a_second,
    a_logout_on_one_node_is_seen_by_the_other_within_a_second,
    a_new_mobile_or_profile_on_one_node_reaches_the_other_within_a_second,
);

/// The deadline every change must meet on the other node.
const WITHIN: Duration = Duration::from_secs(1);

fn tweaks() -> Tweaks {
    Tweaks {
        // An hour: a cached copy left alone would outlive every test.
        session: Some("  ttl_seconds: 604800\n  cache_ttl_seconds: 3600".into()),
        ..Tweaks::default()
    }
}

/// Node A (a whole test app) and node B on the same database, simulator and upstream.
async fn cluster(db: Db) -> (TestApp, RunningGateway) {
    let a = TestApp::spawn_with(db, tweaks()).await;
    let b = start_gateway(&a.database.url, &a.backends, &tweaks()).await;
    (a, b)
}

/// Poll `node` with `token` until `done` holds of its answer; how long that took.
async fn seen_within(
    node: SocketAddr,
    token: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, echo) = call_at(node, Method::GET, "/app/me", token, None).await;
        if done(status, &echo) {
            return started.elapsed();
        }
        if started.elapsed() >= WITHIN {
            let sync_lines: Vec<String> = logs()
                .lines()
                .filter(|line| line.contains("session changes"))
                .map(str::to_string)
                .collect();
            panic!("not seen within {WITHIN:?}: {status} {echo}\n{sync_lines:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status `node` answers a proxied request of `token` with.
async fn status_on(node: SocketAddr, token: &str) -> StatusCode {
    call_at(node, Method::GET, "/app/me", token, None).await.0
}

/// `node` refuses `retired` within a second and serves `live`.
async fn retired_on(node: SocketAddr, retired: &str, live: &str) {
    seen_within(node, retired, |status, _| {
        status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(status_on(node, live).await, StatusCode::OK);
}

async fn a_relogin_on_one_node_retires_the_token_on_the_other_within_a_second(db: Db) {
    let (a, b) = cluster(db).await;
    let first = a.login("alice").await;
    assert_eq!(status_on(b.addr, &first).await, StatusCode::OK);
    assert_eq!(status_on(b.addr, &first).await, StatusCode::OK);

    let second = a.login("alice").await;
    retired_on(b.addr, &first, &second).await;
    b.stop().await;
    a.stop().await;
}

async fn a_logout_on_one_node_is_seen_by_the_other_within_a_second(db: Db) {
    let (a, b) = cluster(db).await;
    let token = a.login("bob").await;
    assert_eq!(a.get_app("/me", Some(&token)).await.0, StatusCode::OK);

    let (status, body) = call_at(b.addr, Method::POST, "/logout", &token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    seen_within(a.addr, &token, |status, _| {
        status == StatusCode::UNAUTHORIZED
    })
    .await;
    b.stop().await;
    a.stop().await;
}

async fn a_new_mobile_or_profile_on_one_node_reaches_the_other_within_a_second(db: Db) {
    let (a, b) = cluster(db).await;
    let token = a.login("carol").await;
    let (_, echo) = call_at(b.addr, Method::GET, "/app/me", &token, None).await;
    assert_eq!(
        received(&echo, "user-mobile").as_deref(),
        Some(""),
        "cached on B"
    );

    let code = a
        .backends
        .sim
        .mint_phone_code(APPID, "carol", "13800138000");
    let (status, body) = call_at(
        a.addr,
        Method::POST,
        "/mobile",
        &token,
        Some(json!({ "code": code })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    seen_within(b.addr, &token, |status, echo| {
        status == StatusCode::OK
            && received(echo, "user-mobile").is_some_and(|mobile| mobile.contains("13800138000"))
    })
    .await;

    let profile = a
        .backends
        .sim
        .user_profile(APPID, "carol", "卡罗尔", "https://example.com/a.png")
        .unwrap();
    let (status, body) = call_at(
        a.addr,
        Method::POST,
        "/credentials",
        &token,
        Some(crate::credentials::body_of(&profile)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    seen_within(b.addr, &token, |status, echo| {
        status == StatusCode::OK
            && received(echo, "user-extra").is_some_and(|extra| extra.contains("example.com"))
    })
    .await;
    b.stop().await;
    a.stop().await;
}

/// PostgreSQL: the listening connection is cut (as a database restart would); the node listens
/// again, and forgets what it cached across the gap, so a change made meanwhile is not missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_listening_connection_is_cut_changes_are_still_seen() {
    if !Db::Postgres.available() {
        return;
    }
    let (a, b) = cluster(Db::Postgres).await;
    let first = a.login("dave").await;
    assert_eq!(status_on(b.addr, &first).await, StatusCode::OK);

    // The database cuts every connection and refuses new ones for a moment: B's listener fails
    // to come back and waits before trying again. The change is made as soon as the database
    // takes connections again, before B listens again: its notification reaches nobody.
    a.database.set_reachable(false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.database.set_reachable(true).await;
    let (status, body) = a.try_login(APPID, "dave").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = body["data"]["token"].as_str().unwrap().to_string();

    retired_on(b.addr, &first, &second).await;
    b.stop().await;
    a.stop().await;
}

/// MySQL: a node that starts while a change is still committing, with a later change already
/// committed, reads its cursor's start past the first one's id, and still hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_still_committing_when_a_node_starts_is_seen_by_it() {
    if !Db::MySql.available() {
        return;
    }
    let a = TestApp::spawn_with(Db::MySql, tweaks()).await;
    let erin = a.login("erin").await;
    let frank = a.login("frank").await;
    let slow = log_out_and_stay_open(&a, "erin").await;
    let (status, body) = call_at(a.addr, Method::POST, "/logout", &frank, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // B starts now: the highest committed id is Frank's logout, above Erin's.
    let b = start_gateway(&a.database.url, &a.backends, &tweaks()).await;
    refused_once_committed(b.addr, &erin, slow).await;
    b.stop().await;
    a.stop().await;
}

/// `node` still serves `token`, whose logout `slow` holds uncommitted, and refuses it within
/// [`WITHIN`] once `slow` commits.
async fn refused_once_committed(
    node: SocketAddr,
    token: &str,
    slow: sqlx::Transaction<'static, sqlx::Any>,
) {
    assert_eq!(
        status_on(node, token).await,
        StatusCode::OK,
        "the logout is not committed yet"
    );
    slow.commit().await.unwrap();
    seen_within(node, token, |status, _| status == StatusCode::UNAUTHORIZED).await;
}

/// Log `openid` out in a transaction left open after its change row took an id, as a slow
/// node's logout would be; commit it to finish the logout.
async fn log_out_and_stay_open(
    app: &TestApp,
    openid: &str,
) -> sqlx::Transaction<'static, sqlx::Any> {
    let pool = sqlx::AnyPool::connect(&app.database.url).await.unwrap();
    let mut slow = pool.begin().await.unwrap();
    let row = sqlx::query("SELECT id, token_hash FROM users WHERE openid = ?")
        .bind(openid)
        .fetch_one(&mut *slow)
        .await
        .unwrap();
    let (id, hash): (i64, String) = (row.get(0), row.get(1));
    sqlx::query("UPDATE users SET token_hash = NULL WHERE id = ?")
        .bind(id)
        .execute(&mut *slow)
        .await
        .unwrap();
    sqlx::query("INSERT INTO session_changes (origin, token_hash, created_at) VALUES (?, ?, ?)")
        .bind("another-node")
        .bind(&hash)
        .bind(mpapi::types::unix_now())
        .execute(&mut *slow)
        .await
        .unwrap();
    slow
}

/// MySQL: a change row takes its id when inserted and becomes visible when it commits, so a
/// node can read a later change before an earlier one. Here a logout's change commits after
/// another's that was inserted later: the node that already read past it still hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_commits_after_a_later_one_is_still_seen() {
    if !Db::MySql.available() {
        return;
    }
    let (a, b) = cluster(Db::MySql).await;
    let erin = a.login("erin").await;
    let frank = a.login("frank").await;
    assert_eq!(status_on(b.addr, &erin).await, StatusCode::OK);
    assert_eq!(status_on(b.addr, &frank).await, StatusCode::OK);

    // Erin is logged out by a transaction that takes its change's id and stays open...
    let slow = log_out_and_stay_open(&a, "erin").await;

    // ... while Frank's logout, with the next id, commits and is read by B.
    let (status, body) = call_at(a.addr, Method::POST, "/logout", &frank, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    seen_within(b.addr, &frank, |status, _| {
        status == StatusCode::UNAUTHORIZED
    })
    .await;
    refused_once_committed(b.addr, &erin, slow).await;
    b.stop().await;
    a.stop().await;
}
