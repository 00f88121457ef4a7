//! The requests each scenario sends. Every proxied request looks like one from a mini program:
//! WeChat's user agent and referer, `User-App`, and (when logged in) `User-Token`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::Full;
use mpapi::sim::Simulator;

use crate::generator::MakeRequest;
use crate::world::{APPID, SESSION_KEY, openid};

/// The path every proxied scenario requests.
pub const APP_PATH: &str = "/app/orders/7?page=2";

/// Headers a mini program sends with every request.
pub fn client_headers(addr: SocketAddr) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let pairs = [
        ("host", addr.to_string()),
        (
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) \
             NetType/WIFI Language/zh_CN miniProgram/wxbench000000001"
                .to_string(),
        ),
        ("accept", "*/*".to_string()),
        ("accept-encoding", "gzip, deflate, br".to_string()),
        (
            "referer",
            format!("https://servicewechat.com/{APPID}/42/page-frame.html"),
        ),
        ("content-type", "application/json".to_string()),
        ("user-app", APPID.to_string()),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    headers
}

pub fn get(path: &'static str, headers: HeaderMap) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = http::Uri::from_static(path);
    *request.headers_mut() = headers;
    request
}

/// GET `/app/…`, each request with the next of `tokens` (spread so that concurrent connections
/// use different ones), or anonymously when `tokens` is empty.
pub fn app_get(addr: SocketAddr, connections: usize, tokens: Arc<Vec<String>>) -> MakeRequest {
    let base = client_headers(addr);
    let tokens: Arc<Vec<HeaderValue>> = Arc::new(
        tokens
            .iter()
            .map(|token| HeaderValue::from_str(token).unwrap())
            .collect(),
    );
    Arc::new(move |connection, seq| {
        let mut headers = base.clone();
        if !tokens.is_empty() {
            let index = (connection + seq as usize * connections) % tokens.len();
            headers.insert("user-token", tokens[index].clone());
        }
        get(APP_PATH, headers)
    })
}

/// `count` token-shaped strings nobody issued: what a guessing attacker sends.
pub fn guessed_tokens(count: usize) -> Arc<Vec<String>> {
    use base64::Engine;
    Arc::new(
        (0..count)
            .map(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
            })
            .collect(),
    )
}

/// POST `/login` with a fresh single-use code from the simulator for each request; users come
/// back in turn from a pool of `users`, so a storm is a mix of first and repeated logins.
pub fn login(
    addr: SocketAddr,
    simulator: Arc<Simulator>,
    prefix: &'static str,
    users: u64,
) -> MakeRequest {
    let base = client_headers(addr);
    let next = Arc::new(AtomicU64::new(0));
    Arc::new(move |_, _| {
        let n = next.fetch_add(1, Ordering::Relaxed) % users;
        let code = simulator.mint_code(APPID, &openid(prefix, n as usize), None);
        let mut request = Request::new(Full::new(Bytes::from(format!(r#"{{"code":"{code}"}}"#))));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::from_static("/login");
        *request.headers_mut() = base.clone();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        request
    })
}

/// GET `/app/…` naming an app that is not registered: every answer is a 403. The self-test
/// uses it to prove that the generator counts non-2xx answers.
pub fn unknown_app(addr: SocketAddr) -> MakeRequest {
    let mut base = client_headers(addr);
    base.insert("user-app", HeaderValue::from_static("wxnotregistered00"));
    Arc::new(move |_, _| get(APP_PATH, base.clone()))
}

/// POST `path` with `body` as each of `tokens` in turn (spread over connections like `app_get`).
fn logged_in_post(
    addr: SocketAddr,
    connections: usize,
    tokens: Arc<Vec<String>>,
    path: &'static str,
    body: Bytes,
) -> MakeRequest {
    let base = client_headers(addr);
    let tokens: Arc<Vec<HeaderValue>> = Arc::new(
        tokens
            .iter()
            .map(|t| HeaderValue::from_str(t).unwrap())
            .collect(),
    );
    Arc::new(move |connection, seq| {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = http::Uri::from_static(path);
        *request.headers_mut() = base.clone();
        let index = (connection + seq as usize * connections) % tokens.len();
        request
            .headers_mut()
            .insert("user-token", tokens[index].clone());
        request
    })
}

/// POST `/credentials` with what `wx.getUserProfile` returns, encrypted and signed with the
/// seeded users' session key exactly as WeChat does (no `openId`: getUserProfile omits it).
pub fn credentials(addr: SocketAddr, connections: usize, tokens: Arc<Vec<String>>) -> MakeRequest {
    use mpapi::wechat::crypto;
    let profile = serde_json::json!({
        "nickName": "微信用户", "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/bench/132",
        "gender": 0, "watermark": { "appid": APPID, "timestamp": 1_700_000_000 },
    });
    let iv = "MDAwMDAwMDAwMDAwMDAwMA==";
    let encrypted =
        crypto::encrypt_user_data(SESSION_KEY, profile.to_string().as_bytes(), iv).unwrap();
    let raw_data =
        r#"{"nickName":"微信用户","avatarUrl":"https://thirdwx.qlogo.cn/mmopen/vi_32/bench/132"}"#;
    let body = serde_json::json!({
        "raw_data": raw_data,
        "signature": crypto::raw_data_signature(raw_data, SESSION_KEY),
        "encrypted_data": encrypted,
        "iv": iv,
    });
    logged_in_post(
        addr,
        connections,
        tokens,
        "/credentials",
        Bytes::from(body.to_string()),
    )
}

/// POST `/notify`: a subscribe message due far in the future (so the dispatcher leaves it).
pub fn notify_enqueue(
    addr: SocketAddr,
    connections: usize,
    tokens: Arc<Vec<String>>,
) -> MakeRequest {
    notify_at(addr, connections, tokens, "2099-01-01 09:00:00")
}

/// POST `/notify`: a subscribe message due at `active_at` (the app's time zone).
pub fn notify_at(
    addr: SocketAddr,
    connections: usize,
    tokens: Arc<Vec<String>>,
    active_at: &str,
) -> MakeRequest {
    let body = serde_json::json!({
        "template_id": "tmpl-bench",
        "page": "pages/index/index",
        "data": { "thing1": { "value": "Your parcel is on its way" } },
        "active_at": active_at,
    });
    logged_in_post(
        addr,
        connections,
        tokens,
        "/notify",
        Bytes::from(body.to_string()),
    )
}
