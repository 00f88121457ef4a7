//! A WeChat API simulator with WeChat's real semantics, for tests, benches and local development
//! (`mpapi sim --listen ADDR`). It speaks real HTTP, so mpapi's WeChat client is exercised
//! exactly as in production.
//!
//! Besides WeChat's own paths it has a few `/sim/...` paths that play the parts WeChat's
//! client SDK plays: `POST /sim/code` is `wx.login` (it mints a single-use code for a user);
//! `POST /sim/push` builds (and can deliver) a customer-service push signed as WeChat signs it.

pub mod echo;
mod faults;
mod login;

pub mod subscribe;
mod tokens;
pub mod wxacode;
pub use wxacode::CODE_PNG;
// Phone numbers and encrypted user data.
mod phone;

pub use faults::Fault;
pub use tokens::{IssuedToken, TokenTimes};

pub use phone::{PhoneRequest, UserProfile};
// Customer-service sends, media upload, signed and encrypted pushes.
pub mod messages;
mod multipart;
pub use messages::{CustomSend, PushFormat, PushMode, PushParts, PushRequest, UploadedMedia};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// A user the simulator knows.
#[derive(Debug, Clone)]
pub struct SimUser {
    pub openid: String,
    pub unionid: Option<String>,
    /// The session key issued at the user's latest login (base64 of 16 bytes).
    pub session_key: Option<String>,
}

/// A code minted by `/sim/code`, waiting for `jscode2session`.
#[derive(Debug, Clone)]
struct PendingCode {
    appid: String,
    openid: String,
    unionid: Option<String>,
}

/// The simulator's state.
#[derive(Default)]
pub struct Simulator {
    secrets: HashMap<String, String>,
    codes: Mutex<HashMap<String, PendingCode>>,
    used_codes: Mutex<HashSet<String>>,
    users: Mutex<HashMap<(String, String), SimUser>>,
    tokens: Mutex<Vec<tokens::IssuedToken>>,
    token_fetches: Mutex<HashMap<String, usize>>,
    token_times: Mutex<tokens::TokenTimes>,
    faults: Mutex<Vec<faults::PendingFault>>,
    requests: Mutex<HashMap<String, usize>>,

    phone: phone::PhoneState,
    // When each user last wrote, accepted customer-service calls, uploads
    last_messages: Mutex<HashMap<(String, String), i64>>,
    custom_sends: Mutex<Vec<messages::CustomSend>>,
    media: Mutex<Vec<messages::UploadedMedia>>,
    // Accepted subscribe messages.
    subscribe: Mutex<subscribe::SubscribeState>,
}

impl Simulator {
    /// A simulator that knows `apps` as `(appid, secret)` pairs.
    pub fn new(apps: impl IntoIterator<Item = (String, String)>) -> Arc<Self> {
        Arc::new(Self {
            secrets: apps.into_iter().collect(),
            ..Self::default()
        })
    }

    /// A simulator that knows the apps of `config`.
    pub fn for_config(config: &crate::config::Config) -> Arc<Self> {
        Self::new(
            config
                .apps
                .iter()
                .map(|app| (app.appid.clone(), app.secret.expose().to_string())),
        )
    }

    /// Mint a single-use login code for `openid`, as `wx.login` would on the phone.
    pub fn mint_code(&self, appid: &str, openid: &str, unionid: Option<&str>) -> String {
        let code = random_hex(16);
        self.codes.lock().insert(
            code.clone(),
            PendingCode {
                appid: appid.to_string(),
                openid: openid.to_string(),
                unionid: unionid.map(str::to_string),
            },
        );
        code
    }

    /// The user `openid` of `appid`, as WeChat knows them.
    pub fn user(&self, appid: &str, openid: &str) -> Option<SimUser> {
        self.users
            .lock()
            .get(&(appid.to_string(), openid.to_string()))
            .cloned()
    }

    /// Check an app's credentials the way WeChat does: unknown appid 40013, wrong secret 40125.
    fn check_app(&self, appid: &str, secret: &str) -> Result<(), Value> {
        match self.secrets.get(appid) {
            None => Err(wechat_error(40013, "invalid appid")),
            Some(expected)
                if crate::wechat::crypto::secure_eq(expected.as_bytes(), secret.as_bytes()) =>
            {
                Ok(())
            }
            Some(_) => Err(wechat_error(40125, "invalid appsecret")),
        }
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/sns/jscode2session", get(login::jscode2session))
            .route("/sim/code", post(login::mint))
            .route("/cgi-bin/token", get(tokens::classic))
            .route("/cgi-bin/stable_token", post(tokens::stable))
            .route("/wxa/getwxacodeunlimit", post(wxacode::unlimited))
            .route(
                "/wxa/business/getuserphonenumber",
                post(phone::getuserphonenumber),
            )
            .route("/sim/phone_code", post(phone::mint))
            .route("/sim/user_profile", post(phone::user_profile))
            .route("/sim/encrypt", post(phone::encrypt))
            .route("/cgi-bin/message/custom/send", post(messages::send))
            .route(
                "/cgi-bin/message/custom/business/typing",
                post(messages::typing),
            )
            .route(
                "/cgi-bin/media/upload",
                post(messages::upload).layer(axum::extract::DefaultBodyLimit::max(16 << 20)),
            )
            .route("/sim/push", post(messages::push))
            .route("/cgi-bin/message/subscribe/send", post(subscribe::send))
            .route(
                "/cgi-bin/message/wxopen/template/send",
                post(subscribe::template_send),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                faults::apply,
            ))
            .with_state(self.clone())
    }
}

/// Serve `simulator` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    simulator: Arc<Simulator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, simulator.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// WeChat's first checks on a server API call: the access token (its appid on success), then a
/// JSON body of type `T` (47001 otherwise).
pub fn authorized_json<T: serde::de::DeserializeOwned>(
    sim: &Simulator,
    access_token: &str,
    body: &[u8],
) -> Result<(String, T), axum::Json<Value>> {
    let appid = sim.check_access_token(access_token).map_err(axum::Json)?;
    let body = serde_json::from_slice(body)
        .map_err(|_| axum::Json(wechat_error(47001, "data format error")))?;
    Ok((appid, body))
}

/// WeChat's error body.
pub fn wechat_error(errcode: i64, errmsg: &str) -> Value {
    json!({ "errcode": errcode, "errmsg": errmsg })
}

/// `bytes` random bytes, hex-encoded.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}
