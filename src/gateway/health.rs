//! Upstream health checks: a TCP connect to an `http://` upstream, and to an `https://` one the
//! TLS handshake a request would make (the same SNI, verified against the same roots). An
//! upstream whose certificate does not verify then leaves the pool like one that does not
//! answer, and requests go to the others, instead of each one it is picked for failing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck;
use pingora::prelude::HttpPeer;

use crate::config::UpstreamConfig;
use crate::tls::UpstreamRoots;

/// How long a check may take to connect, and to connect and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The roots `https://` upstreams are verified against beyond the system's
/// (`server.upstream_ca`): shared with the pool, which a reload may keep while the file's
/// certificates change.
pub type SharedRoots = Arc<ArcSwap<Option<Arc<UpstreamRoots>>>>;

/// The checks of one pool's upstreams.
pub struct UpstreamCheck {
    /// Which upstream (its config index) a backend's address belongs to.
    index_of: Box<dyn Fn(SocketAddr) -> Option<usize> + Send + Sync>,
    /// Each upstream's SNI when it is `https://`, in config order.
    sni: Vec<Option<String>>,
    roots: SharedRoots,
    connector: TransportConnector,
}

impl UpstreamCheck {
    /// Checks for `upstreams` (config order); `index_of` maps an address to its upstream.
    pub fn new(
        upstreams: &[UpstreamConfig],
        roots: SharedRoots,
        index_of: impl Fn(SocketAddr) -> Option<usize> + Send + Sync + 'static,
    ) -> Self {
        Self {
            index_of: Box::new(index_of),
            sni: upstreams
                .iter()
                .map(|upstream| upstream.tls.then(|| upstream.sni.clone()))
                .collect(),
            roots,
            connector: TransportConnector::new(None),
        }
    }
}

#[async_trait]
impl HealthCheck for UpstreamCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Ok(());
        };
        // Discovery only hands out addresses the resolver has, so every backend finds its
        // upstream; one that did not would get the TCP check.
        let sni = (self.index_of)(addr)
            .and_then(|index| self.sni.get(index))
            .and_then(Option::as_ref);
        let mut peer = match sni {
            Some(sni) => {
                let mut peer = HttpPeer::new(addr, true, sni.clone());
                peer.options.ca = self.roots.load().as_ref().clone();
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.total_connection_timeout = Some(HANDSHAKE_TIMEOUT);
        self.connector.get_stream(&peer).await.map(|_| ())
    }

    /// One failed check marks an upstream down, one good check up again (as Pingora's TCP
    /// check does).
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
