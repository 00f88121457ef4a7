//! Per-request state, filled phase by phase so that no later phase re-parses a header.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use super::forwarded::Client;
use super::routing::{App, Upstream};
use super::scan::HopByHop;
use crate::observe::RouteLabel;
use crate::session::Session;

/// What the gateway learnt about one request.
#[derive(Default)]
pub struct RequestCtx {
    /// The app named by `User-App` (or `?appid=`).
    pub app: Option<Arc<App>>,
    /// The caller's session; `None` for anonymous requests.
    pub session: Option<Arc<Session>>,
    /// The upstream chosen for this request.
    pub upstream: Option<Arc<Upstream>>,
    /// The proxied path with dot segments removed, only when it differs from the request's.
    pub resolved_path: Option<String>,
    /// The request's `X-Request-Id` (the client's, or one made up), sent upstream and back.
    pub request_id: Option<HeaderValue>,
    /// Whether the id is the client's own, already on its request (else it is added to the
    /// upstream request, and to the client's when mpapi answers itself).
    pub request_id_from_client: bool,
    /// Who sent the request (peer and client address); `None` on a Unix socket.
    pub client: Option<Client>,
    /// The request's hop-by-hop headers: whether Pingora's sanitation can be skipped.
    pub hop_by_hop: HopByHop,
    /// Whether the client's connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// When the request arrived; `None` when nothing records requests (no clock is read).
    pub started: Option<Instant>,
    /// What the request was, for metrics and the access log.
    pub route: RouteLabel,
    /// When the upstream was picked, then how long until its response header came.
    pub upstream_started: Option<Instant>,
    pub upstream_time: Option<Duration>,
    /// The upstream's response status (0: none came).
    pub upstream_status: u16,
}

impl RequestCtx {
    /// The request's id when mpapi made it up: it is on no request yet, so it is added to the
    /// upstream request, or to the client's when mpapi answers itself.
    pub fn made_up_request_id(&self) -> Option<&HeaderValue> {
        self.request_id
            .as_ref()
            .filter(|_| !self.request_id_from_client)
    }
}
