//! Customer-service messages: WeChat pushes them to `/message_receive`, mpapi forwards them to
//! the app's help desk (`apps[].messages.forward_url`).
//!
//! WeChat waits 5 seconds for an answer and then retries, so the request path only proves the
//! push comes from WeChat ([`push`]), reads it ([`message`]), records it in the store and
//! answers `success`. Delivery happens in the background ([`forwarder`]):
//!
//! ```text
//! push ─ verify, decrypt, read ─ INSERT (unique appid + MsgId) ─ "success" ─┐ wake
//!                                  └ duplicate: WeChat's retry, not recorded  ▼
//! forwarder (every node): due rows ─ claim (lease) ─ POST forward_url ─ delivered
//!                                                       └ failed: retry with back-off
//! ```
//!
//! Recording before answering makes delivery survive a restart; the unique key makes a retried
//! push (on any node) a no-op; the claim makes each attempt happen on one node only. Delivery is
//! at least once: a node that dies between the help desk's answer and the `delivered` write
//! leaves the row to be delivered again after the lease.

pub mod forwarder;
pub mod message;
pub mod push;
pub mod xml;

use std::time::Duration;

use tokio::sync::Notify;

/// How long the help desk may take to answer one forward.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The forwarder's handle, shared by the request path (which wakes it) and its loop.
pub struct Forwarder {
    wake: Notify,
    http: reqwest::Client,
}

impl Forwarder {
    /// A forwarder; it has work only while some app has a `forward_url`.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            wake: Notify::new(),
            http,
        })
    }

    /// A message was recorded: look for due messages now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}
