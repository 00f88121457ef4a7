//! Apps and their upstream pools: round-robin over each app's base URLs, with TCP health checks
//! so a dead upstream stops receiving traffic until it answers again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use tokio::sync::watch;

use crate::config::{AppConfig, Config, UpstreamConfig};

/// An upstream with what every request to it needs, pre-rendered.
#[derive(Debug)]
pub struct Upstream {
    pub config: UpstreamConfig,
    pub host: HeaderValue,
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
}

impl App {
    /// The next healthy upstream, round-robin.
    pub fn pick_upstream(&self) -> Option<Arc<Upstream>> {
        let backend = self.pool.balancer.select(b"", 256)?;
        self.upstreams
            .iter()
            .find(|upstream| backend.addr.as_inet() == Some(&upstream.config.addr))
            .cloned()
    }
}

/// One app's upstreams behind a round-robin balancer with health checks.
///
/// A reload that leaves an app's upstream list as it was hands the new app the same pool, so
/// what the health checks know carries over. Its check loop holds it only weakly: once no app
/// of the routing in force (nor a request still under way) holds the pool, the loop ends.
pub struct Pool {
    pub balancer: LoadBalancer<RoundRobin>,
    /// The base URLs it was built from, to recognise an unchanged list at a reload.
    urls: Vec<url::Url>,
    interval: Duration,
    /// Whether its check loop runs.
    checked: AtomicBool,
}

impl Pool {
    async fn build(
        upstreams: &[UpstreamConfig],
        interval: Duration,
    ) -> Result<Self, pingora::BError> {
        let mut backends = BTreeSet::new();
        for upstream in upstreams {
            backends.insert(Backend::new(&upstream.addr.to_string())?);
        }
        let mut balancer =
            LoadBalancer::<RoundRobin>::from_backends(Backends::new(Static::new(backends)));
        balancer.set_health_check(TcpHealthCheck::new());
        balancer.update().await?;
        Ok(Self {
            balancer,
            urls: upstreams.iter().map(|u| u.url.clone()).collect(),
            interval,
            checked: AtomicBool::new(false),
        })
    }

    /// Check every upstream now and then every `interval`, until the pool is dropped or the
    /// process shuts down.
    async fn check_health(pool: Weak<Pool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let Some(current) = pool.upgrade() else {
                return;
            };
            current.balancer.backends().run_health_check(false).await;
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
    pub async fn build(config: &Config, previous: Option<&Apps>) -> Result<Self, pingora::BError> {
        let mut by_id = HashMap::new();
        for app in &config.apps {
            let mut upstreams = Vec::new();
            for upstream in &app.upstreams {
                let host = HeaderValue::from_str(&upstream.host_header).map_err(|_| {
                    pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream host")
                })?;
                upstreams.push(Arc::new(Upstream {
                    config: upstream.clone(),
                    host,
                }));
            }
            let interval = config.server.health_check_interval;
            let kept = previous
                .and_then(|apps| apps.get(&app.appid))
                .map(|old| &old.pool)
                .filter(|pool| {
                    pool.interval == interval
                        && pool.urls.iter().eq(app.upstreams.iter().map(|u| &u.url))
                });
            let pool = match kept {
                Some(pool) => pool.clone(),
                None => Arc::new(Pool::build(&app.upstreams, interval).await?),
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
                }),
            );
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
