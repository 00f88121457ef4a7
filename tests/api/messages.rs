//! `/message_receive` (and `/message_recieve`): WeChat's URL check and pushes, forwarded to a
//! help desk in the background, once.

use std::time::{Duration, Instant};

use mpapi::sim::{PushFormat, PushMode, PushParts, PushRequest};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use sqlx::Row;

use crate::db_tests;
use crate::helpdesk::HelpDesk;
use crate::helpers::*;

pub const TOKEN: &str = "push-token-1";
/// WeChat's published sample EncodingAESKey.
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const FORWARD_TOKEN: &str = "forward-secret-1";
pub const REPLY_TOKEN: &str = "reply-secret-1";
const DELIVERY: Duration = Duration::from_secs(10);

/// Which push mode the app is configured for: plaintext apps have no `aes_key`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    Plaintext,
    Aes,
}

/// A gateway whose first app forwards messages to `desk`.
pub async fn spawn(db: Db, desk: &HelpDesk, keys: Keys) -> TestApp {
    let aes = match keys {
        Keys::Aes => format!("      aes_key: \"{AES_KEY}\"\n"),
        Keys::Plaintext => String::new(),
    };
    let extra = format!(
        "    messages:\n      token: \"{TOKEN}\"\n{aes}      forward_url: \"{url}\"\n      \
         forward_token: \"{FORWARD_TOKEN}\"\n      reply_token: \"{REPLY_TOKEN}\"\n",
        url = desk.inbox_url()
    );
    let tweaks = Tweaks {
        app_extra: Some(extra),
        ..Tweaks::default()
    };
    TestApp::spawn_with(db, tweaks).await
}

pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

pub fn text_message(openid: &str, msg_id: u64, content: &str) -> Map<String, Value> {
    fields(json!({
        "ToUserName": "gh_0123456789ab",
        "FromUserName": openid,
        "CreateTime": 1_700_000_000u64 + msg_id,
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }))
}

/// The push WeChat would send to `appid`'s app.
pub fn wechat_push(
    app: &TestApp,
    appid: &str,
    mode: PushMode,
    format: PushFormat,
    message: &Map<String, Value>,
) -> PushRequest {
    app.backends
        .sim
        .push_request(appid, TOKEN, AES_KEY, mode, format, message)
        .unwrap()
}

/// Deliver a push to `path` of the first app, as WeChat does; status, body and answer time.
pub async fn deliver(
    app: &TestApp,
    path: &str,
    push: &PushRequest,
) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let response = app
        .client
        .post(app.url(&format!("{path}?appid={APPID}&{}", push.query)))
        .header("content-type", push.content_type)
        .body(push.body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    (status, body, started.elapsed())
}

async fn stored_messages(app: &TestApp) -> i64 {
    let mut conn = app.database.connect().await;
    sqlx::query("SELECT COUNT(*) AS n FROM messages")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get::<i64, _>("n")
}

db_tests!(
    a_text_push_reaches_the_help_desk_in_every_mode_and_format,
    the_help_desk_gets_the_stored_profile_of_a_known_user,
    image_and_miniprogrampage_pushes_carry_their_content_as_json,
    an_event_reaches_the_help_desk_with_its_session_from,
    encrypted_pushes_that_fail_verification_are_refused_and_never_forwarded,
    plaintext_pushes_with_a_bad_signature_are_refused_and_never_forwarded,
    a_replayed_push_is_forwarded_once,
    a_slow_help_desk_still_gets_wechat_its_answer_at_once,
    a_failing_help_desk_is_retried_until_it_succeeds,
    a_message_recorded_before_a_restart_is_delivered_after_it,
    a_correctly_signed_push_outside_the_replay_window_is_refused_before_decryption,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_check_answers_echostr_only_for_a_valid_signature() {
    let desk = HelpDesk::start().await;
    let app = spawn(Db::Sqlite, &desk, Keys::Aes).await;
    let query = app.backends.sim.url_check_query(TOKEN, "echo-4242");
    for path in ["/message_receive", "/message_recieve"] {
        let response = app
            .client
            .get(app.url(&format!("{path}?appid={APPID}&{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(response.text().await.unwrap(), "echo-4242");
    }
    let forged = app
        .backends
        .sim
        .url_check_query("not-the-token", "echo-4242");
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/message_receive?appid={APPID}&{forged}"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["status"], 3, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_messages_refuses_pushes() {
    let desk = HelpDesk::start().await;
    let app = spawn(Db::Sqlite, &desk, Keys::Plaintext).await;
    let query = app.backends.sim.url_check_query(TOKEN, "x");
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/message_receive?appid={OTHER_APPID}&{query}"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    app.stop().await;
}

async fn a_text_push_reaches_the_help_desk_in_every_mode_and_format(db: Db) {
    // Arrange: one app in plaintext mode, one with an EncodingAESKey.
    let desk = HelpDesk::start().await;
    let plain = spawn(db, &desk, Keys::Plaintext).await;
    let cases = [
        (PushMode::Plaintext, PushFormat::Json),
        (PushMode::Plaintext, PushFormat::Xml),
        (PushMode::Compatible, PushFormat::Json),
        (PushMode::Compatible, PushFormat::Xml),
        (PushMode::Safe, PushFormat::Json),
        (PushMode::Safe, PushFormat::Xml),
    ];
    // Act
    for (i, (mode, format)) in cases.iter().enumerate().take(2) {
        push_text(&plain, "/message_receive", i, *mode, *format).await;
    }
    desk.wait_for(2, DELIVERY).await;
    plain.stop().await;
    let encrypted = spawn(db, &desk, Keys::Aes).await;
    for (i, (mode, format)) in cases.iter().enumerate().skip(2) {
        push_text(&encrypted, "/message_recieve", i, *mode, *format).await;
    }
    // Assert: each arrived once, with the help desk's fields and Authorization.
    let mut received = desk.wait_for(cases.len(), DELIVERY).await;
    received.sort_by_key(|f| f.body["message_content"].as_str().unwrap().to_string());
    for (i, forwarded) in received.iter().enumerate() {
        assert_eq!(forwarded.authorization.as_deref(), Some(FORWARD_TOKEN));
        assert_eq!(forwarded.partner.as_deref(), Some(APPID));
        assert_eq!(
            forwarded.body,
            json!({
                "user_id": "o_alice",
                "user_name": "",
                "user_avatar": "",
                "message_type": "text",
                "message_event": "",
                "message_content": format!("hello {i} <&> 你好"),
            })
        );
    }
    encrypted.stop().await;
}

async fn the_help_desk_gets_the_stored_profile_of_a_known_user(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    app.login("o_bob").await;
    let mut conn = app.database.connect().await;
    sqlx::query("UPDATE users SET nickname = 'Bob', avatar_url = 'https://a/bob.png' WHERE openid = 'o_bob'")
        .execute(&mut conn)
        .await
        .unwrap();
    let push = wechat_push(
        &app,
        APPID,
        PushMode::Safe,
        PushFormat::Xml,
        &text_message("o_bob", 9, "hi"),
    );
    deliver(&app, "/message_receive", &push).await;
    let received = desk.wait_for(1, DELIVERY).await;
    assert_eq!(received[0].body["user_name"], "Bob");
    assert_eq!(received[0].body["user_avatar"], "https://a/bob.png");
    app.stop().await;
}

async fn image_and_miniprogrampage_pushes_carry_their_content_as_json(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    let image = fields(json!({
        "ToUserName": "gh_1", "FromUserName": "o_carol", "CreateTime": 1_700_000_100u64,
        "MsgType": "image", "PicUrl": "https://mmbiz.qpic.cn/x.jpg", "MediaId": "media-1", "MsgId": 100,
    }));
    let page = fields(json!({
        "ToUserName": "gh_1", "FromUserName": "o_carol", "CreateTime": 1_700_000_101u64,
        "MsgType": "miniprogrampage", "Title": "Order 7", "AppId": APPID, "PagePath": "pages/order?id=7",
        "ThumbUrl": "https://mmbiz.qpic.cn/t.jpg", "ThumbMediaId": "thumb-1", "MsgId": 101,
    }));
    deliver(
        &app,
        "/message_receive",
        &wechat_push(&app, APPID, PushMode::Safe, PushFormat::Json, &image),
    )
    .await;
    deliver(
        &app,
        "/message_receive",
        &wechat_push(&app, APPID, PushMode::Compatible, PushFormat::Xml, &page),
    )
    .await;
    let received = desk.wait_for(2, DELIVERY).await;
    let content = |kind: &str| -> Value {
        let forwarded = received
            .iter()
            .find(|f| f.body["message_type"] == kind)
            .unwrap();
        serde_json::from_str(forwarded.body["message_content"].as_str().unwrap()).unwrap()
    };
    assert_eq!(
        content("image"),
        json!({"external_url": "https://mmbiz.qpic.cn/x.jpg", "internal_url": "", "media_id": "media-1"})
    );
    assert_eq!(
        content("miniprogrampage"),
        json!({"title": "Order 7", "appid": APPID, "pagepath": "pages/order?id=7",
               "thumb_url": "https://mmbiz.qpic.cn/t.jpg", "thumb_media_id": "thumb-1"})
    );
    app.stop().await;
}

async fn an_event_reaches_the_help_desk_with_its_session_from(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Plaintext).await;
    let event = fields(json!({
        "ToUserName": "gh_1", "FromUserName": "o_dave", "CreateTime": 1_700_000_200u64,
        "MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "order-7",
    }));
    let (status, _, _) = deliver(
        &app,
        "/message_receive",
        &wechat_push(&app, APPID, PushMode::Plaintext, PushFormat::Xml, &event),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let received = desk.wait_for(1, DELIVERY).await;
    assert_eq!(received[0].body["message_type"], "event");
    assert_eq!(received[0].body["message_event"], "user_enter_tempsession");
    assert_eq!(received[0].body["message_content"], "order-7");
    app.stop().await;
}

async fn encrypted_pushes_that_fail_verification_are_refused_and_never_forwarded(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    let message = text_message("o_eve", 1, "forged");
    let good = wechat_push(&app, APPID, PushMode::Safe, PushFormat::Json, &message);
    let mut bad_msg_signature = good.clone();
    bad_msg_signature.query = good.query.replace("msg_signature=", "msg_signature=0");
    let mut tampered = good.clone();
    let encrypt = serde_json::from_str::<Value>(&good.body).unwrap()["Encrypt"]
        .as_str()
        .unwrap()
        .to_string();
    // Change the first base64 character, whatever it was (a fixed "A" is a no-op one run in 64).
    let flipped = if encrypt.starts_with('A') { 'B' } else { 'A' };
    tampered.body =
        json!({"ToUserName": "gh_1", "Encrypt": format!("{flipped}{}", &encrypt[1..])}).to_string();
    // Encrypted for another app: the plaintext's trailing appid is not this app's.
    let wrong_appid = wechat_push(&app, OTHER_APPID, PushMode::Safe, PushFormat::Xml, &message);
    // A plaintext push (signature over token, timestamp, nonce only) to an app with a key.
    let downgraded = wechat_push(&app, APPID, PushMode::Plaintext, PushFormat::Json, &message);
    for push in [&bad_msg_signature, &tampered, &wrong_appid, &downgraded] {
        let (status, body, _) = deliver(&app, "/message_receive", push).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert_eq!(stored_messages(&app).await, 0);
    assert_eq!(desk.attempts(), 0);
    app.stop().await;
}

async fn plaintext_pushes_with_a_bad_signature_are_refused_and_never_forwarded(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Plaintext).await;
    let mut push = wechat_push(
        &app,
        APPID,
        PushMode::Plaintext,
        PushFormat::Xml,
        &text_message("o_eve", 2, "x"),
    );
    push.query = push.query.replace("signature=", "signature=1");
    let (status, _, _) = deliver(&app, "/message_receive", &push).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let unsigned = PushRequest {
        query: "timestamp=1&nonce=2".into(),
        ..push
    };
    let (status, _, _) = deliver(&app, "/message_receive", &unsigned).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(stored_messages(&app).await, 0);
    assert_eq!(desk.attempts(), 0);
    app.stop().await;
}

async fn a_replayed_push_is_forwarded_once(db: Db) {
    // Arrange: a message and an event (no MsgId), each pushed as WeChat retries: three times.
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    let message = text_message("o_frank", 77, "once");
    let event = fields(json!({
        "ToUserName": "gh_1", "FromUserName": "o_frank", "CreateTime": 1_700_000_300u64,
        "MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "x",
    }));
    // Act: each retry is signed and encrypted afresh, as WeChat does.
    for _ in 0..3 {
        for m in [&message, &event] {
            let push = wechat_push(&app, APPID, PushMode::Safe, PushFormat::Xml, m);
            let (status, body, _) = deliver(&app, "/message_receive", &push).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
        }
    }
    // Assert
    desk.wait_for(2, DELIVERY).await;
    assert_eq!(stored_messages(&app).await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(desk.received().len(), 2);
    app.stop().await;
}

async fn a_slow_help_desk_still_gets_wechat_its_answer_at_once(db: Db) {
    let desk = HelpDesk::start().await;
    desk.set_delay(Duration::from_secs(3));
    let app = spawn(db, &desk, Keys::Aes).await;
    let push = wechat_push(
        &app,
        APPID,
        PushMode::Safe,
        PushFormat::Json,
        &text_message("o_gina", 5, "slow"),
    );
    let (status, body, took) = deliver(&app, "/message_receive", &push).await;
    // WeChat gives up after 5 s; the answer must not wait for the help desk.
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let received = desk.wait_for(1, DELIVERY).await;
    assert_eq!(received[0].body["message_content"], "slow");
    app.stop().await;
}

async fn a_failing_help_desk_is_retried_until_it_succeeds(db: Db) {
    let desk = HelpDesk::start().await;
    desk.fail_next(2);
    let app = spawn(db, &desk, Keys::Aes).await;
    let push = wechat_push(
        &app,
        APPID,
        PushMode::Safe,
        PushFormat::Json,
        &text_message("o_hal", 6, "retry"),
    );
    let (status, _, _) = deliver(&app, "/message_receive", &push).await;
    assert_eq!(status, StatusCode::OK);
    let received = desk.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(desk.attempts(), 3, "two failures, then the delivery");
    app.stop().await;
}

async fn a_message_recorded_before_a_restart_is_delivered_after_it(db: Db) {
    // Arrange: the help desk is down while the message arrives.
    let desk = HelpDesk::start().await;
    desk.fail_next(usize::MAX);
    let mut app = spawn(db, &desk, Keys::Aes).await;
    let push = wechat_push(
        &app,
        APPID,
        PushMode::Safe,
        PushFormat::Json,
        &text_message("o_ivy", 8, "durable"),
    );
    let (status, _, _) = deliver(&app, "/message_receive", &push).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored_messages(&app).await,
        1,
        "recorded before WeChat was answered"
    );
    // Act: the gateway stops; the help desk recovers; a new gateway starts on the same store.
    app.gateway.take().unwrap().stop().await;
    // An attempt cut short by the stop leaves the row claimed until its lease expires (30 s);
    // move the clock past it rather than wait.
    let mut conn = app.database.connect().await;
    sqlx::query("UPDATE messages SET next_attempt_at = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    desk.fail_next(0);
    let tweaks = Tweaks {
        app_extra: Some(format!(
            "    messages:\n      token: \"{TOKEN}\"\n      aes_key: \"{AES_KEY}\"\n      \
             forward_url: \"{}\"\n      forward_token: \"{FORWARD_TOKEN}\"\n",
            desk.inbox_url()
        )),
        ..Tweaks::default()
    };
    let gateway = start_gateway(&app.database.url, &app.backends, &tweaks).await;
    app.addr = gateway.addr;
    app.gateway = Some(gateway);
    // Assert
    let received = desk.wait_for(1, DELIVERY).await;
    assert_eq!(received[0].body["message_content"], "durable");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_push_key_token_or_message_text_reaches_the_logs() {
    let desk = HelpDesk::start().await;
    let app = spawn(Db::Sqlite, &desk, Keys::Aes).await;
    let message = text_message("o_nia", 31, "user-text-7731");
    deliver(
        &app,
        "/message_receive",
        &wechat_push(
            &app,
            APPID,
            PushMode::Compatible,
            PushFormat::Json,
            &message,
        ),
    )
    .await;
    desk.wait_for(1, DELIVERY).await;
    let (status, _) = app
        .call(
            reqwest::Method::POST,
            "/message_reply",
            &[("User-App", APPID), ("Authorization", REPLY_TOKEN)],
            Some(json!({"source": "desk", "target": "o_nia", "type": "text", "content": "reply-text-9913"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let logs = logs();
    assert!(logs.contains("message forwarded"), "the capture works");
    for secret in [
        TOKEN,
        AES_KEY,
        FORWARD_TOKEN,
        REPLY_TOKEN,
        "user-text-7731",
        "reply-text-9913",
    ] {
        assert!(!logs.contains(secret), "{secret} reached the logs");
    }
    app.stop().await;
}

/// Push text message number `i` as WeChat would in `mode`/`format`; WeChat must get `success`.
async fn push_text(app: &TestApp, path: &str, i: usize, mode: PushMode, format: PushFormat) {
    let message = text_message("o_alice", i as u64 + 1, &format!("hello {i} <&> 你好"));
    let (status, body, _) =
        deliver(app, path, &wechat_push(app, APPID, mode, format, &message)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
}

async fn a_correctly_signed_push_outside_the_replay_window_is_refused_before_decryption(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    let now = chrono::Utc::now().timestamp();
    let signed_at = |timestamp: i64, msg_id: u64| {
        let parts = PushParts {
            appid: APPID,
            token: TOKEN,
            aes_key: AES_KEY,
            mode: PushMode::Safe,
            format: PushFormat::Json,
        };
        let message = text_message("o_mallory", msg_id, "captured");
        app.backends
            .sim
            .push_request_at(parts, &message, timestamp)
            .unwrap()
    };
    // Signed a month ago, and signed ten minutes ahead of the node's clock.
    for push in [signed_at(now - 30 * 86_400, 1), signed_at(now + 600, 2)] {
        let (status, body, _) = deliver(&app, "/message_receive", &push).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("replay window"), "{body}");
    }
    assert_eq!(stored_messages(&app).await, 0);
    // Within the default 300 s the same push is genuine.
    let (status, body, _) = deliver(&app, "/message_receive", &signed_at(now - 60, 3)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stored_messages(&app).await, 1);
    app.stop().await;
}
