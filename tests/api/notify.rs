//! `POST /notify`, `GET|DELETE /notify/{id}` and the dispatcher that sends notifications
//! through the simulator's `cgi-bin/message/subscribe/send`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mpapi::sim::Fault;
use mpapi::store::ClaimStrategy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::db_tests;
use crate::helpers::*;

const SEND_PATH: &str = "/cgi-bin/message/subscribe/send";

db_tests!(
    a_subscribe_message_is_sent_once_to_the_caller,
    the_original_template_message_request_is_sent_as_a_subscribe_message,
    a_notification_waits_for_its_active_at,
    a_cancelled_notification_is_never_sent,
    another_users_notification_is_not_found,
    invalid_requests_are_refused_and_nothing_is_stored,
    a_transient_failure_is_retried_then_sent,
    a_permanent_refusal_fails_at_once_with_wechats_errcode,
    a_notification_fails_once_max_attempts_are_spent,
    two_gateways_on_one_database_send_each_notification_exactly_once,
    a_send_cut_off_by_a_dead_gateway_is_sent_once_by_another,
    a_stopped_gateway_finishes_its_sends_in_flight,
);

/// Fast polling and immediate retries, so that tests wait milliseconds, not seconds; `extra`
/// lines (`  key: value\n`) add to or replace these.
fn fast(extra: &str) -> Tweaks {
    let mut lines: Vec<String> = extra.lines().map(str::to_string).collect();
    for default in [
        "  poll_interval_ms: 50",
        "  retry_backoff_seconds: 0",
        "  lease_seconds: 5",
    ] {
        let key = default.split(':').next().unwrap();
        if !lines
            .iter()
            .any(|line| line.starts_with(&format!("{key}:")))
        {
            lines.push(default.to_string());
        }
    }
    Tweaks {
        notify: Some(lines.join("\n")),
        ..Tweaks::default()
    }
}

/// `POST /notify` at `addr`; the new id.
async fn notify_at(addr: SocketAddr, token: &str, body: Value) -> i64 {
    let (status, answer) = call_at(addr, Method::POST, "/notify", token, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], 0, "{answer}");
    answer["data"]["id"].as_i64().unwrap()
}

async fn notify(app: &TestApp, token: &str, body: Value) -> i64 {
    notify_at(app.addr, token, body).await
}

/// `GET /notify/{id}` at `addr`: the notification's view.
async fn show_at(addr: SocketAddr, token: &str, id: i64) -> Value {
    let (status, answer) = call_at(addr, Method::GET, &format!("/notify/{id}"), token, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["data"].clone()
}

/// Poll `GET /notify/{id}` until its state is `state` (10 s at most).
async fn wait_for_state_at(addr: SocketAddr, token: &str, id: i64, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = show_at(addr, token, id).await;
        if view["state"] == state {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "notification {id} never became {state}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_state(app: &TestApp, token: &str, id: i64, state: &str) -> Value {
    wait_for_state_at(app.addr, token, id, state).await
}

/// A subscribe message in the current request shape.
fn subscribe_body(value: &str) -> Value {
    json!({
        "template_id": "tmpl-order-shipped",
        "data": { "thing1": { "value": value } },
    })
}

/// `body` with `active_at` set.
fn due_at(active_at: impl Into<String>, mut body: Value) -> Value {
    body["active_at"] = json!(active_at.into());
    body
}

/// What the simulator accepted for `openid`.
fn sends_to(app: &TestApp, openid: &str) -> Vec<Value> {
    app.backends
        .sim
        .subscribe_sends()
        .into_iter()
        .filter(|send| send["touser"] == openid)
        .collect()
}

/// `yyyy-MM-dd HH:mm:ss` in Asia/Shanghai (the apps' default time zone), `seconds` from now.
fn shanghai_in(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

async fn count_notifications(app: &TestApp) -> i64 {
    let mut conn = app.database.connect().await;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM notifications")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.try_get::<i64, _>("n").unwrap()
}

async fn a_subscribe_message_is_sent_once_to_the_caller(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("alice").await;

    let id = notify(
        &app,
        &token,
        json!({
            "template_id": "tmpl-order-shipped",
            "page": "pages/order/index?id=7",
            "data": { "thing1": { "value": "Parcel" }, "time2": { "value": "2024-05-01 10:00" } },
            "miniprogram_state": "trial",
            "lang": "en_US",
            "touser": "someone-else",
        }),
    )
    .await;
    let view = wait_for_state(&app, &token, id, "sent").await;

    assert_eq!(view["attempts"], 1);
    assert!(view["sent_at"].is_string(), "{view}");
    assert_eq!(view["last_errcode"], Value::Null);
    // A few more polls: still one send.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sends = app.backends.sim.subscribe_sends();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(
        sends[0],
        json!({
            "touser": "alice",
            "template_id": "tmpl-order-shipped",
            "page": "pages/order/index?id=7",
            "data": { "thing1": { "value": "Parcel" }, "time2": { "value": "2024-05-01 10:00" } },
            "miniprogram_state": "trial",
            "lang": "en_US",
        }),
        "sent to the caller's own openid, whatever the body says"
    );
    app.stop().await;
}

async fn the_original_template_message_request_is_sent_as_a_subscribe_message(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("bob").await;

    let id = notify(
        &app,
        &token,
        json!({
            "description": "order shipped",
            "template_id": "tmpl-legacy",
            "formid": "1570000000000",
            "active_at": shanghai_in(-60),
            "page": "pages/index/index",
            "data": "{\"keyword1\":{\"value\":\"339208499\",\"color\":\"#173177\"},\"keyword2\":{\"value\":\"2024-05-01\"}}",
            "emphasis_keyword": "keyword1.DATA",
        }),
    )
    .await;
    let view = wait_for_state(&app, &token, id, "sent").await;

    assert_eq!(view["description"], "order shipped");
    let sends = sends_to(&app, "bob");
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(
        sends[0],
        json!({
            "touser": "bob",
            "template_id": "tmpl-legacy",
            "page": "pages/index/index",
            "data": { "keyword1": { "value": "339208499" }, "keyword2": { "value": "2024-05-01" } },
        }),
        "formid, emphasis_keyword and color are template-message fields WeChat no longer takes"
    );
    app.stop().await;
}

async fn a_notification_waits_for_its_active_at(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("carol").await;
    let active_at = shanghai_in(2);

    let id = notify(
        &app,
        &token,
        due_at(active_at.clone(), subscribe_body("soon")),
    )
    .await;

    let view = show_at(app.addr, &token, id).await;
    assert_eq!(view["state"], "pending", "{view}");
    assert_eq!(view["active_at"], active_at.as_str());
    assert_eq!(view["next_attempt_at"], active_at.as_str());
    assert_eq!(view["attempts"], 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sends_to(&app, "carol").is_empty(), "not before active_at");
    let view = wait_for_state(&app, &token, id, "sent").await;
    assert!(
        view["sent_at"].as_str().unwrap() >= active_at.as_str(),
        "{view}"
    );
    assert_eq!(sends_to(&app, "carol").len(), 1);
    app.stop().await;
}

async fn a_cancelled_notification_is_never_sent(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("dave").await;
    let later = notify(
        &app,
        &token,
        due_at(shanghai_in(3600), subscribe_body("cancelled")),
    )
    .await;

    let (status, answer) = call_at(
        app.addr,
        Method::DELETE,
        &format!("/notify/{later}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["state"], "cancelled");
    // Make it due, as if its hour had come: a cancelled row is still never claimed.
    let mut conn = app.database.connect().await;
    sqlx::query("UPDATE notifications SET next_attempt_at = 0, active_at = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let now = notify(&app, &token, subscribe_body("sent")).await;
    wait_for_state(&app, &token, now, "sent").await;

    assert_eq!(show_at(app.addr, &token, later).await["state"], "cancelled");
    let sends = sends_to(&app, "dave");
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["data"]["thing1"]["value"], "sent");
    // A sent notification can no longer be cancelled.
    let (status, answer) = call_at(
        app.addr,
        Method::DELETE,
        &format!("/notify/{now}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(show_at(app.addr, &token, now).await["state"], "sent");
    app.stop().await;
}

async fn another_users_notification_is_not_found(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let erin = app.login("erin").await;
    let frank = app.login("frank").await;
    let id = notify(
        &app,
        &erin,
        due_at(shanghai_in(3600), subscribe_body("private")),
    )
    .await;

    for method in [Method::GET, Method::DELETE] {
        let (status, answer) = call_at(
            app.addr,
            method.clone(),
            &format!("/notify/{id}"),
            &frank,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {answer}");
        let (missing, _) = call_at(app.addr, method.clone(), "/notify/999999", &frank, None).await;
        assert_eq!(
            missing, status,
            "{method}: same answer as an id that does not exist"
        );
    }
    assert_eq!(show_at(app.addr, &erin, id).await["state"], "pending");
    let (status, _) = call_at(app.addr, Method::GET, &format!("/notify/{id}"), "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

async fn invalid_requests_are_refused_and_nothing_is_stored(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("grace").await;
    let data = json!({ "thing1": { "value": "x" } });
    let bad = [
        json!({ "data": data }),
        json!({ "template_id": "", "data": data }),
        json!({ "template_id": "tmpl-1" }),
        json!({ "template_id": "tmpl-1", "data": "not json" }),
        json!({ "template_id": "tmpl-1", "data": { "thing1": "x" } }),
        json!({ "template_id": "tmpl-1", "data": ["x"] }),
        json!({ "template_id": "tmpl-1", "data": data, "page": "/pages/index/index" }),
        json!({ "template_id": "tmpl-1", "data": data, "active_at": "2024-05-01T08:00:00" }),
        json!({ "template_id": "tmpl-1", "data": data, "active_at": "tomorrow" }),
        json!({ "template_id": "tmpl-1", "data": data, "miniprogram_state": "production" }),
    ];

    for body in bad {
        let (status, answer) = call_at(
            app.addr,
            Method::POST,
            "/notify",
            &token,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["status"], 3, "{answer}");
    }
    let (status, _) = app
        .call(
            Method::POST,
            "/notify",
            &[("User-App", APPID), ("User-Token", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an empty body");
    let (status, _) = call_at(
        app.addr,
        Method::POST,
        "/notify",
        "forged",
        Some(subscribe_body("x")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call_at(app.addr, Method::GET, "/notify", &token, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = call_at(app.addr, Method::PUT, "/notify/1", &token, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = call_at(app.addr, Method::GET, "/notify/abc", &token, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(count_notifications(&app).await, 0);
    app.stop().await;
}

async fn a_transient_failure_is_retried_then_sent(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("heidi").await;
    app.backends.sim.inject(SEND_PATH, Fault::Errcode(-1), 1);

    let id = notify(&app, &token, subscribe_body("retried")).await;
    let view = wait_for_state(&app, &token, id, "sent").await;

    assert_eq!(view["attempts"], 2, "{view}");
    assert_eq!(
        view["last_errcode"], -1,
        "the failed attempt is kept: {view}"
    );
    assert_eq!(sends_to(&app, "heidi").len(), 1);
    app.stop().await;
}

async fn a_permanent_refusal_fails_at_once_with_wechats_errcode(db: Db) {
    let app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("ivan").await;
    app.backends.sim.inject(SEND_PATH, Fault::Errcode(43101), 1);

    let refused = notify(&app, &token, subscribe_body("refused")).await;
    let view = wait_for_state(&app, &token, refused, "failed").await;
    assert_eq!(view["attempts"], 1, "{view}");
    assert_eq!(view["last_errcode"], 43101);
    // A template the app does not have: WeChat's own 40037.
    let unknown = notify(
        &app,
        &token,
        json!({ "template_id": "no-such-template", "data": { "thing1": { "value": "x" } } }),
    )
    .await;
    let view = wait_for_state(&app, &token, unknown, "failed").await;
    assert_eq!(view["attempts"], 1, "{view}");
    assert_eq!(view["last_errcode"], 40037);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sends_to(&app, "ivan").is_empty());
    assert_eq!(
        show_at(app.addr, &token, refused).await["attempts"],
        1,
        "never retried"
    );
    app.stop().await;
}

async fn a_notification_fails_once_max_attempts_are_spent(db: Db) {
    let app = TestApp::spawn_with(db, fast("  max_attempts: 3\n")).await;
    let token = app.login("judy").await;
    let sim = &app.backends.sim;
    sim.inject(SEND_PATH, Fault::Errcode(-1), 1);
    sim.inject(SEND_PATH, Fault::Status(502), 1);
    sim.inject(SEND_PATH, Fault::Errcode(45011), 1);

    let id = notify(&app, &token, subscribe_body("unlucky")).await;
    let view = wait_for_state(&app, &token, id, "failed").await;

    assert_eq!(view["attempts"], 3, "{view}");
    assert_eq!(
        view["last_errcode"], 45011,
        "the last attempt's errcode: {view}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sends_to(&app, "judy").is_empty());
    assert_eq!(show_at(app.addr, &token, id).await["attempts"], 3);
    app.stop().await;
}

async fn two_gateways_on_one_database_send_each_notification_exactly_once(db: Db) {
    let tweaks = fast("  batch_size: 4\n  concurrency: 3\n");
    let app = TestApp::spawn_with(db, tweaks.clone()).await;
    let second = start_gateway(&app.database.url, &app.backends, &tweaks).await;
    let token = app.login("kim").await;
    let expected = match db {
        Db::Sqlite => ClaimStrategy::ConditionalUpdate,
        Db::Postgres | Db::MySql => ClaimStrategy::SkipLocked,
    };
    let strategy = app.gateway().state.store.claim_strategy().await.unwrap();
    assert_eq!(strategy, expected, "SKIP LOCKED where the server has it");
    // Slow enough that sends of both nodes overlap.
    app.backends
        .sim
        .inject(SEND_PATH, Fault::Slow(Duration::from_millis(30)), 30);
    // All due at the same second, so that both dispatchers race for them.
    let active_at = shanghai_in(2);

    let mut ids = Vec::new();
    for n in 0..30 {
        let addr = if n % 2 == 0 { app.addr } else { second.addr };
        let body = json!({
            "template_id": "tmpl-race",
            "active_at": active_at,
            "data": { "number1": { "value": n.to_string() } },
        });
        ids.push(notify_at(addr, &token, body).await);
    }
    for id in &ids {
        wait_for_state(&app, &token, *id, "sent").await;
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut times_sent: HashMap<String, usize> = HashMap::new();
    for send in sends_to(&app, "kim") {
        let value = send["data"]["number1"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        *times_sent.entry(value).or_default() += 1;
    }
    assert_eq!(times_sent.len(), 30, "{times_sent:?}");
    assert!(times_sent.values().all(|n| *n == 1), "{times_sent:?}");
    for id in &ids {
        assert_eq!(show_at(app.addr, &token, *id).await["attempts"], 1);
    }
    second.stop().await;
    app.stop().await;
}

async fn a_send_cut_off_by_a_dead_gateway_is_sent_once_by_another(db: Db) {
    // A 1 s lease: the dead node's claim expires quickly (and its sends are cut at 800 ms).
    let tweaks = fast("  lease_seconds: 1\n");
    let mut app = TestApp::spawn_with(db, tweaks.clone()).await;
    let token = app.login("leo").await;
    // A first notification, so that the node holds an access token and its next send goes
    // straight to WeChat once claimed.
    let warm_up = notify(&app, &token, subscribe_body("warm-up")).await;
    wait_for_state(&app, &token, warm_up, "sent").await;
    let held = Duration::from_secs(3);
    app.backends.sim.inject(SEND_PATH, Fault::Slow(held), 1);
    let id = notify(&app, &token, subscribe_body("survivor")).await;
    wait_for_state(&app, &token, id, "sending").await;
    // Well inside the 800 ms the node gives its send: WeChat is holding it now.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The node dies while WeChat holds its send: the connection drops, the send is not made.
    let killed_at = Instant::now();
    app.gateway.take().unwrap().kill().await;
    let other = start_gateway(&app.database.url, &app.backends, &tweaks).await;
    let view = wait_for_state_at(other.addr, &token, id, "sent").await;

    assert_eq!(view["attempts"], 2, "the cut-off attempt counts: {view}");
    // Past the moment the held send would have been answered: it was never made.
    tokio::time::sleep(
        (killed_at + held + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    )
    .await;
    let survivors: Vec<Value> = sends_to(&app, "leo")
        .into_iter()
        .filter(|send| send["data"]["thing1"]["value"] == "survivor")
        .collect();
    assert_eq!(survivors.len(), 1, "{survivors:?}");
    assert_eq!(show_at(other.addr, &token, id).await["state"], "sent");
    other.stop().await;
    app.stop().await;
}

async fn a_stopped_gateway_finishes_its_sends_in_flight(db: Db) {
    let mut app = TestApp::spawn_with(db, fast("")).await;
    let token = app.login("mallory").await;
    app.backends
        .sim
        .inject(SEND_PATH, Fault::Slow(Duration::from_millis(500)), 1);
    let id = notify(&app, &token, subscribe_body("in flight")).await;
    wait_for_state(&app, &token, id, "sending").await;

    app.gateway.take().unwrap().stop().await;

    let mut conn = app.database.connect().await;
    let row = sqlx::query(&format!(
        "SELECT state, attempts FROM notifications WHERE id = {id}"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.try_get::<String, _>("state").unwrap(), "sent");
    assert_eq!(row.try_get::<i64, _>("attempts").unwrap(), 1);
    assert_eq!(sends_to(&app, "mallory").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn wechat_has_switched_template_messages_off() {
    let backends = Backends::start().await;
    let client = client();
    let base = format!("http://{}", backends.sim_addr);
    let token: Value = client
        .post(format!("{base}/cgi-bin/stable_token"))
        .json(&json!({ "grant_type": "client_credential", "appid": APPID, "secret": SECRET }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();

    let answer: Value = client
        .post(format!(
            "{base}/cgi-bin/message/wxopen/template/send?access_token={token}"
        ))
        .json(&json!({ "touser": "x", "template_id": "tmpl-1", "form_id": "f" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(answer["errcode"], 45103);
}
