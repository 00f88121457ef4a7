//! Apps and their upstream pools: round-robin over each app's base URLs, with health checks
//! (a TCP connect, and for `https://` the TLS handshake: see `health`) so a dead upstream or
//! one whose certificate does not verify stops receiving traffic until it passes again, and
//! host names resolved again every `server.upstream_dns_refresh_seconds` so an upstream that
//! moves is followed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use tokio::sync::watch;

use super::health::{SharedRoots, UpstreamCheck};
use crate::config::{AppConfig, Config, UpstreamConfig};
use crate::observe::Metrics;
use crate::observe::metrics::{AppMetrics, StatusCounters};
use crate::tls::UpstreamRoots;
use prometheus::IntGauge;

/// An upstream with what every request to it needs, pre-rendered.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub host: HeaderValue,
    /// `host:port` as configured: the `upstream` label of metrics and the access log.
    pub label: String,
    /// `mpapi_upstream_requests_total` of this upstream, by status.
    pub requests: StatusCounters,
    /// Roots its certificate is verified against when they are not only the system's.
    pub roots: Option<Arc<UpstreamRoots>>,
    /// The pool its connections are kept in, beyond the address and name: the roots' digest
    /// (0 with the system's alone). Pingora's pool does not tell roots apart, so without it a
    /// connection verified against a CA that a reload removed would go on serving.
    pub pool_key: u64,
}

/// A registered mini program and its backends.
pub struct App {
    pub config: AppConfig,
    pub pool: Arc<Pool>,
    /// The pool's upstreams, found by address after each pick. Not kept in the backends'
    /// `ext`: the pool hands out a clone of the backend it picks, and cloning `ext` allocates.
    upstreams: Vec<Arc<Upstream>>,
    /// `Authorization` sent upstream when the app has a `host_token`.
    pub authorization: Option<HeaderValue>,
    /// Its request series (durations and counts, per route).
    pub metrics: AppMetrics,
}

impl App {
    /// The next healthy upstream, round-robin, and the address it is at now.
    pub fn pick_upstream(&self) -> Option<(Arc<Upstream>, SocketAddr)> {
        let (addr, index) = self.pool.pick()?;
        Some((self.upstreams.get(index)?.clone(), addr))
    }
}

/// Where each of a pool's upstreams is: the pool's service discovery. An address literal stays
/// as it is; a host name is looked up at each refresh, and a lookup that fails or finds nothing
/// leaves the last good address in use, with a warning.
struct Resolver {
    /// Each upstream's host name (`None` for an address literal) and port, in config order.
    targets: Vec<(Option<String>, u16)>,
    /// Address to upstream index: the addresses found by the last lookup first, then the
    /// previous lookup's, so a request that picked a backend just before the balancer swapped
    /// its set still finds its upstream.
    by_addr: ArcSwap<Vec<(SocketAddr, usize)>>,
}

impl Resolver {
    fn new(upstreams: &[UpstreamConfig]) -> Self {
        Self {
            targets: upstreams
                .iter()
                .map(|u| (u.host_name.clone(), u.port))
                .collect(),
            by_addr: ArcSwap::from_pointee(upstreams.iter().map(|u| u.addr).zip(0..).collect()),
        }
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        let by_addr = self.by_addr.load();
        by_addr.iter().find(|(a, _)| *a == addr).map(|(_, i)| *i)
    }

    /// Whether any upstream is named by a host name, so lookups can change anything.
    fn resolves_names(&self) -> bool {
        self.targets.iter().any(|(name, _)| name.is_some())
    }

    /// The address upstream `index` is at now: where it was when that is still among the
    /// answers (no churn between equal answers), else the first answer.
    async fn lookup(&self, index: usize, previous: SocketAddr) -> SocketAddr {
        let Some((Some(name), port)) = self.targets.get(index) else {
            return previous;
        };
        match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(found) => {
                let found: Vec<SocketAddr> = found.collect();
                if found.contains(&previous) {
                    previous
                } else if let Some(first) = found.first() {
                    tracing::info!(upstream = %name, from = %previous, to = %first, "upstream address changed");
                    *first
                } else {
                    tracing::warn!(upstream = %name, address = %previous, "upstream host name resolves to nothing; keeping its last address");
                    previous
                }
            }
            Err(error) => {
                tracing::warn!(upstream = %name, address = %previous, %error, "upstream host name does not resolve; keeping its last address");
                previous
            }
        }
    }
}

/// The discovery handed to Pingora's balancer, sharing the resolver with the pool.
struct Discovery(Arc<Resolver>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let resolver = &self.0;
        let previous = resolver.by_addr.load_full();
        let count = resolver.targets.len();
        let mut current = Vec::with_capacity(count * 2);
        let mut backends = BTreeSet::new();
        for index in 0..count {
            let was = previous
                .iter()
                .find(|(_, i)| *i == index)
                .map(|(addr, _)| *addr);
            let Some(was) = was else { continue };
            let addr = resolver.lookup(index, was).await;
            backends.insert(Backend::new(&addr.to_string())?);
            current.push((addr, index));
        }
        // The previous lookup's addresses stay findable until the next refresh.
        current.extend(previous.iter().take(count).copied());
        resolver.by_addr.store(Arc::new(current));
        Ok((backends, HashMap::new()))
    }
}

/// One app's upstreams behind a round-robin balancer with health checks.
///
/// Pingora's balancer finds the addresses (through [`Discovery`]) and runs the checks; the
/// pool picks from its own list of the healthy ones, rebuilt after every check and every
/// address refresh. Picking through the balancer would hash the chosen backend (SipHash) to
/// look its health up on every request.
///
/// A reload that leaves an app's upstream list as it was hands the new app the same pool, so
/// what the health checks know carries over. Its check loop holds it only weakly: once no app
/// of the routing in force (nor a request still under way) holds the pool, the loop ends.
pub struct Pool {
    balancer: LoadBalancer<RoundRobin>,
    resolver: Arc<Resolver>,
    /// The healthy upstreams' addresses and indexes, in config order.
    ready: ArcSwap<Vec<(SocketAddr, usize)>>,
    /// Requests picked so far: the round-robin position.
    picks: AtomicUsize,
    /// The base URLs it was built from, to recognise an unchanged list at a reload.
    urls: Vec<url::Url>,
    interval: Duration,
    dns_refresh: Duration,
    /// Whether its check loop runs.
    checked: AtomicBool,
    /// `mpapi_upstream_healthy` of each upstream, in config order.
    health_gauges: Vec<IntGauge>,
    /// The roots its checks verify `https://` upstreams against, beyond the system's.
    roots: SharedRoots,
}

impl Pool {
    async fn build(
        upstreams: &[UpstreamConfig],
        roots: Option<Arc<UpstreamRoots>>,
        interval: Duration,
        dns_refresh: Duration,
        health_gauges: Vec<IntGauge>,
    ) -> Result<Self, pingora::BError> {
        let resolver = Arc::new(Resolver::new(upstreams));
        let discovery = Box::new(Discovery(resolver.clone()));
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery));
        let roots: SharedRoots = Arc::new(ArcSwap::from_pointee(roots));
        let checked = resolver.clone();
        balancer.set_health_check(Box::new(UpstreamCheck::new(
            upstreams,
            roots.clone(),
            move |addr| checked.index_of(addr),
        )));
        balancer.update().await?;
        let pool = Self {
            balancer,
            resolver,
            ready: ArcSwap::default(),
            picks: AtomicUsize::new(0),
            urls: upstreams.iter().map(|u| u.url.clone()).collect(),
            interval,
            dns_refresh,
            checked: AtomicBool::new(false),
            health_gauges,
            roots,
        };
        pool.publish_health();
        Ok(pool)
    }

    /// The next healthy upstream, round-robin: its address and index.
    fn pick(&self) -> Option<(SocketAddr, usize)> {
        let ready = self.ready.load();
        if ready.is_empty() {
            return None;
        }
        let position = self.picks.fetch_add(1, Ordering::Relaxed);
        ready.get(position % ready.len()).copied()
    }

    /// Publish what the balancer knows now (after a check or an address refresh): the list
    /// requests pick from and the health gauges. A new address starts healthy.
    fn publish_health(&self) {
        let backends = self.balancer.backends();
        let mut ready = Vec::with_capacity(self.health_gauges.len());
        for backend in backends.get_backend().iter() {
            let Some(addr) = backend.addr.as_inet().copied() else {
                continue;
            };
            let Some(index) = self.resolver.index_of(addr) else {
                continue;
            };
            let healthy = backends.ready(backend);
            if let Some(gauge) = self.health_gauges.get(index) {
                gauge.set(i64::from(healthy));
            }
            if healthy {
                ready.push((addr, index));
            }
        }
        ready.sort_unstable_by_key(|(_, index)| *index);
        self.ready.store(Arc::new(ready));
    }

    /// Resolve the pool's host names again every `dns_refresh`, until the pool is dropped or
    /// the process shuts down. A moved upstream starts healthy; the next check confirms it.
    async fn refresh_addresses(pool: Weak<Pool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let Some(interval) = pool.upgrade().map(|current| current.dns_refresh) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
            let Some(current) = pool.upgrade() else {
                return;
            };
            match current.balancer.update().await {
                Ok(()) => current.publish_health(),
                Err(error) => tracing::warn!(%error, "upstream address refresh failed"),
            }
        }
    }

    /// Check every upstream now and then every `interval`, until the pool is dropped or the
    /// process shuts down.
    async fn check_health(pool: Weak<Pool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let Some(current) = pool.upgrade() else {
                return;
            };
            current.balancer.backends().run_health_check(false).await;
            current.publish_health();
            let interval = current.interval;
            drop(current);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// Every app by appid.
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Build each app's pool; health checks start with [`Apps::start_health_checks`]. An app of
    /// `previous` whose upstream list is unchanged keeps its pool.
    pub async fn build(
        config: &Config,
        previous: Option<&Apps>,
        metrics: &Metrics,
    ) -> Result<Self, pingora::BError> {
        let mut by_id = HashMap::new();
        let mut kept_pools = Vec::new();
        let ca = config.server.upstream_ca.as_ref();
        let roots = ca.map(|ca| ca.roots.clone());
        for app in &config.apps {
            let mut upstreams = Vec::new();
            for upstream in &app.upstreams {
                let host = HeaderValue::from_str(&upstream.host_header).map_err(|_| {
                    pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream host")
                })?;
                let label = format!(
                    "{}:{}",
                    upstream.url.host_str().unwrap_or_default(),
                    upstream.port
                );
                upstreams.push(Arc::new(Upstream {
                    config: upstream.clone(),
                    host,
                    requests: metrics.upstream(&app.appid, &label),
                    label,
                    roots: roots.clone().filter(|_| upstream.tls),
                    pool_key: ca.filter(|_| upstream.tls).map_or(0, |ca| ca.digest),
                }));
            }
            let interval = config.server.health_check_interval;
            let dns_refresh = config.server.upstream_dns_refresh;
            let kept = previous
                .and_then(|apps| apps.get(&app.appid))
                .map(|old| &old.pool)
                .filter(|pool| {
                    pool.interval == interval
                        && pool.dns_refresh == dns_refresh
                        && pool.urls.iter().eq(app.upstreams.iter().map(|u| &u.url))
                });
            let pool = match kept {
                Some(pool) => {
                    kept_pools.push(pool.clone());
                    pool.clone()
                }
                None => {
                    let gauges = upstreams
                        .iter()
                        .map(|u| metrics.upstream_health_gauge(&app.appid, &u.label))
                        .collect();
                    let pool =
                        Pool::build(&app.upstreams, roots.clone(), interval, dns_refresh, gauges);
                    Arc::new(pool.await?)
                }
            };
            let authorization = app
                .host_token
                .as_ref()
                .and_then(|token| HeaderValue::from_str(token.expose()).ok())
                .map(|mut value| {
                    value.set_sensitive(true);
                    value
                });
            by_id.insert(
                app.appid.clone(),
                Arc::new(App {
                    config: app.clone(),
                    pool,
                    upstreams,
                    authorization,
                    metrics: metrics.app(&app.appid),
                }),
            );
        }
        // The CA file may have changed: once every pool is built, the kept pools' next checks
        // verify as new connections do (a failed build leaves them as they were).
        for pool in kept_pools {
            pool.roots.store(Arc::new(roots.clone()));
        }
        Ok(Self { by_id })
    }

    /// The app registered as `appid`.
    pub fn get(&self, appid: &str) -> Option<&Arc<App>> {
        self.by_id.get(appid)
    }

    /// Every app.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }

    /// Start the health-check loop of every pool that has none yet.
    pub fn start_health_checks(&self, shutdown: &watch::Receiver<bool>) {
        for app in self.by_id.values() {
            if !app.pool.checked.swap(true, Ordering::SeqCst) {
                tokio::spawn(Pool::check_health(
                    Arc::downgrade(&app.pool),
                    shutdown.clone(),
                ));
                if app.pool.resolver.resolves_names() {
                    tokio::spawn(Pool::refresh_addresses(
                        Arc::downgrade(&app.pool),
                        shutdown.clone(),
                    ));
                }
            }
        }
    }
}

/// The upstream path for a request path under `/app`: `/app/x/y` with prefix `/api` is
/// `/api/x/y`; the query is kept.
pub fn upstream_path(prefix: &str, path_and_query: &str) -> String {
    let rest = path_and_query
        .strip_prefix("/app")
        .unwrap_or(path_and_query);
    let mut out = String::with_capacity(prefix.len() + rest.len() + 1);
    out.push_str(prefix);
    if !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::upstream_path;

    #[test]
    fn the_app_prefix_is_replaced_by_the_upstream_prefix() {
        let cases = [
            ("/api", "/app/users/1?x=1", "/api/users/1?x=1"),
            ("", "/app/users", "/users"),
            ("/api", "/app", "/api/"),
            ("/api", "/app?q=1", "/api/?q=1"),
            ("", "/app/", "/"),
        ];
        for (prefix, path, expected) in cases {
            assert_eq!(upstream_path(prefix, path), expected, "{prefix} {path}");
        }
    }
}
