//! `POST /credentials`: the user's profile from WeChat's signed and encrypted data.

use mpapi::wechat::crypto;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::db_tests;
use crate::helpers::*;

db_tests!(
    a_verified_profile_reaches_the_next_proxied_request,
    a_unionid_in_the_profile_is_stored_and_forwarded,
    a_bad_signature_is_refused_and_nothing_is_stored,
    a_profile_stamped_for_another_app_is_refused,
    a_profile_of_another_user_is_refused,
    data_from_before_a_new_login_is_refused_with_log_in_again,
    missing_fields_and_malformed_json_are_refused_and_nothing_is_stored,
);

const AVATAR: &str = "https://thirdwx.qlogo.cn/mmopen/vi_32/POgEwh4mIHO4/132";

async fn a_verified_profile_reaches_the_next_proxied_request(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("alice").await;
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    assert_eq!(
        received(&echo, "user-extra").as_deref(),
        Some(""),
        "no profile yet, and the session is now cached"
    );
    let profile = app
        .backends
        .sim
        .user_profile(APPID, "alice", "微信用户", AVATAR)
        .unwrap();

    let (status, body) = post(&app, "/credentials", Some(&token), body_of(&profile)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], 0);
    assert_eq!(
        body["data"],
        json!({ "openId": "alice", "unionId": "", "nickName": "微信用户", "avatarUrl": AVATAR })
    );
    let session_key = session_key_of(&app, "alice");
    assert!(!body.to_string().contains(&session_key));
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    let extra = received(&echo, "user-extra").unwrap();
    assert!(extra.is_ascii(), "{extra}");
    assert!(extra.contains(r"\u5fae\u4fe1\u7528\u6237"), "{extra}");
    let extra: Value = serde_json::from_str(&extra).unwrap();
    assert_eq!(extra["nickName"], "微信用户");
    assert_eq!(extra["avatarUrl"], AVATAR);
    assert_eq!(extra["openId"], "alice");
    assert_eq!(stored(&app, "alice").await.0.as_deref(), Some("微信用户"));
    app.stop().await;
}

async fn a_unionid_in_the_profile_is_stored_and_forwarded(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("bob").await;
    // wx.getUserInfo's data (before 2021) carried openId and unionId.
    let data = json!({
        "openId": "bob", "unionId": "union-bob", "nickName": "Bob", "avatarUrl": AVATAR,
        "watermark": { "appid": APPID, "timestamp": 1_700_000_000 },
    });

    let (status, body) = post(
        &app,
        "/credentials",
        Some(&token),
        signed(&app, "bob", &data),
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["unionId"], "union-bob");
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    assert_eq!(
        received(&echo, "user-unionid").as_deref(),
        Some("union-bob")
    );
    let extra: Value = serde_json::from_str(&received(&echo, "user-extra").unwrap()).unwrap();
    assert_eq!(extra["unionId"], "union-bob");
    assert_eq!(extra["nickName"], "Bob");
    app.stop().await;
}

async fn a_bad_signature_is_refused_and_nothing_is_stored(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("carol").await;
    let profile = app
        .backends
        .sim
        .user_profile(APPID, "carol", "Carol", AVATAR)
        .unwrap();
    let mut body = body_of(&profile);
    body["raw_data"] = json!(profile.raw_data.replace("Carol", "Mallory"));

    let (status, answer) = post(&app, "/credentials", Some(&token), body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["status"], 3);
    assert!(message(&answer).contains("signature"), "{answer}");
    assert_eq!(stored(&app, "carol").await, (None, None));
    app.stop().await;
}

async fn a_profile_stamped_for_another_app_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("dave").await;
    let data = json!({
        "nickName": "Dave", "avatarUrl": AVATAR,
        "watermark": { "appid": OTHER_APPID, "timestamp": 1_700_000_000 },
    });

    let (status, body) = post(
        &app,
        "/credentials",
        Some(&token),
        signed(&app, "dave", &data),
    )
    .await;

    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["status"], 3);
    assert!(message(&body).contains("watermark"), "{body}");
    assert_eq!(stored(&app, "dave").await, (None, None));
    app.stop().await;
}

async fn a_profile_of_another_user_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("erin").await;
    let data = json!({
        "openId": "mallory", "nickName": "Mallory", "avatarUrl": AVATAR,
        "watermark": { "appid": APPID, "timestamp": 1_700_000_000 },
    });

    let (status, body) = post(
        &app,
        "/credentials",
        Some(&token),
        signed(&app, "erin", &data),
    )
    .await;

    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains("openId"), "{body}");
    assert_eq!(stored(&app, "erin").await, (None, None));
    app.stop().await;
}

async fn data_from_before_a_new_login_is_refused_with_log_in_again(db: Db) {
    let app = TestApp::spawn(db).await;
    app.login("frank").await;
    let old_key = session_key_of(&app, "frank");
    let profile = app
        .backends
        .sim
        .user_profile(APPID, "frank", "Frank", AVATAR)
        .unwrap();
    let token = app.login("frank").await;
    assert_ne!(
        session_key_of(&app, "frank"),
        old_key,
        "WeChat issued a new key"
    );

    // As the client sends it: rawData and signature from the old session too.
    let (status, body) = post(&app, "/credentials", Some(&token), body_of(&profile)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["status"], 3);
    assert!(message(&body).contains("log in again"), "{body}");

    // Even with a signature that matches the new key, the old ciphertext does not decrypt.
    let mut body = body_of(&profile);
    body["signature"] = json!(crypto::raw_data_signature(
        &profile.raw_data,
        &session_key_of(&app, "frank")
    ));
    let (status, body) = post(&app, "/credentials", Some(&token), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("decrypt"), "{body}");
    assert!(message(&body).contains("log in again"), "{body}");
    assert_eq!(stored(&app, "frank").await, (None, None));
    app.stop().await;
}

async fn missing_fields_and_malformed_json_are_refused_and_nothing_is_stored(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("gina").await;
    let profile = app
        .backends
        .sim
        .user_profile(APPID, "gina", "Gina", AVATAR)
        .unwrap();

    for field in ["raw_data", "signature", "encrypted_data", "iv"] {
        let mut body = body_of(&profile);
        body.as_object_mut().unwrap().remove(field);
        let (status, answer) = post(&app, "/credentials", Some(&token), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert_eq!(answer["status"], 3);
        assert!(message(&answer).contains(field), "{answer}");
    }
    let mut body = body_of(&profile);
    body["iv"] = json!(7);
    let (status, _) = post(&app, "/credentials", Some(&token), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a number is not an iv");
    let mut body = body_of(&profile);
    body["iv"] = json!("not base64!");
    let (status, answer) = post(&app, "/credentials", Some(&token), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&answer).contains("iv"), "{answer}");
    let (status, answer) = post_raw(&app, "/credentials", &token, "{\"raw_data\":").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&answer).contains("not valid JSON"), "{answer}");

    assert_eq!(stored(&app, "gina").await, (None, None));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_without_a_valid_token_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("hank").await;
    let profile = app
        .backends
        .sim
        .user_profile(APPID, "hank", "Hank", AVATAR)
        .unwrap();

    let (status, body) = post(&app, "/credentials", None, body_of(&profile)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 10001);
    let forged = format!("{}x", &token[..42]);
    let (status, _) = post(&app, "/credentials", Some(&forged), body_of(&profile)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .call(
            Method::POST,
            "/credentials",
            &[("User-App", OTHER_APPID), ("User-Token", &token)],
            Some(body_of(&profile)),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token works only for its own app"
    );
    assert_eq!(stored(&app, "hank").await, (None, None));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_stored_as_a_new_login_lands_does_not_revive_the_retired_token() {
    // The race of a /credentials request with a login of the same user on another phone:
    // authenticated with the old token, it refreshes the cache after the login retired it.
    let app = TestApp::spawn(Db::Sqlite).await;
    let old = app.login("jack").await;
    let state = &app.gateway().state;
    let session = state.sessions.authenticate(APPID, &old).await.unwrap();
    let new = app.login("jack").await;
    let user = state
        .store
        .user_by_openid(APPID, "jack")
        .await
        .unwrap()
        .unwrap();

    state.sessions.refresh(&session, &user).await;

    let (status, _) = app.get_app("/x", Some(&old)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the retired token stays dead"
    );
    let (status, _) = app.get_app("/x", Some(&new)).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_key_phone_number_or_decrypted_data_reaches_the_logs() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("ivy").await;
    let sim = &app.backends.sim;
    let nickname = "Ivy-7f3a9c-nickname";
    let profile = sim.user_profile(APPID, "ivy", nickname, AVATAR).unwrap();
    let (status, _) = post(&app, "/credentials", Some(&token), body_of(&profile)).await;
    assert_eq!(status, StatusCode::OK);
    let mut tampered = body_of(&profile);
    tampered["signature"] = json!("0".repeat(40));
    post(&app, "/credentials", Some(&token), tampered).await;
    let code = sim.mint_phone_code(APPID, "ivy", "13912345678");
    let (status, _) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK);
    post(&app, "/mobile", Some(&token), json!({ "code": code })).await;
    let legacy = json!({
        "phoneNumber": "13787654321", "purePhoneNumber": "13787654321", "countryCode": "86",
        "watermark": { "appid": APPID, "timestamp": 1_700_000_000 },
    });
    let (encrypted_data, iv) = sim.encrypt_for(APPID, "ivy", &legacy).unwrap();
    let body = json!({ "encrypted_data": encrypted_data, "iv": iv });
    let (status, _) = post(&app, "/mobile", Some(&token), body).await;
    assert_eq!(status, StatusCode::OK);
    let session_key = session_key_of(&app, "ivy");

    let logs = logs();
    assert!(logs.contains("profile stored"), "the capture works");
    assert!(logs.contains("mobile stored"), "the capture works");
    for secret in [
        session_key.as_str(),
        nickname,
        "13912345678",
        "13787654321",
        code.as_str(),
        profile.encrypted_data.as_str(),
        encrypted_data.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
    app.stop().await;
}

/// POST `body` to `path` as the holder of `token`.
pub async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut headers = vec![("User-App", APPID)];
    if let Some(token) = token {
        headers.push(("User-Token", token));
    }
    app.call(Method::POST, path, &headers, Some(body)).await
}

/// POST a raw (possibly malformed) body.
pub async fn post_raw(app: &TestApp, path: &str, token: &str, body: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("User-App", APPID)
        .header("User-Token", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// The envelope's message.
pub fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// The session key WeChat holds for `openid` (its latest login).
pub fn session_key_of(app: &TestApp, openid: &str) -> String {
    app.backends
        .sim
        .user(APPID, openid)
        .unwrap()
        .session_key
        .unwrap()
}

/// The `/credentials` body for what `wx.getUserProfile` returned.
pub fn body_of(profile: &mpapi::sim::UserProfile) -> Value {
    json!({
        "raw_data": profile.raw_data,
        "signature": profile.signature,
        "encrypted_data": profile.encrypted_data,
        "iv": profile.iv,
    })
}

/// A `/credentials` body carrying `data` exactly, encrypted and signed as WeChat would for
/// `openid`'s current session.
fn signed(app: &TestApp, openid: &str, data: &Value) -> Value {
    let (encrypted_data, iv) = app.backends.sim.encrypt_for(APPID, openid, data).unwrap();
    let raw_data =
        json!({ "nickName": data["nickName"], "avatarUrl": data["avatarUrl"] }).to_string();
    json!({
        "raw_data": raw_data,
        "signature": crypto::raw_data_signature(&raw_data, &session_key_of(app, openid)),
        "encrypted_data": encrypted_data,
        "iv": iv,
    })
}

/// `(nickname, phone_number)` as the store holds them for `openid` of the test app.
pub async fn stored(app: &TestApp, openid: &str) -> (Option<String>, Option<String>) {
    let mut conn = app.database.connect().await;
    let row = sqlx::query(&format!(
        "SELECT nickname, phone_number FROM users WHERE appid = '{APPID}' AND openid = '{openid}'"
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    (
        row.try_get("nickname").unwrap(),
        row.try_get("phone_number").unwrap(),
    )
}
