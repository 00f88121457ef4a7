//! Apps and their upstream pools: round-robin over each app's base URLs, with TCP health checks
//! so a dead upstream stops receiving traffic until it answers again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::HeaderValue;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};

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
    pub pool: Arc<LoadBalancer<RoundRobin>>,
    /// The pool's upstreams, found by address after each pick. Not kept in the backends'
    /// `ext`: the pool hands out a clone of the backend it picks, and cloning `ext` allocates.
    upstreams: Vec<Arc<Upstream>>,
    /// `Authorization` sent upstream when the app has a `host_token`.
    pub authorization: Option<HeaderValue>,
}

impl App {
    /// The next healthy upstream, round-robin.
    pub fn pick_upstream(&self) -> Option<Arc<Upstream>> {
        let backend = self.pool.select(b"", 256)?;
        self.upstreams
            .iter()
            .find(|upstream| backend.addr.as_inet() == Some(&upstream.config.addr))
            .cloned()
    }
}

/// Every app by appid.
pub struct Apps {
    by_id: HashMap<String, Arc<App>>,
}

impl Apps {
    /// Build each app's pool; health checks start with [`Apps::pools`].
    pub async fn build(config: &Config) -> Result<Self, pingora::BError> {
        let mut by_id = HashMap::new();
        for app in &config.apps {
            let mut backends = BTreeSet::new();
            let mut upstreams = Vec::new();
            for upstream in &app.upstreams {
                backends.insert(Backend::new(&upstream.addr.to_string())?);
                let host = HeaderValue::from_str(&upstream.host_header).map_err(|_| {
                    pingora::Error::explain(pingora::ErrorType::InternalError, "bad upstream host")
                })?;
                upstreams.push(Arc::new(Upstream {
                    config: upstream.clone(),
                    host,
                }));
            }
            let mut pool =
                LoadBalancer::<RoundRobin>::from_backends(Backends::new(Static::new(backends)));
            pool.set_health_check(TcpHealthCheck::new());
            pool.health_check_frequency = Some(config.server.health_check_interval);
            pool.update().await?;
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
                    pool: Arc::new(pool),
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

    /// Every pool, for the health-check tasks.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<LoadBalancer<RoundRobin>>> {
        self.by_id.values().map(|app| &app.pool)
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
