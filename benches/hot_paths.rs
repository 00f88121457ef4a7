//! Micro-benchmarks of what mpapi does per request, each on the real code path:
//!
//! - `session/*`: authenticating a token — cached (the common case), its parts (HMAC check,
//!   SHA-256), and a cache miss served from a SQLite store;
//! - `identity/*`: building the upstream request's headers from a real client request: strip
//!   client-sent identity in one pass, inject the session's five pre-rendered values;
//! - `routing/*`: picking the app's next healthy upstream (pingora-load-balancing's round robin),
//!   and the whole upstream request as the gateway prepares it (identity, path, `Host`,
//!   `Authorization`);
//! - `crypto/*`: AES decryption of `encryptedData`, and a safe-mode push's signature check
//!   and decryption.
//!
//! `cargo bench --bench hot_paths`. Run without `--bench` (as `cargo test --all-targets`
//! does), criterion runs every benchmark once as a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use mpapi::config::{Config, DatabaseConfig, SessionConfig};
use mpapi::gateway::RequestCtx;
use mpapi::gateway::identity::{self, IdentityHeaders};
use mpapi::gateway::routing::Apps;
use mpapi::session::Sessions;
use mpapi::session::token::{self, TokenSigner};
use mpapi::store::{Store, UserRow};
use mpapi::types::Secret;
use mpapi::wechat::crypto::{self, PushCipher};
use pingora::http::RequestHeader;

const APPID: &str = "wxbench000000001";
const TOKEN_KEY: &str = "hot-paths-bench-token-key-0123456789";

/// A store and sessions on a fresh SQLite file, removed on drop.
struct World {
    runtime: tokio::runtime::Runtime,
    store: Arc<Store>,
    dir: std::path::PathBuf,
}

impl World {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("mpapi_hot_{}", mpapi::sim::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let config = DatabaseConfig {
            url: Secret::new(format!("sqlite://{}/mpapi.db?mode=rwc", dir.display())),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = Arc::new(runtime.block_on(Store::connect(&config)).unwrap());
        Self {
            runtime,
            store,
            dir,
        }
    }

    fn sessions(&self, cache_capacity: u64) -> Sessions {
        let config = SessionConfig {
            ttl: Duration::from_secs(7 * 86_400),
            extend_interval: Duration::from_secs(3_600),
            cache_capacity,
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(10),
            token_key: Some(Secret::new(TOKEN_KEY)),
            sync_interval: Duration::from_millis(500),
        };
        self.runtime
            .block_on(Sessions::new(
                self.store.clone(),
                &config,
                mpapi::observe::Metrics::new(),
            ))
            .unwrap()
    }

    /// Log `count` users in through `sessions`; returns their tokens.
    fn login(&self, sessions: &Sessions, prefix: &str, count: usize) -> Vec<String> {
        self.runtime.block_on(async {
            let mut tokens = Vec::with_capacity(count);
            for n in 0..count {
                let openid = format!("o{prefix:-<5}{n:0>22}");
                let login = sessions
                    .login(APPID, &openid, Some("uBench"), "c2Vzc2lvbmtleXNlc3Npb24=")
                    .await
                    .unwrap();
                tokens.push(login.token);
            }
            tokens
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A user with everything a profile and a mobile add: all five headers are non-empty.
fn full_user() -> UserRow {
    UserRow {
        id: 1_234_567,
        appid: APPID.into(),
        openid: "oBench0000000000000000000001".into(),
        unionid: Some("uBench0000000000000000000001".into()),
        session_key: "c2Vzc2lvbmtleXNlc3Npb24=".into(),
        expires_at: i64::MAX,
        nickname: Some("微信用户 Bench".into()),
        avatar_url: Some(
            "https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4TwGTfTKbqNzXvBnWdJ8cX0Zicg9YmGhibtDA5ESYicJ0o5iaPfdLrh7jQ/132"
                .into(),
        ),
        phone_number: Some("+86 13800138000".into()),
        pure_phone_number: Some("13800138000".into()),
        country_code: Some("86".into()),
    }
}

/// A request as Pingora hands it to the gateway: parsed from a mini program's bytes, header
/// names' case preserved.
fn client_request(token: &str) -> RequestHeader {
    let mut request = RequestHeader::build("GET", b"/app/orders/7?page=2", Some(10)).unwrap();
    let headers = [
        ("Host", "api.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI \
             Language/zh_CN miniProgram/wxbench000000001",
        ),
        ("Accept", "*/*"),
        ("Accept-Encoding", "gzip, deflate, br"),
        (
            "Referer",
            "https://servicewechat.com/wxbench000000001/42/page-frame.html",
        ),
        ("Content-Type", "application/json"),
        ("User-App", APPID),
        ("User-Token", token),
        ("Connection", "keep-alive"),
    ];
    for (name, value) in headers {
        request.append_header(name.to_string(), value).unwrap();
    }
    request
}

fn session(c: &mut Criterion) {
    let world = World::new();
    let sessions = world.sessions(1_000);
    let token = world.login(&sessions, "hit", 1).remove(0);
    let signer = TokenSigner::new(TOKEN_KEY);
    let mut group = c.benchmark_group("session");
    group.bench_function("authenticate_cached", |b| {
        b.iter(|| {
            world
                .runtime
                .block_on(sessions.authenticate(APPID, black_box(&token)))
                .unwrap()
        })
    });
    group.bench_function("token_verify_hmac", |b| {
        b.iter(|| signer.verify(black_box(&token)))
    });
    group.bench_function("token_sha256", |b| {
        b.iter(|| token::hash(black_box(&token)))
    });

    // More live sessions than the cache holds, visited in turn: nearly every one is a miss.
    let small = world.sessions(16);
    let tokens = world.login(&small, "miss", 2_000);
    let mut next = 0;
    group.bench_function("authenticate_cache_miss_sqlite", |b| {
        b.iter(|| {
            next = (next + 1) % tokens.len();
            world
                .runtime
                .block_on(small.authenticate(APPID, &tokens[next]))
                .unwrap()
        })
    });
    let hash = hex::encode(token::hash(&tokens[0]));
    group.bench_function("store_user_by_token_hash_sqlite", |b| {
        b.iter(|| {
            world
                .runtime
                .block_on(world.store.user_by_token_hash(black_box(&hash)))
                .unwrap()
        })
    });
    let user = full_user();
    group.bench_function("render_identity_headers", |b| {
        b.iter(|| IdentityHeaders::render(black_box(&user)))
    });
    group.finish();
}

fn headers(c: &mut Criterion) {
    let token = TokenSigner::new(TOKEN_KEY).issue();
    let request = client_request(&token);
    let identity = IdentityHeaders::render(&full_user());
    let mut spoofed = client_request(&token);
    for name in ["User-Id", "user_openid", "USER-EXTRA"] {
        spoofed.append_header(name.to_string(), "forged").unwrap();
    }
    let mut group = c.benchmark_group("identity");
    group.bench_function("strip_and_inject", |b| {
        b.iter_batched_ref(
            || request.headers.clone(),
            |headers| {
                identity::strip_client_identity(headers);
                identity::inject(headers, &identity).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("strip_and_inject_spoofed", |b| {
        b.iter_batched_ref(
            || spoofed.headers.clone(),
            |headers| {
                identity::strip_client_identity(headers);
                identity::inject(headers, &identity).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("strip_anonymous", |b| {
        b.iter_batched_ref(
            || request.headers.clone(),
            identity::strip_client_identity,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let world = World::new();
    let sessions = world.sessions(1_000);
    let token = world.login(&sessions, "route", 1).remove(0);
    let session = world
        .runtime
        .block_on(sessions.authenticate(APPID, &token))
        .unwrap();
    let yaml = format!(
        r#"
server:
  listen: "127.0.0.1:0"
database:
  url: "sqlite::memory:"
wechat:
  api_base: "http://127.0.0.1:9000"
apps:
  - appid: "{APPID}"
    secret: "bench"
    upstreams: ["http://127.0.0.1:9001/api", "http://127.0.0.1:9002/api"]
    host_token: "bench-host-token"
"#
    );
    let config = Config::parse(&yaml, &|_| None).unwrap();
    let apps = world
        .runtime
        .block_on(Apps::build(&config, None, &mpapi::observe::Metrics::new()))
        .unwrap();
    let app = apps.get(APPID).unwrap().clone();
    let ctx = RequestCtx {
        upstream: app.pick_upstream().map(|(upstream, _)| upstream),
        app: Some(app.clone()),
        session: Some(session),
        request_id: Some(mpapi::gateway::forwarded::new_request_id()),
        client: Some(mpapi::gateway::forwarded::Client::of(
            &client_request(&token),
            "203.0.113.7".parse().unwrap(),
            &Default::default(),
        )),
        ..RequestCtx::default()
    };
    let request = client_request(&token);
    let mut group = c.benchmark_group("routing");
    group.bench_function("pick_upstream", |b| b.iter(|| app.pick_upstream().unwrap()));
    // The path check every proxied request pays: a path that needs no change (nearly all)
    // and one with dot segments to resolve.
    group.bench_function("path_check_plain", |b| {
        b.iter(|| mpapi::gateway::path::resolve(black_box("/app/orders/7/items")).unwrap())
    });
    group.bench_function("path_check_dot_segments", |b| {
        b.iter(|| {
            mpapi::gateway::path::resolve(black_box("/app/orders/./7/../8/%2e%2E/items")).unwrap()
        })
    });
    // The rate limits of native endpoints (not consulted for `/app/*`), at their defaults.
    let limits = mpapi::gateway::limits::RateLimits::new(&mpapi::config::LimitsConfig {
        login_per_ip_per_minute: Some(u32::MAX),
        native_per_token_per_minute: Some(u32::MAX),
    });
    let client: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    group.bench_function("limit_login_per_address", |b| {
        b.iter(|| limits.admit_login(black_box(Some(client))).unwrap())
    });
    group.bench_function("limit_native_per_token", |b| {
        b.iter(|| {
            limits
                .admit_native(black_box(Some(token.as_bytes())))
                .unwrap()
        })
    });
    // Everything the upstream request goes through: strip, inject, path rewrite, `Host`,
    // `Authorization`, the forwarding headers and a made-up request id.
    group.bench_function("prepare_upstream_request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |request| mpapi::gateway::prepare_upstream_request(request, &ctx).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn wechat_crypto(c: &mut Criterion) {
    let session_key = "tiihtNczf5v6AKRyjwEUhQ==";
    let iv = "r7BXXKkLb8qrSNn05n0qiA==";
    let user_info = serde_json::json!({
        "openId": "oGZUI0egBJY1zhBYw2KhdUfwVJJE",
        "nickName": "微信用户 Bench",
        "gender": 1,
        "language": "zh_CN",
        "city": "Guangzhou",
        "province": "Guangdong",
        "country": "CN",
        "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4TwGTfTKbqNzXvBnWdJ8cX0Zicg9YmGhibtDA5ESYicJ0o5iaPfdLrh7jQ/132",
        "unionId": "ocMvos6NjeKLIBqg5Mr9QjxrP1FA",
        "watermark": { "timestamp": 1_700_000_000, "appid": APPID }
    })
    .to_string();
    let encrypted = crypto::encrypt_user_data(session_key, user_info.as_bytes(), iv).unwrap();

    let cipher = PushCipher::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
    let message = r#"<xml><ToUserName><![CDATA[gh_abcdef123456]]></ToUserName><FromUserName><![CDATA[oGZUI0egBJY1zhBYw2KhdUfwVJJE]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好，我想查询订单 7 的物流]]></Content><MsgId>23456789012345678</MsgId></xml>"#;
    let encrypt = cipher.encrypt(message, APPID);
    let (push_token, timestamp, nonce) = ("pushtoken", "1700000000", "1320562132");
    let signature = crypto::msg_signature(push_token, timestamp, nonce, &encrypt);

    let mut group = c.benchmark_group("crypto");
    group.bench_function("decrypt_user_data", |b| {
        b.iter(|| crypto::decrypt_user_data(session_key, black_box(&encrypted), iv).unwrap())
    });
    group.bench_function("push_verify_msg_signature", |b| {
        b.iter(|| {
            crypto::verify_msg_signature(
                push_token,
                timestamp,
                nonce,
                black_box(&encrypt),
                &signature,
            )
        })
    });
    group.bench_function("push_decrypt", |b| {
        b.iter(|| cipher.decrypt(black_box(&encrypt), APPID).unwrap())
    });
    group.bench_function("push_verify_and_decrypt", |b| {
        b.iter(|| {
            assert!(crypto::verify_msg_signature(
                push_token,
                timestamp,
                nonce,
                black_box(&encrypt),
                &signature
            ));
            cipher.decrypt(&encrypt, APPID).unwrap()
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = session, headers, routing, wechat_crypto
}
criterion_main!(hot_paths);
