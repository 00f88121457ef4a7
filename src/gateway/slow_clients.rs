//! Clients too slow to serve: one that takes longer than `server.client_header_timeout_ms` to
//! send a request header once it has begun (on a new connection, once the connection is
//! open), and one that stops reading its answer for `server.client_send_timeout_ms`. Either
//! loses its connection.
//!
//! Pingora times each read on its own (60 s), so a client that sends its header a byte a
//! minute holds a connection, its task and its buffers as long as it likes: many such clients
//! exhaust a proxy without sending anything of note (slowloris). A client that opens
//! connections and sends nothing on them holds each for Pingora's 60 s. Nor does Pingora time
//! writes to a client, so one that stops reading holds its request, and its upstream
//! connection, forever. nginx bounds all three (`client_header_timeout`, which also times a
//! new connection's wait for its first request, and `send_timeout`); so does mpapi, by
//! wrapping each accepted connection ([`GuardedApp`]) in a stream that keeps the two clocks
//! ([`GuardedStream`]).
//!
//! The stream cannot tell a header from a body, so the gateway tells it: the header is whole
//! when `request_filter` runs ([`header_received`]), and the next one may begin once the
//! request is logged ([`request_done`]). A header that arrives in one read (almost all of
//! them) never starts a timer: the clock starts only when a read finds nothing more to read
//! while a begun header is incomplete, or a new connection's first request has not begun yet,
//! and likewise for a write that cannot proceed. A request body is read under Pingora's
//! per-read timeout.
//!
//! The same stream times an HTTP/1 connection's wait for its next request
//! (`server.client_keepalive_timeout_seconds`), which Pingora leaves unlimited once a request
//! has asked for keep-alive (HTTP/1.1's default). Pingora could time it if told how long, but
//! it would register a timer for every request whose successor has not arrived yet (in a
//! busy proxy, every request: about 1,100 instructions); the stream keeps one timer for the
//! connection's life and moves its deadline forward, an atomic update. Pingora keeps the rest:
//! [`ClientLimits::server_options`] sets the idle time of an HTTP/2 connection and the
//! requests an HTTP/1 one serves (`server.client_keepalive_requests`).
//!
//! An HTTP/2 connection is timed only until its client preface has arrived, as a first
//! header is (Pingora's HTTP/2 handshake waits for the preface without a limit). After that a
//! header is a frame of a multiplexed stream, which the h2 layer reads, and the connection's
//! idle time is Pingora's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use pingora_proxy::Session as HttpSession;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::config::ServerConfig;
use crate::gateway::connection_cap::{ConnectionCap, ConnectionSlot};
use crate::observe::Metrics;
use crate::observe::metrics::ClientTimeout;
use crate::state::State;

/// How long a client may take, and how long and how much its connection may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// From a request's first byte to the end of its header (from the opening, for a
    /// connection's first).
    pub header: Duration,
    /// A write to the client that makes no progress.
    pub send: Duration,
    /// An idle wait for the connection's next request.
    pub keepalive: Duration,
    /// Requests an HTTP/1 connection serves; `None`: no limit.
    pub keepalive_requests: Option<u32>,
    /// Connections one client address may have open at once; 0: no cap.
    pub connections_per_address: u32,
}

impl ClientLimits {
    pub fn of(server: &ServerConfig) -> Self {
        Self {
            header: server.client_header_timeout,
            send: server.client_send_timeout,
            keepalive: server.client_keepalive_timeout,
            keepalive_requests: server.client_keepalive_requests,
            connections_per_address: server.client_connections_per_address,
        }
    }

    /// The limits Pingora keeps itself: how many requests an HTTP/1 connection serves, and how
    /// long an HTTP/2 connection with no stream open stays (Pingora's default for both: for
    /// good).
    pub fn server_options(&self) -> HttpServerOptions {
        let mut options = HttpServerOptions::default();
        // Pingora counts the reuses of a connection, one fewer than its requests.
        options.keepalive_request_limit = self.keepalive_requests.map(|limit| limit - 1);
        options.h2_idle_timeout = Some(self.keepalive);
        options
    }
}

/// A Pingora application whose connections are each wrapped in a [`GuardedStream`], once
/// admitted under the cap of their address.
pub struct GuardedApp<A> {
    app: Arc<A>,
    limits: ClientLimits,
    /// `server.client_connections_per_address`, when set.
    cap: Option<Arc<ConnectionCap>>,
    /// Where the metrics are, once the state is built (`mpapi_client_timeouts_total`,
    /// `mpapi_client_connections_refused_total`).
    state: Arc<OnceLock<Arc<State>>>,
}

impl<A> GuardedApp<A> {
    pub fn new(app: A, limits: ClientLimits, state: Arc<OnceLock<Arc<State>>>) -> Self {
        Self {
            app: Arc::new(app),
            cap: ConnectionCap::new(limits.connections_per_address),
            limits,
            state,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    /// Hands the wrapped stream to the application and returns the application's own future,
    /// not one awaiting it: a future of its own would be one more allocation a connection and
    /// one more layer of every poll of it.
    fn process_new<'app, 'watch, 'future>(
        self: &'app Arc<Self>,
        stream: Stream,
        shutdown: &'watch ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<Stream>> + Send + 'future>>
    where
        'app: 'future,
        'watch: 'future,
        Self: 'future,
    {
        // A connection handed back for another round is already guarded.
        let stream: Stream = if stream.as_any().is::<GuardedStream>() {
            stream
        } else {
            let metrics = self.state.get().map(|state| state.metrics.clone());
            let slot = match self.admit(&stream, metrics.as_deref()) {
                Admitted::Yes(slot) => slot,
                // Dropping the stream closes the connection.
                Admitted::No => return Box::pin(std::future::ready(None)),
            };
            Box::new(GuardedStream::new(stream, self.limits, metrics, slot))
        };
        self.app.process_new(stream, shutdown)
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Whether a new connection may be served.
enum Admitted {
    /// Yes, holding this place under its address's cap (none when there is no cap, or the
    /// connection has no IP address).
    Yes(Option<ConnectionSlot>),
    /// No: its address already has as many connections open as the cap allows.
    No,
}

impl<A> GuardedApp<A> {
    fn admit(&self, stream: &Stream, metrics: Option<&Metrics>) -> Admitted {
        let Some(cap) = &self.cap else {
            return Admitted::Yes(None);
        };
        let client = stream
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().and_then(|addr| addr.as_inet()).copied());
        let Some(client) = client else {
            return Admitted::Yes(None);
        };
        match cap.admit(client.ip()) {
            Some(slot) => Admitted::Yes(Some(slot)),
            None => {
                if let Some(metrics) = metrics {
                    metrics.client_connection_refused();
                }
                debug!(
                    client = %client.ip(),
                    "connection over server.client_connections_per_address closed"
                );
                Admitted::No
            }
        }
    }
}

/// Where the connection's current request is: what its reads are.
///
/// A new connection: its first header is timed from its first read, bytes or not.
const NEW_CONNECTION: u8 = 0;
/// Between requests: the next header is timed from its first byte (until then, the wait is
/// keep-alive, timed by [`GuardedStream::idle_too_long`]).
const AWAITING_HEADER: u8 = 1;
/// Reads are a header, and the timer state belongs to it.
const READING_HEADER: u8 = 2;
/// The header is whole: reads are the body, or nothing (or HTTP/2 frames, past the preface).
const PAST_HEADER: u8 = 3;
/// An HTTP/2 connection whose client preface has not all arrived: timed as a first header.
/// HTTP/2 frames its own headers after it; nothing here knows where one ends.
const H2_PREFACE: u8 = 4;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, what an HTTP/2 client sends first.
const H2_PREFACE_LEN: usize = 24;

/// A client connection that times a begun header and a stalled write, and holds its place
/// under its address's cap.
pub struct GuardedStream {
    inner: Stream,
    limits: ClientLimits,
    metrics: Option<Arc<Metrics>>,
    /// [`NEW_CONNECTION`], [`AWAITING_HEADER`], [`READING_HEADER`], [`PAST_HEADER`] or
    /// [`H2_PREFACE`]. The gateway moves it through a shared reference (its session holds the
    /// stream); only the connection's own task touches it, so ordering is moot.
    phase: AtomicU8,
    /// Reads wait under the header timeout, not keep-alive's: a byte of the current header
    /// has arrived, or it is the connection's first.
    header_timed: bool,
    /// Bytes of an HTTP/2 client preface yet to arrive.
    preface_left: usize,
    /// Running while a timed header waits for more bytes.
    header_timer: Option<Pin<Box<Sleep>>>,
    /// Running while a write to the client cannot proceed.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait for the next request runs out, once it has begun.
    idle_deadline: Option<Instant>,
    /// Armed for the latest `idle_deadline`; kept for the connection's life.
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// The connection's place under its address's cap, freed when the connection is dropped.
    _slot: Option<ConnectionSlot>,
}

impl GuardedStream {
    fn new(
        inner: Stream,
        limits: ClientLimits,
        metrics: Option<Arc<Metrics>>,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        let phase = if inner.selected_alpn_proto() == Some(ALPN::H2) {
            H2_PREFACE
        } else {
            NEW_CONNECTION
        };
        Self {
            inner,
            limits,
            metrics,
            phase: AtomicU8::new(phase),
            header_timed: false,
            preface_left: H2_PREFACE_LEN,
            header_timer: None,
            send_timer: None,
            idle_deadline: None,
            idle_timer: None,
            _slot: slot,
        }
    }

    /// Count the timeout and describe it (Pingora logs the error, at INFO: see
    /// `observe::pingora_log`).
    fn timed_out(&self, timeout: ClientTimeout) -> io::Error {
        if let Some(metrics) = &self.metrics {
            metrics.client_timed_out(timeout);
        }
        let what = match timeout {
            ClientTimeout::Header => {
                "the request header took longer than server.client_header_timeout_ms"
            }
            ClientTimeout::Send => "the client read nothing for server.client_send_timeout_ms",
        };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    /// What a write's poll means once the stall timer has had its say.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending if run_out(&mut self.send_timer, self.limits.send, cx) => {
                Poll::Ready(Err(self.timed_out(ClientTimeout::Send)))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.send_timer = None;
                ready
            }
        }
    }
}

/// Reads outside an HTTP/1 request header: an HTTP/2 client preface, a wait for the next request.
impl GuardedStream {
    /// Read towards the end of an HTTP/2 client preface, within the header timeout of the
    /// connection's opening; once it is whole, reads are the h2 layer's.
    fn read_preface(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = buf.filled().len() - filled;
                self.preface_left = self.preface_left.saturating_sub(read);
                if self.preface_left == 0 {
                    self.header_timer = None;
                    self.phase.store(PAST_HEADER, Ordering::Relaxed);
                }
                Poll::Ready(result)
            }
            Poll::Pending if run_out(&mut self.header_timer, self.limits.header, cx) => {
                Poll::Ready(Err(self.timed_out(ClientTimeout::Header)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the wait for the next request has lasted `limits.keepalive` (if not, `cx` is
    /// woken when it will have). The wait begins at its first read that finds nothing.
    fn idle_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self
            .idle_deadline
            .get_or_insert_with(|| Instant::now() + self.limits.keepalive);
        let timer = match &mut self.idle_timer {
            Some(timer) => {
                // Deadlines only move forward, which tokio does without touching its wheel.
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .idle_timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

/// Whether `timer`, started with `limit` when first polled, has run out (if not, `cx` is woken
/// when it does).
fn run_out(timer: &mut Option<Pin<Box<Sleep>>>, limit: Duration, cx: &mut Context<'_>) -> bool {
    timer
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)))
        .as_mut()
        .poll(cx)
        .is_ready()
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// The guarded stream under `session`, if its connection has one (HTTP/1).
fn guarded(session: &HttpSession) -> Option<&GuardedStream> {
    session.stream()?.as_any().downcast_ref::<GuardedStream>()
}

/// The request's header is whole: its connection's reads are no longer timed as a header.
pub fn header_received(session: &HttpSession) {
    if let Some(stream) = guarded(session) {
        stream.phase.store(PAST_HEADER, Ordering::Relaxed);
    }
}

/// The request is over: the connection's next bytes begin the next header, which it may wait
/// for `server.client_keepalive_timeout_seconds`.
pub fn request_done(session: &HttpSession) {
    if let Some(stream) = guarded(session) {
        stream.phase.store(AWAITING_HEADER, Ordering::Relaxed);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.load(Ordering::Relaxed);
        if phase == PAST_HEADER {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if phase == H2_PREFACE {
            return this.read_preface(cx, buf);
        }
        if phase == AWAITING_HEADER || phase == NEW_CONNECTION {
            // A new request: nothing of the last header's timing carries over. A new
            // connection's wait for its first byte counts as its header's, as nginx's
            // `client_header_timeout` counts it: otherwise Pingora's 60 s would apply.
            this.header_timed = phase == NEW_CONNECTION;
            this.header_timer = None;
            this.idle_deadline = None;
            this.phase.store(READING_HEADER, Ordering::Relaxed);
        }
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.header_timed |= buf.filled().len() > filled;
                Poll::Ready(result)
            }
            // Waiting for a later request to begin is keep-alive: past its limit, the
            // connection ends as if the client had closed it (Pingora closes it quietly).
            Poll::Pending if !this.header_timed && this.idle_too_long(cx) => Poll::Ready(Ok(())),
            Poll::Pending if !this.header_timed => Poll::Pending,
            Poll::Pending if run_out(&mut this.header_timer, this.limits.header, cx) => {
                Poll::Ready(Err(this.timed_out(ClientTimeout::Header)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.after_write(cx, poll)
    }
}

// What Pingora asks of a stream beyond reading and writing: the connection's own answers.

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
