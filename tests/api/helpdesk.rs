//! A help desk for the message tests: a real HTTP server that records what mpapi forwards to
//! it, can be made slow or failing, and serves an image for `/message_reply`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::watch;

/// The image `/files/cat.png` serves (a PNG signature and some bytes).
pub const IMAGE: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR not really an image, but bytes all the same";

/// One forward the help desk accepted.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub authorization: Option<String>,
    pub partner: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Forwarded>>,
    attempts: AtomicUsize,
    failures_left: AtomicUsize,
    delay_ms: AtomicU64,
}

/// A running help desk, stopped on drop.
pub struct HelpDesk {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _shutdown: watch::Sender<bool>,
}

impl HelpDesk {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let router = Router::new()
            .route("/inbox", post(inbox))
            .route("/files/cat.png", get(image))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(mpapi::shutdown::wait_for(rx))
                .await
        });
        Self {
            addr,
            inner,
            _shutdown: shutdown,
        }
    }

    /// Where mpapi forwards messages (`forward_url`).
    pub fn inbox_url(&self) -> String {
        format!("http://{}/inbox", self.addr)
    }

    /// The image the help desk replies with.
    pub fn image_url(&self) -> String {
        format!("http://{}/files/cat.png", self.addr)
    }

    /// Answer the next `n` forwards with 503.
    pub fn fail_next(&self, n: usize) {
        self.inner.failures_left.store(n, Ordering::SeqCst);
    }

    /// Wait this long before answering each forward.
    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Forwards accepted so far.
    pub fn received(&self) -> Vec<Forwarded> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Forwards attempted so far (accepted or failed).
    pub fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::SeqCst)
    }

    /// Poll until `n` forwards were accepted, failing the test after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Forwarded> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the help desk got {} of {n} messages within {within:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn inbox(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    inner.attempts.fetch_add(1, Ordering::SeqCst);
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = inner
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inner.received.lock().unwrap().push(Forwarded {
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        partner: query
            .iter()
            .find(|(k, _)| k == "partner")
            .map(|(_, v)| v.clone()),
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    });
    StatusCode::OK
}

async fn image() -> ([(&'static str, &'static str); 1], &'static [u8]) {
    ([("content-type", "image/png")], IMAGE)
}
