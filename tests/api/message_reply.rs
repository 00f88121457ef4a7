//! `POST /message_reply`: the help desk answers users through WeChat's customer-service API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::db_tests;
use crate::helpdesk::{HelpDesk, IMAGE};
use crate::helpers::*;
use crate::messages::{Keys, REPLY_TOKEN, TOKEN, deliver, spawn, text_message, wechat_push};
use mpapi::sim::{PushFormat, PushMode};

async fn reply(app: &TestApp, authorization: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut headers = vec![("User-App", APPID)];
    if let Some(token) = authorization {
        headers.push(("Authorization", token));
    }
    app.call(Method::POST, "/message_reply", &headers, Some(body))
        .await
}

/// `openid` writes to the app (through the gateway), which opens their 48-hour window.
async fn user_writes(app: &TestApp, openid: &str) {
    let push = wechat_push(
        app,
        APPID,
        PushMode::Safe,
        PushFormat::Json,
        &text_message(openid, 1, "help"),
    );
    let (status, _, _) = deliver(app, "/message_receive", &push).await;
    assert_eq!(status, StatusCode::OK);
}

db_tests!(
    text_link_miniprogrampage_and_typing_replies_reach_wechat,
    an_image_reply_is_uploaded_then_sent_by_its_media_id,
    a_reply_after_the_48_hour_window_reports_errcode_45015,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_the_reply_token_is_refused() {
    let desk = HelpDesk::start().await;
    let app = spawn(Db::Sqlite, &desk, Keys::Aes).await;
    let body = json!({"source": "desk", "target": "o_x", "type": "text", "content": "hi"});
    for authorization in [None, Some("wrong"), Some(TOKEN), Some("reply-secret-")] {
        let (status, answer) = reply(&app, authorization, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{authorization:?}: {answer}");
    }
    // An app without messages (and so without a reply_token) takes no replies at all.
    let (status, _) = app
        .call(
            Method::POST,
            "/message_reply",
            &[("User-App", OTHER_APPID), ("Authorization", REPLY_TOKEN)],
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(app.backends.sim.custom_sends().is_empty());
    app.stop().await;
}

async fn text_link_miniprogrampage_and_typing_replies_reach_wechat(db: Db) {
    // Arrange
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    user_writes(&app, "o_kim").await;
    let link = json!({"title": "Docs", "description": "Read me", "url": "https://e.com/d", "thumb_url": "https://e.com/t.png"});
    let page =
        json!({"title": "Order 7", "pagepath": "pages/order?id=7", "thumb_media_id": "thumb-1"});
    let replies = [
        json!({"source": "desk", "target": "o_kim", "type": "typing", "content": "Typing"}),
        json!({"source": "desk", "target": "o_kim", "type": "text", "content": "Hello 你好"}),
        // Structured content is accepted as a JSON string (the original's form) or an object.
        json!({"source": "desk", "target": "o_kim", "type": "link", "content": link.to_string()}),
        json!({"source": "desk", "target": "o_kim", "type": "miniprogrampage", "content": page}),
        json!({"source": "desk", "target": "o_kim", "type": "typing", "content": "CancelTyping"}),
    ];
    // Act
    for body in replies {
        let (status, answer) = reply(&app, Some(REPLY_TOKEN), body).await;
        assert_eq!(
            (status, answer["status"].clone()),
            (StatusCode::OK, json!(0)),
            "{answer}"
        );
    }
    // Assert: what WeChat received, in order.
    let sends: Vec<(&str, Value)> = app
        .backends
        .sim
        .custom_sends()
        .into_iter()
        .map(|s| (s.kind, s.body))
        .collect();
    assert_eq!(
        sends,
        vec![
            ("typing", json!({"touser": "o_kim", "command": "Typing"})),
            (
                "send",
                json!({"touser": "o_kim", "msgtype": "text", "text": {"content": "Hello 你好"}})
            ),
            (
                "send",
                json!({"touser": "o_kim", "msgtype": "link", "link": link})
            ),
            (
                "send",
                json!({"touser": "o_kim", "msgtype": "miniprogrampage", "miniprogrampage": page})
            ),
            (
                "typing",
                json!({"touser": "o_kim", "command": "CancelTyping"})
            ),
        ]
    );
    app.stop().await;
}

async fn an_image_reply_is_uploaded_then_sent_by_its_media_id(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    user_writes(&app, "o_lee").await;
    let content = json!({"internal_url": desk.image_url()}).to_string();
    let (status, answer) = reply(
        &app,
        Some(REPLY_TOKEN),
        json!({"source": "desk", "target": "o_lee", "type": "image", "content": content}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let uploads = app.backends.sim.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].len, IMAGE.len());
    assert_eq!(uploads[0].content_type, "image/png");
    assert_eq!(uploads[0].file_name, "cat.png");
    let sends = app.backends.sim.custom_sends();
    assert_eq!(
        sends[0].body,
        json!({"touser": "o_lee", "msgtype": "image", "image": {"media_id": uploads[0].media_id}})
    );
    app.stop().await;
}

async fn a_reply_after_the_48_hour_window_reports_errcode_45015(db: Db) {
    let desk = HelpDesk::start().await;
    let app = spawn(db, &desk, Keys::Aes).await;
    let two_days_ago = mpapi::types::unix_now() - 49 * 3600;
    app.backends.sim.user_wrote_at(APPID, "o_max", two_days_ago);
    let (status, answer) = reply(
        &app,
        Some(REPLY_TOKEN),
        json!({"source": "desk", "target": "o_max", "type": "text", "content": "too late"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errcode"], 45015);
    assert!(app.backends.sim.custom_sends().is_empty());
    app.stop().await;
}
