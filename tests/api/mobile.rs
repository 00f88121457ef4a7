//! `POST /mobile`: the phone number, by code (`getuserphonenumber`) or legacy encrypted data;
//! and the simulator's `getuserphonenumber` itself.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::credentials::{message, post, session_key_of, stored};
use crate::db_tests;
use crate::helpers::*;

db_tests!(
    a_phone_code_stores_the_number_and_the_next_request_carries_it,
    legacy_encrypted_phone_data_stores_the_number,
    a_reused_phone_code_is_refused_and_the_number_kept,
    a_phone_code_of_another_user_is_refused,
    a_revoked_access_token_is_replaced_once_and_the_number_stored,
    legacy_phone_data_stamped_for_another_app_is_refused,
    legacy_phone_data_from_before_a_new_login_asks_to_log_in_again,
    a_body_without_code_or_encrypted_data_is_refused_and_nothing_is_stored,
);

async fn a_phone_code_stores_the_number_and_the_next_request_carries_it(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("alice").await;
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    assert_eq!(received(&echo, "user-mobile").as_deref(), Some(""));
    let code = app
        .backends
        .sim
        .mint_phone_code(APPID, "alice", "13800138000");

    let (status, body) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let expected = json!({
        "phoneNumber": "13800138000", "purePhoneNumber": "13800138000", "countryCode": "86",
    });
    assert_eq!(body["data"], expected);
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    let mobile: Value = serde_json::from_str(&received(&echo, "user-mobile").unwrap()).unwrap();
    assert_eq!(mobile, expected);
    let requests = app.backends.sim.phone_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].openid.as_deref(),
        Some("alice"),
        "the user's openid goes to WeChat with the code"
    );
    assert_eq!(
        stored(&app, "alice").await.1.as_deref(),
        Some("13800138000")
    );
    app.stop().await;
}

async fn legacy_encrypted_phone_data_stores_the_number(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("bob").await;
    let data = phone_data("+1 4155550100", "4155550100", "1", APPID);

    let (status, body) = post(&app, "/mobile", Some(&token), encrypted(&app, "bob", &data)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["phoneNumber"], "+1 4155550100");
    assert_eq!(body["data"]["countryCode"], "1");
    let (_, echo) = app.get_app("/me", Some(&token)).await;
    let mobile: Value = serde_json::from_str(&received(&echo, "user-mobile").unwrap()).unwrap();
    assert_eq!(mobile["purePhoneNumber"], "4155550100");
    assert!(
        app.backends.sim.phone_requests().is_empty(),
        "no WeChat call"
    );
    app.stop().await;
}

async fn a_reused_phone_code_is_refused_and_the_number_kept(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("carol").await;
    let code = app
        .backends
        .sim
        .mint_phone_code(APPID, "carol", "13700000001");
    let (status, _) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["status"], 3);
    assert_eq!(body["errcode"], 40163);
    assert_eq!(
        stored(&app, "carol").await.1.as_deref(),
        Some("13700000001")
    );
    app.stop().await;
}

async fn a_phone_code_of_another_user_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("dave").await;
    let code = app
        .backends
        .sim
        .mint_phone_code(APPID, "mallory", "13600000002");

    let (status, body) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], 40003);
    assert_eq!(stored(&app, "dave").await.1, None);
    let mallory = app.login("mallory").await;
    let (status, _) = post(&app, "/mobile", Some(&mallory), json!({ "code": code })).await;
    assert_eq!(status, StatusCode::OK, "the code is still its owner's");
    app.stop().await;
}

async fn a_revoked_access_token_is_replaced_once_and_the_number_stored(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("erin").await;
    let sim = &app.backends.sim;
    let code = sim.mint_phone_code(APPID, "erin", "13500000003");
    let (status, _) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the gateway now holds an access token"
    );
    assert_eq!(sim.token_fetches(APPID), 1);
    sim.revoke_tokens(APPID);
    let code = sim.mint_phone_code(APPID, "erin", "13500000004");

    let (status, body) = post(&app, "/mobile", Some(&token), json!({ "code": code })).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["phoneNumber"], "13500000004");
    assert_eq!(sim.token_fetches(APPID), 2, "one fresh token");
    assert_eq!(
        sim.phone_requests().len(),
        2,
        "the first exchange and the retry; the revoked token got no further than its check"
    );
    assert_eq!(stored(&app, "erin").await.1.as_deref(), Some("13500000004"));
    app.stop().await;
}

async fn legacy_phone_data_stamped_for_another_app_is_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("frank").await;
    let data = phone_data("13400000005", "13400000005", "86", OTHER_APPID);

    let (status, body) = post(
        &app,
        "/mobile",
        Some(&token),
        encrypted(&app, "frank", &data),
    )
    .await;

    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(message(&body).contains("watermark"), "{body}");
    let mut unstamped = data.clone();
    unstamped.as_object_mut().unwrap().remove("watermark");
    let body = encrypted(&app, "frank", &unstamped);
    let (status, _) = post(&app, "/mobile", Some(&token), body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no watermark, no trust");
    assert_eq!(stored(&app, "frank").await.1, None);
    app.stop().await;
}

async fn legacy_phone_data_from_before_a_new_login_asks_to_log_in_again(db: Db) {
    let app = TestApp::spawn(db).await;
    app.login("gina").await;
    let old_key = session_key_of(&app, "gina");
    let data = phone_data("13300000006", "13300000006", "86", APPID);
    let body = encrypted(&app, "gina", &data);
    let token = app.login("gina").await;
    assert_ne!(session_key_of(&app, "gina"), old_key);

    let (status, answer) = post(&app, "/mobile", Some(&token), body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["status"], 3);
    assert!(message(&answer).contains("log in again"), "{answer}");
    assert_eq!(stored(&app, "gina").await.1, None);
    app.stop().await;
}

async fn a_body_without_code_or_encrypted_data_is_refused_and_nothing_is_stored(db: Db) {
    let app = TestApp::spawn(db).await;
    let token = app.login("hank").await;
    let data = phone_data("13200000007", "13200000007", "86", APPID);
    let full = encrypted(&app, "hank", &data);

    let cases = [
        (json!({}), "code"),
        (json!({ "code": "  " }), "code"),
        (json!({ "iv": full["iv"] }), "encrypted_data"),
        (
            json!({ "encrypted_data": full["encrypted_data"] }),
            "iv is required",
        ),
        (json!({ "code": 42 }), "invalid body"),
        (json!("code"), "must be a JSON object"),
        // serde alone would read an array as the fields in order.
        (
            json!([full["encrypted_data"], full["iv"]]),
            "must be a JSON object",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post(&app, "/mobile", Some(&token), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(message(&answer).contains(expected), "{body}: {answer}");
    }
    let (status, answer) = crate::credentials::post_raw(&app, "/mobile", &token, "{code").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&answer).contains("not valid JSON"), "{answer}");
    let (status, answer) = post(&app, "/mobile", None, full).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(answer["status"], 10001);

    assert_eq!(stored(&app, "hank").await.1, None);
    assert!(app.backends.sim.phone_requests().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_exchanges_phone_codes_with_wechats_errcodes() {
    let backends = Backends::start().await;
    let sim = &backends.sim;
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
    let token = token["access_token"].as_str().unwrap().to_string();
    let exchange = |access_token: String, body: String| {
        let client = client.clone();
        let url = format!("{base}/wxa/business/getuserphonenumber?access_token={access_token}");
        async move {
            let answer: Value = client
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer
        }
    };
    let other_app_code = sim.mint_phone_code(OTHER_APPID, "alice", "13800000000");
    let code = sim.mint_phone_code(APPID, "alice", "13800000000");
    let body = |code: &str, openid: &str| json!({ "code": code, "openid": openid }).to_string();

    let bad_token = exchange("nope".into(), body(&code, "alice")).await;
    let not_json = exchange(token.clone(), "{".into()).await;
    let unknown = exchange(token.clone(), body("never-issued", "alice")).await;
    let foreign = exchange(token.clone(), body(&other_app_code, "alice")).await;
    let wrong_user = exchange(token.clone(), body(&code, "bob")).await;
    let ok = exchange(token.clone(), body(&code, "alice")).await;
    let reused = exchange(token.clone(), body(&code, "alice")).await;

    assert_eq!(bad_token["errcode"], 40001);
    assert_eq!(not_json["errcode"], 47001);
    assert_eq!(unknown["errcode"], 40029);
    assert_eq!(foreign["errcode"], 40029, "a code belongs to its app");
    assert_eq!(wrong_user["errcode"], 40003);
    assert_eq!(ok["errcode"], 0, "{ok}");
    assert_eq!(ok["phone_info"]["purePhoneNumber"], "13800000000");
    assert_eq!(ok["phone_info"]["watermark"]["appid"], APPID);
    assert!(ok["phone_info"]["watermark"]["timestamp"].is_i64());
    assert_eq!(reused["errcode"], 40163);
}

/// Phone data as WeChat encrypts it for the legacy flow.
fn phone_data(phone: &str, pure: &str, country_code: &str, appid: &str) -> Value {
    json!({
        "phoneNumber": phone, "purePhoneNumber": pure, "countryCode": country_code,
        "watermark": { "appid": appid, "timestamp": 1_700_000_000 },
    })
}

/// The legacy `/mobile` body: `data` encrypted under `openid`'s current session key.
fn encrypted(app: &TestApp, openid: &str, data: &Value) -> Value {
    let (encrypted_data, iv) = app.backends.sim.encrypt_for(APPID, openid, data).unwrap();
    json!({ "encrypted_data": encrypted_data, "iv": iv })
}
