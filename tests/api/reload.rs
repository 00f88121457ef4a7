//! Reloading a running gateway in-process (what SIGHUP does, see `process.rs` for the signal
//! itself): per-app keys apply to the next request, sessions carry on, and keys that cannot
//! change in place are named.

use mpapi::config::Config;
use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// The test's configuration with `tweaks`, parsed.
fn config_with(app: &TestApp, tweaks: &Tweaks) -> Config {
    let yaml = config_yaml(&app.database.url, &app.backends, tweaks);
    Config::parse(&yaml, &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_per_app_keys_to_the_next_request_and_sessions_carry_on() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let token = app.login("rita").await;
    let (status, echo) = app.get_app("/before", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received(&echo, "authorization"), None);

    // A host_token, login required, and a trusted proxy appear.
    let tweaks = Tweaks {
        app_extra: Some("    host_token: \"Bearer after-reload\"\n    require_login: true".into()),
        server: Some("  trusted_proxies: [\"127.0.0.1\"]".into()),
        ..Tweaks::default()
    };
    let reloaded = app
        .gateway()
        .reload(&config_with(&app, &tweaks))
        .await
        .unwrap();
    assert!(reloaded.needing_restart.is_empty(), "{reloaded:?}");

    // The session issued before the reload still opens the app.
    let headers = [
        ("User-App", APPID),
        ("User-Token", token.as_str()),
        ("X-Forwarded-For", "198.51.100.4"),
    ];
    let (status, echo) = app.call(Method::GET, "/app/after", &headers, None).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(
        received(&echo, "authorization").as_deref(),
        Some("Bearer after-reload")
    );
    assert_eq!(
        received(&echo, "x-real-ip").as_deref(),
        Some("198.51.100.4")
    );
    assert_eq!(received(&echo, "user-openid").as_deref(), Some("rita"));
    let (status, _) = app.get_app("/anonymous", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "require_login applies");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_app_answers_403_and_fixed_keys_are_named() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut config = config_with(&app, &Tweaks::default());
    config.apps.retain(|a| a.appid != APPID);
    config.server.threads = 3;
    config.limits.login_per_ip_per_minute = Some(1);
    let reloaded = app.gateway().reload(&config).await.unwrap();
    assert_eq!(reloaded.needing_restart, ["server.threads", "limits"]);
    let (status, body) = app.get_app("/gone", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["status"], 10000);
    // The limit was not changed in place: two logins from one address still pass.
    for _ in 0..2 {
        let (status, _) = app
            .call(
                Method::POST,
                "/login",
                &[("User-App", OTHER_APPID)],
                Some(serde_json::json!({"code": "x"})),
            )
            .await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    app.stop().await;
}
