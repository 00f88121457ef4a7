//! The gateway: mpapi's one `ProxyHttp` implementation. Each phase is a few lines that call the
//! module named for the job; per-request facts live in [`RequestCtx`].
//!
//! ```text
//! request_filter           the header is whole (slow_clients); route the path; resolve the
//!                          app (User-App or ?appid=); one pass over the header names (scan);
//!                          native endpoint → answer here (api::serve), done;
//!                          /app/*          → authenticate User-Token (session), continue
//! upstream_peer            next healthy upstream of the app (routing); Pingora's hop-by-hop
//!                          sanitation only when there is something to sanitise (scan)
//! upstream_request_filter  strip client identity (and a plain `Connection`), inject the
//!                          session's, rewrite path, Host, Authorization, forwarding headers,
//!                          request id (identity, forwarded, routing)
//! fail_to_proxy            any failure → the JSON envelope (respond)
//! logging                  metrics and access log; the connection's next bytes are a new
//!                          header (slow_clients)
//! ```
//!
//! Beneath the phases, every client connection runs in a `slow_clients::GuardedStream`, which
//! cuts off a header that trickles in and an answer nobody reads, and, when a cap is set,
//! holds the connection's place under its address's cap (`connection_cap`).

pub mod connection_cap;
pub mod ctx;
pub mod forwarded;
pub mod health;
pub mod identity;
pub mod limits;
pub mod path;
pub mod respond;
pub mod routing;
pub mod scan;
pub mod slow_clients;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::HttpUpstreamRequestPolicy;
use pingora::{Error, ErrorSource, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session as HttpSession};
use tracing::Instrument as _;

use crate::api::{self, Endpoint};
use crate::error::ApiError;
use crate::observe::{AccessRecord, RouteLabel};
use crate::session::Session;
use crate::state::{Routing, State};
pub use ctx::RequestCtx;
use routing::App;

/// How a request path is served.
enum Route {
    /// `/app` and below: proxied to the app's upstreams.
    Proxy,
    /// Answered by mpapi itself.
    Native(Endpoint),
}

impl Route {
    /// The `route` label of metrics and the access log.
    fn label(route: Option<&Route>) -> RouteLabel {
        match route {
            None => RouteLabel::Unknown,
            Some(Route::Proxy) => RouteLabel::App,
            Some(Route::Native(endpoint)) => match endpoint {
                Endpoint::Login => RouteLabel::Login,
                Endpoint::Logout => RouteLabel::Logout,
                Endpoint::WxCode => RouteLabel::Wxcode,
                Endpoint::Credentials => RouteLabel::Credentials,
                Endpoint::Mobile => RouteLabel::Mobile,
                Endpoint::MessageReceive => RouteLabel::MessageReceive,
                Endpoint::MessageReply => RouteLabel::MessageReply,
                Endpoint::Notify | Endpoint::NotifyItem(_) => RouteLabel::Notify,
            },
        }
    }

    fn of(path: &str) -> Option<Self> {
        if path == "/app" || path.starts_with("/app/") {
            Some(Self::Proxy)
        } else {
            Endpoint::from_path(path).map(Self::Native)
        }
    }
}

/// The proxy.
pub struct Gateway {
    /// Set once the shared state is built. Under Pingora's `Server` the proxy service is made
    /// before it (the state is built by a service that may run after a daemon's fork) and
    /// starts accepting only after it, so a request always finds it set.
    state: Arc<OnceLock<Arc<State>>>,
}

impl Gateway {
    pub fn new(state: Arc<OnceLock<Arc<State>>>) -> Self {
        Self { state }
    }

    fn state(&self) -> Result<&Arc<State>> {
        self.state
            .get()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "starting"))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default is a compression module, disabled, that still
    /// costs every request a module context and a call in each phase (about 1,200 instructions
    /// by `scripts/instructions.sh`); mpapi compresses nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        let observed = self
            .state
            .get()
            .is_some_and(|state| state.observes_requests());
        RequestCtx {
            started: observed.then(Instant::now),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(
        &self,
        session: &mut HttpSession,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        slow_clients::header_received(session);
        let state = self.state()?;
        // The routing in force now serves this request to its end (its app is kept in `ctx`).
        let routing = state.routing();
        let scanned = scan::scan(&session.req_header().headers);
        ctx.hop_by_hop = scanned.hop_by_hop;
        identify_request(session, ctx, &routing, scanned.request_id);
        let app = resolve_app(&routing, session.req_header(), scanned.user_app);
        drop(routing);
        let route = Route::of(session.req_header().uri.path());
        ctx.route = Route::label(route.as_ref());
        match admit(state, session.req_header(), ctx, &scanned, route, app).await {
            Ok(None) => {
                forget_header_case(session.req_header_mut());
                Ok(false)
            }
            Ok(Some((endpoint, app))) => {
                carry_request_id(session, ctx)?;
                // Boxed so that proxied requests do not carry the endpoints' kilobytes of
                // state in this phase's future (Pingora allocates it on every request).
                // Every log line of the call carries the request's id.
                let request_id = ctx.request_id.as_ref().and_then(|id| id.to_str().ok());
                let span = tracing::info_span!("request", request_id);
                Box::pin(api::serve(state, session, endpoint, &app).instrument(span)).await?;
                Ok(true)
            }
            Err(error) => {
                carry_request_id(session, ctx)?;
                respond::error(session, &error).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut HttpSession,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (upstream, addr) = ctx
            .app
            .as_ref()
            .and_then(|app| app.pick_upstream())
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no healthy upstream"))?;
        let server = &self.state()?.config.server;
        let mut peer = if upstream.config.tls {
            // Verified against the system's roots, or the ones `server.upstream_ca` adds to them.
            let mut peer = HttpPeer::new(addr, true, upstream.config.sni.clone());
            peer.options.ca = upstream.roots.clone();
            peer.group_key = upstream.pool_key;
            peer
        } else {
            HttpPeer::new(addr, false, String::new())
        };
        peer.options.connection_timeout = Some(server.upstream_connect_timeout);
        peer.options.read_timeout = Some(server.upstream_read_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        if ctx.hop_by_hop.skips_sanitation() {
            // Nothing for Pingora's sanitation to do but drop `Connection`, which
            // `prepare_upstream_request` does in its own pass (see `scan`).
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        ctx.upstream = Some(upstream);
        if ctx.started.is_some() {
            ctx.upstream_started = Some(Instant::now());
        }
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut HttpSession,
        response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_status = response.status.as_u16();
        ctx.upstream_time = ctx.upstream_started.map(|at| at.elapsed());
        Ok(())
    }

    async fn logging(
        &self,
        session: &mut HttpSession,
        _error: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        slow_clients::request_done(session);
        // `started` is set only when something records requests.
        if let (Ok(state), Some(started)) = (self.state(), ctx.started) {
            observe_request(state, session, ctx, started.elapsed());
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut HttpSession,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        prepare_upstream_request(request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut HttpSession,
        response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        respond::close_if_shutting_down(session);
        if let Some(id) = &ctx.request_id {
            response.insert_header(REQUEST_ID, id.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut HttpSession,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(503), _) => ApiError::UpstreamUnavailable(e.to_string()),
            (ErrorType::HTTPStatus(400), _) => ApiError::InvalidParam("malformed request".into()),
            (ErrorType::HTTPStatus(413), _) => ApiError::PayloadTooLarge(0),
            (_, ErrorSource::Upstream) => ApiError::UpstreamUnavailable(e.to_string()),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            (_, ErrorSource::Downstream) => ApiError::InvalidParam("malformed request".into()),
            _ => ApiError::UpstreamUnavailable(e.to_string()),
        };
        let request_id = ctx.request_id.as_ref().and_then(|id| id.to_str().ok());
        tracing::warn!(error = %e, status = error.status(), request_id, "request failed");
        let mut status = error.status();
        // The connection is not reused (the request body may be unread): say so in the answer,
        // or a keep-alive client sends its next request into a closing connection.
        session.set_keepalive(None);
        let written = match carry_request_id(session, ctx) {
            Ok(()) => respond::error(session, &error).await,
            Err(error) => Err(error),
        };
        if let Err(write_error) = written {
            tracing::debug!(error = %write_error, "could not write the error response");
            status = 0;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// Count a finished request in the metrics and write its access log line.
fn observe_request(state: &State, session: &HttpSession, ctx: &RequestCtx, elapsed: Duration) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let appid = ctx.app.as_ref().map(|app| app.config.appid.as_str());
    if state.counts_requests {
        let app = ctx.app.as_ref().map(|app| &app.metrics);
        state.metrics.request(app, ctx.route, status, elapsed);
        if let Some(upstream) = &ctx.upstream {
            upstream.requests.inc(ctx.upstream_status);
        }
    }
    if let Some(log) = &state.access_log {
        let request = session.req_header();
        log.record(&AccessRecord {
            request_id: ctx.request_id.as_ref().and_then(|id| id.to_str().ok()),
            client_ip: ctx.client.map(|client| client.real_ip),
            method: request.method.as_str(),
            path: request.uri.path(),
            status,
            duration: elapsed,
            bytes_sent: session.body_bytes_sent(),
            app: appid,
            route: ctx.route.as_str(),
            user_id: ctx.session.as_ref().map(|s| s.user_id),
            upstream: ctx.upstream.as_ref().map(|u| u.label.as_str()),
            upstream_time: ctx.upstream_time,
        });
    }
}

/// The headers naming the app and carrying the session's token, parsed at compile time.
pub(crate) static USER_APP: http::HeaderName = http::HeaderName::from_static("user-app");
pub(crate) static USER_TOKEN: http::HeaderName = http::HeaderName::from_static("user-token");

/// Headers the upstream request may gain: five identity headers, `Host`, `Authorization`,
/// three forwarding headers and `X-Request-Id`.
const ADDED_HEADERS: usize = 11;

/// Turn the client's request into the upstream's: strip client-sent identity, inject the
/// session's, rewrite the path under the upstream's prefix, set `Host`, `Authorization`, the
/// forwarding headers and a made-up `X-Request-Id`.
///
/// The work is done on the request's own `http` parts, not through Pingora's header API,
/// which parses and allocates each name it is given and keeps a second map with each name's
/// original case: here the names are parsed at compile time, room for them is made once, and
/// one map changes (1.97 → 1.04 µs for the whole of it, `benches/hot_paths.rs`). The
/// upstream then receives header names in lower case (as over HTTP/2; Pingora titles `Host`,
/// `Content-Type`, `Content-Length` and a few more), which HTTP defines as case-insensitive.
pub fn prepare_upstream_request(request: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let end_stream = request.send_end_stream();
    let mut parts = http::request::Parts::from(std::mem::replace(request, placeholder_request()));
    let headers = &mut parts.headers;
    headers
        .try_reserve(ADDED_HEADERS)
        .map_err(too_many_headers)?;
    identity::strip_client_identity(headers);
    if ctx.hop_by_hop == scan::HopByHop::ConnectionOnly {
        headers.remove(http::header::CONNECTION);
    }
    if let Some(user) = &ctx.session {
        identity::inject(headers, &user.identity)?;
    }
    if let Some(upstream) = &ctx.upstream {
        let rewritten = match &ctx.resolved_path {
            Some(resolved) => {
                let mut path = resolved.clone();
                if let Some(query) = parts.uri.query() {
                    path.push('?');
                    path.push_str(query);
                }
                routing::upstream_path(&upstream.config.path_prefix, &path)
            }
            None => {
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                routing::upstream_path(&upstream.config.path_prefix, path)
            }
        };
        // From the `String` itself: the URI keeps its buffer instead of copying it.
        parts.uri = http::Uri::try_from(rewritten)
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "bad request path"))?;
        headers
            .try_insert(http::header::HOST, upstream.host.clone())
            .map_err(too_many_headers)?;
    }
    if let Some(authorization) = ctx.app.as_ref().and_then(|app| app.authorization.clone()) {
        headers
            .try_insert(http::header::AUTHORIZATION, authorization)
            .map_err(too_many_headers)?;
    }
    if let Some(client) = &ctx.client {
        client.write_headers(headers, ctx.https)?;
    }
    if let Some(id) = ctx.made_up_request_id() {
        headers
            .try_insert(forwarded::X_REQUEST_ID.clone(), id.clone())
            .map_err(too_many_headers)?;
    }
    *request = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        request.set_send_end_stream(end_stream);
    }
    Ok(())
}

/// Drop the map of the client's header-name case from a request about to be proxied.
///
/// Pingora copies the client's request for the upstream, both maps of it, and
/// [`prepare_upstream_request`] then drops the copy's case map, unused. Copying and dropping
/// it cost about 1,100 instructions; taking the request apart here costs 650, so a request
/// costs 450 fewer (`scripts/instructions.sh`). Nothing reads the case after this point:
/// mpapi's own answers and logs read names case-insensitively.
fn forget_header_case(request: &mut RequestHeader) {
    if !request.has_case() {
        return;
    }
    let end_stream = request.send_end_stream();
    let parts = http::request::Parts::from(std::mem::replace(request, placeholder_request()));
    *request = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        request.set_send_end_stream(end_stream);
    }
}

/// An empty header map and the default URI: nothing is allocated for it.
fn placeholder_request() -> RequestHeader {
    RequestHeader::from(http::Request::new(()).into_parts().0)
}

/// The error of a header map that would pass `http`'s limit of 32,768 entries.
fn too_many_headers(_: http::header::MaxSizeReached) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(400), "too many headers")
}

/// Put the request's id on the client's request before mpapi answers it itself: its answers
/// (`respond`) read it there. Proxied requests skip this; their id is added upstream.
fn carry_request_id(session: &mut HttpSession, ctx: &RequestCtx) -> Result<()> {
    match ctx.made_up_request_id() {
        Some(id) => session
            .req_header_mut()
            .insert_header(REQUEST_ID, id.clone()),
        None => Ok(()),
    }
}

/// Give the request its id (the client's when acceptable) and note who sent it and over
/// what.
fn identify_request(
    session: &HttpSession,
    ctx: &mut RequestCtx,
    routing: &Routing,
    client_id: Option<&http::HeaderValue>,
) {
    let (id, from_client) = forwarded::request_id(client_id);
    ctx.request_id = Some(id);
    ctx.request_id_from_client = from_client;
    ctx.https = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    ctx.client = peer_ip(session)
        .map(|peer| forwarded::Client::of(session.req_header(), peer, &routing.trusted_proxies));
}

/// Decide how the request is served: proxied (`None`, its session in `ctx`), answered by
/// a native endpoint of `app` (the one the request names, if any), or refused with an error.
async fn admit(
    state: &State,
    request: &RequestHeader,
    ctx: &mut RequestCtx,
    scanned: &scan::HeaderScan<'_>,
    route: Option<Route>,
    app: Option<Arc<App>>,
) -> std::result::Result<Option<(Endpoint, Arc<App>)>, ApiError> {
    // More than one `User-App` or `User-Token`: which one counts would depend on who reads it.
    if scanned.ambiguous_identity {
        return Err(ApiError::InvalidParam(
            "ambiguous User-App or User-Token".into(),
        ));
    }
    let route = route.ok_or(ApiError::NotFound)?;
    let app = app.ok_or(ApiError::AppNotAllowed)?;
    ctx.app = Some(app.clone());
    match route {
        Route::Native(endpoint) => {
            let limits = &state.limits;
            if endpoint == Endpoint::Login {
                limits.admit_login(ctx.client.map(|client| client.real_ip))?;
            } else {
                limits.admit_native(scanned.user_token.map(|value| value.as_bytes()))?;
            }
            Ok(Some((endpoint, app)))
        }
        Route::Proxy => {
            match path::resolve(request.uri.path()) {
                Ok(std::borrow::Cow::Borrowed(_)) => {}
                Ok(std::borrow::Cow::Owned(resolved)) => ctx.resolved_path = Some(resolved),
                Err(_) => return Err(ApiError::InvalidParam("path outside the app".into())),
            }
            ctx.session = authenticate(state, scanned.user_token, &app).await?;
            Ok(None)
        }
    }
}

/// The session of `User-Token`; anonymous (`None`) when absent, unless the app requires login.
async fn authenticate(
    state: &State,
    token: Option<&http::HeaderValue>,
    app: &App,
) -> std::result::Result<Option<Arc<Session>>, ApiError> {
    match token {
        Some(token) => {
            let token = token.to_str().map_err(|_| ApiError::NotLoggedIn)?;
            let session = state
                .sessions
                .authenticate(&app.config.appid, token)
                .await?;
            Ok(Some(session))
        }
        None if app.config.require_login => Err(ApiError::NotLoggedIn),
        None => Ok(None),
    }
}

/// The app named by `User-App` (its first value, `user_app`), or by `?appid=` when the header
/// is absent.
fn resolve_app(
    routing: &Routing,
    request: &RequestHeader,
    user_app: Option<&http::HeaderValue>,
) -> Option<Arc<App>> {
    if let Some(value) = user_app {
        return routing.apps.get(value.to_str().ok()?).cloned();
    }
    let query = request.uri.query()?;
    let (_, appid) =
        url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "appid")?;
    routing.apps.get(&appid).cloned()
}

/// The header carrying the request's id.
const REQUEST_ID: &str = "x-request-id";

/// The TCP peer's address (`None` on a Unix socket).
fn peer_ip(session: &HttpSession) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
}
