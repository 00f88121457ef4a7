//! Prometheus metrics of one gateway, in a registry of its own (a test process runs many).
//!
//! Names and labels are part of the interface (dashboards and alerts use them). No label holds
//! anything a client chooses freely: `app` is a configured appid or empty, `route` one of a
//! fixed set, `upstream` a configured `host:port`. On the request path nothing is formatted or
//! hashed: each app and each upstream holds its series already resolved ([`AppMetrics`],
//! [`StatusCounters`]); a series by status is resolved on its first use, and only a status
//! outside the common ones is looked up by its labels.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What a request was, for the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteLabel {
    App,
    Login,
    Logout,
    Wxcode,
    Credentials,
    Mobile,
    Notify,
    MessageReceive,
    MessageReply,
    #[default]
    Unknown,
}

impl RouteLabel {
    pub const ALL: [RouteLabel; 10] = [
        Self::App,
        Self::Login,
        Self::Logout,
        Self::Wxcode,
        Self::Credentials,
        Self::Mobile,
        Self::Notify,
        Self::MessageReceive,
        Self::MessageReply,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Login => "login",
            Self::Logout => "logout",
            Self::Wxcode => "wxcode",
            Self::Credentials => "credentials",
            Self::Mobile => "mobile",
            Self::Notify => "notify",
            Self::MessageReceive => "message_receive",
            Self::MessageReply => "message_reply",
            Self::Unknown => "unknown",
        }
    }
}

/// How a `User-Token` was resolved.
#[derive(Debug, Clone, Copy)]
pub enum Lookup {
    /// Found in the session cache.
    Hit,
    /// Read from the store.
    Miss,
    /// Well-formed and signed, but the store does not know it (or it has ended).
    Unknown,
    /// Malformed, or its tag does not verify: refused without a query.
    Forged,
}

/// What became of one notification send.
#[derive(Debug, Clone, Copy)]
pub enum SendOutcome {
    Sent,
    Retry,
    Failed,
}

/// The statuses whose series are kept resolved; others are looked up by label.
const COMMON_STATUSES: [u16; 16] = [
    0, 200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 413, 429, 500, 502, 503,
];
const COMMON_LABELS: [&str; 16] = [
    "0", "200", "201", "204", "301", "302", "304", "400", "401", "403", "404", "413", "429", "500",
    "502", "503",
];

/// One counter family's series by HTTP status, for fixed leading labels (an app and a route,
/// or an app and an upstream).
pub struct StatusCounters {
    vec: IntCounterVec,
    labels: Vec<String>,
    /// The label of status 0 (no answer): `0` for requests, `error` for upstreams.
    no_answer: &'static str,
    common: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

impl StatusCounters {
    fn new(vec: &IntCounterVec, labels: &[&str], no_answer: &'static str) -> Self {
        Self {
            vec: vec.clone(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            no_answer,
            common: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Count one answer with `status`.
    pub fn inc(&self, status: u16) {
        let label = |i: usize| {
            if COMMON_STATUSES[i] == 0 {
                self.no_answer
            } else {
                COMMON_LABELS[i]
            }
        };
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.common[i]
                .get_or_init(|| self.with_status(label(i)))
                .inc(),
            None => {
                let code = http::StatusCode::from_u16(status).ok();
                let label = code
                    .as_ref()
                    .map_or(self.no_answer, http::StatusCode::as_str);
                self.with_status(label).inc();
            }
        }
    }

    fn with_status(&self, status: &str) -> IntCounter {
        let mut values: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        values.push(status);
        self.vec.with_label_values(&values)
    }
}

/// One app's request series: per route, its duration histogram and its counters by status.
pub struct AppMetrics {
    durations: [Histogram; RouteLabel::ALL.len()],
    requests: [StatusCounters; RouteLabel::ALL.len()],
}

impl AppMetrics {
    fn new(metrics_requests: &IntCounterVec, durations: &HistogramVec, appid: &str) -> Self {
        Self {
            durations: RouteLabel::ALL
                .map(|route| durations.with_label_values(&[appid, route.as_str()])),
            requests: RouteLabel::ALL
                .map(|route| StatusCounters::new(metrics_requests, &[appid, route.as_str()], "0")),
        }
    }
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// For requests with no app (`app=""`).
    no_app: AppMetrics,
    upstream_healthy: IntGaugeVec,
    upstream_requests: IntCounterVec,
    sessions_cached: IntGauge,
    session_lookups: [IntCounter; 4],
    store_queries: IntCounter,
    store_errors: IntCounter,
    wechat_requests: IntCounterVec,
    wechat_duration: HistogramVec,
    access_token_refreshes: IntCounterVec,
    notifications: IntGaugeVec,
    notification_sends: [IntCounter; 3],
    messages_forward_pending: IntGauge,
    config_reloads: IntCounterVec,
    access_log_dropped: IntCounter,
    /// Connections closed for a slow header, then for a client that stopped reading.
    client_timeouts: [IntCounter; 2],
    /// Connections closed on arrival: their address had `server.client_connections_per_address`.
    client_connections_refused: IntCounter,
    /// When the store-backed gauges were last read.
    store_gauges_read: Mutex<Option<Instant>>,
}

/// Why a client connection was closed for slowness (the `timeout` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    /// Its request header was still incomplete `server.client_header_timeout_ms` after it began
    /// (or after its connection opened, for the first).
    Header = 0,
    /// It read nothing of its answer for `server.client_send_timeout_ms`.
    Send = 1,
}

/// The notification states, as the store writes them.
pub const NOTIFICATION_STATES: [&str; 5] = ["pending", "sending", "sent", "failed", "cancelled"];

/// The store-backed gauges are read at most this often, whatever the scrape interval.
const STORE_GAUGES_EVERY: Duration = Duration::from_secs(10);

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(e));
    register(registry, vec)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(e));
    register(registry, vec)
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let vec = HistogramVec::new(opts, labels).unwrap_or_else(|e| invalid(e));
    register(registry, vec)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).unwrap_or_else(|e| invalid(e)),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).unwrap_or_else(|e| invalid(e)),
    )
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        invalid(error);
    }
    metric
}

/// The names, labels and buckets above are constants: a failure is a bug caught by any test.
#[allow(clippy::panic)]
fn invalid(error: prometheus::Error) -> ! {
    panic!("metric definition: {error}")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "mpapi_http_requests_total",
            "Requests answered, by app, route and HTTP status.",
            &["app", "route", "status"],
        );
        let request_duration = histogram_vec(
            &r,
            "mpapi_http_request_duration_seconds",
            "Time from the request's arrival to its last byte answered.",
            &["app", "route"],
        );
        let session_lookups = counter_vec(
            &r,
            "mpapi_session_lookups_total",
            "User-Token resolutions: hit (cache), miss (store), unknown, forged.",
            &["result"],
        );
        let notification_sends = counter_vec(
            &r,
            "mpapi_notification_sends_total",
            "Subscribe-message sends: sent, retry (transient failure), failed (final).",
            &["outcome"],
        );
        let notifications = gauge_vec(
            &r,
            "mpapi_notifications",
            "Notifications in the store by state (read at most every 10 s).",
            &["state"],
        );
        for state in NOTIFICATION_STATES {
            notifications.with_label_values(&[state]);
        }
        let config_reloads = counter_vec(
            &r,
            "mpapi_config_reloads_total",
            "SIGHUP reloads: ok, or refused (the last good configuration stays).",
            &["result"],
        );
        for result in ["ok", "refused"] {
            config_reloads.with_label_values(&[result]);
        }
        let client_timeouts = counter_vec(
            &r,
            "mpapi_client_timeouts_total",
            "Client connections closed for slowness: header (server.client_header_timeout_ms), \
             send (server.client_send_timeout_ms).",
            &["timeout"],
        );
        let build_info = gauge_vec(
            &r,
            "mpapi_build_info",
            "Always 1; the version of the running binary.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let no_app = AppMetrics::new(&requests, &request_duration, "");
        Arc::new(Self {
            no_app,
            request_duration,
            requests,
            upstream_healthy: gauge_vec(
                &r,
                "mpapi_upstream_healthy",
                "1 while the upstream passes its health checks, else 0.",
                &["app", "upstream"],
            ),
            upstream_requests: counter_vec(
                &r,
                "mpapi_upstream_requests_total",
                "Requests proxied, by the upstream's status (error: no answer).",
                &["app", "upstream", "status"],
            ),
            sessions_cached: gauge(
                &r,
                "mpapi_sessions_cached",
                "Sessions in this node's cache.",
            ),
            session_lookups: ["hit", "miss", "unknown", "forged"]
                .map(|result| session_lookups.with_label_values(&[result])),
            store_queries: counter(
                &r,
                "mpapi_store_queries_total",
                "Statements run against the store.",
            ),
            store_errors: counter(
                &r,
                "mpapi_store_errors_total",
                "Store operations that failed.",
            ),
            wechat_requests: counter_vec(
                &r,
                "mpapi_wechat_requests_total",
                "Calls to the WeChat API, by API and errcode (http: no answer).",
                &["api", "errcode"],
            ),
            wechat_duration: histogram_vec(
                &r,
                "mpapi_wechat_request_duration_seconds",
                "Time WeChat took to answer.",
                &["api"],
            ),
            access_token_refreshes: counter_vec(
                &r,
                "mpapi_access_token_refreshes_total",
                "Access tokens fetched from WeChat.",
                &["app"],
            ),
            notifications,
            notification_sends: ["sent", "retry", "failed"]
                .map(|outcome| notification_sends.with_label_values(&[outcome])),
            messages_forward_pending: gauge(
                &r,
                "mpapi_messages_forward_pending",
                "Customer-service messages waiting for the help desk (read at most every 10 s).",
            ),
            config_reloads,
            access_log_dropped: counter(
                &r,
                "mpapi_access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up.",
            ),
            client_timeouts: ["header", "send"]
                .map(|timeout| client_timeouts.with_label_values(&[timeout])),
            client_connections_refused: counter(
                &r,
                "mpapi_client_connections_refused_total",
                "Client connections closed on arrival: their address already had \
                 server.client_connections_per_address open.",
            ),
            store_gauges_read: Mutex::new(None),
            registry: r,
        })
    }

    /// The request series of `appid`, to keep with the app.
    pub fn app(&self, appid: &str) -> AppMetrics {
        AppMetrics::new(&self.requests, &self.request_duration, appid)
    }

    /// The upstream request series of one upstream of `appid`, to keep with the upstream.
    pub fn upstream(&self, appid: &str, upstream: &str) -> StatusCounters {
        StatusCounters::new(&self.upstream_requests, &[appid, upstream], "error")
    }

    /// One request answered (status 0: no answer was written), of `app` or of none.
    pub fn request(
        &self,
        app: Option<&AppMetrics>,
        route: RouteLabel,
        status: u16,
        elapsed: Duration,
    ) {
        let app = app.unwrap_or(&self.no_app);
        app.requests[route as usize].inc(status);
        app.durations[route as usize].observe(elapsed.as_secs_f64());
    }

    /// The `mpapi_upstream_healthy` gauge of one upstream, 1 until a check says otherwise.
    pub fn upstream_health_gauge(&self, appid: &str, upstream: &str) -> IntGauge {
        let gauge = self.upstream_healthy.with_label_values(&[appid, upstream]);
        gauge.set(1);
        gauge
    }

    pub fn session_lookup(&self, lookup: Lookup) {
        self.session_lookups[lookup as usize].inc();
    }

    /// One WeChat API call: `errcode` 0 on success, `None` when no answer came.
    pub fn wechat_call(&self, api: &str, errcode: Option<i64>, elapsed: Duration) {
        let errcode = match errcode {
            None => "http".to_string(),
            Some(code) => code.to_string(),
        };
        self.wechat_requests
            .with_label_values(&[api, errcode.as_str()])
            .inc();
        self.wechat_duration
            .with_label_values(&[api])
            .observe(elapsed.as_secs_f64());
    }

    pub fn access_token_refreshed(&self, appid: &str) {
        self.access_token_refreshes
            .with_label_values(&[appid])
            .inc();
    }

    pub fn notification_sent(&self, outcome: SendOutcome) {
        self.notification_sends[outcome as usize].inc();
    }

    pub fn config_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    pub fn client_timed_out(&self, timeout: ClientTimeout) {
        self.client_timeouts[timeout as usize].inc();
    }

    pub fn client_connection_refused(&self) {
        self.client_connections_refused.inc();
    }

    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// Whether the store-backed gauges are due for a read, claiming it when they are.
    pub fn store_gauges_due(&self) -> bool {
        let mut last = self.store_gauges_read.lock();
        let due = last.is_none_or(|at| at.elapsed() >= STORE_GAUGES_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Set the store-backed gauges: notifications by state, messages waiting to be forwarded.
    pub fn set_store_gauges(&self, notifications: &[(String, i64)], forward_pending: i64) {
        for state in NOTIFICATION_STATES {
            let count = notifications
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.notifications.with_label_values(&[state]).set(count);
        }
        self.messages_forward_pending.set(forward_pending);
    }

    /// Bring counters kept elsewhere (the store's atomics, the session cache) up to date.
    pub fn set_totals(&self, sessions_cached: u64, store_queries: u64, store_errors: u64) {
        self.sessions_cached
            .set(i64::try_from(sessions_cached).unwrap_or(i64::MAX));
        catch_up(&self.store_queries, store_queries);
        catch_up(&self.store_errors, store_errors);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "could not encode the metrics");
        }
        out
    }
}

/// A counter that mirrors a total kept elsewhere.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
