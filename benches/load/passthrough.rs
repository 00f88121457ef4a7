//! The floor of our architecture: a Pingora `ProxyHttp` that only forwards every request to
//! one upstream, with the same peer options and the same way of starting as the gateway
//! (`mpapi::server`), so that the difference between the two is exactly mpapi's own work.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::HttpPeer;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora_proxy::{ProxyHttp, Session};
use tokio::sync::watch;

struct PassThrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // The gateway's peer options (its defaults for these two timeouts), so both pay the
        // same timers.
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

/// A running pass-through proxy on its own runtime.
pub struct RunningPassThrough {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningPassThrough {
    /// Start one with `threads` workers in front of `upstream`.
    pub fn start(threads: usize, upstream: SocketAddr) -> Self {
        Self::start_with(threads, upstream, None)
    }

    /// [`RunningPassThrough::start`] terminating TLS with the PEM files `tls` (certificate,
    /// key), offering `h2` and `http/1.1` as the gateway does.
    pub fn start_with(
        threads: usize,
        upstream: SocketAddr,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("bare-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("bare-worker")
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let conf = Arc::new(ServerConf {
                        upstream_keepalive_pool_size: 1024,
                        threads,
                        ..ServerConf::default()
                    });
                    let mut service = pingora_proxy::http_proxy_service_with_name(
                        &conf,
                        PassThrough { upstream },
                        "bare",
                    );
                    let key = addr.to_string();
                    match &tls {
                        Some((cert, key_file)) => {
                            let mut settings = TlsSettings::intermediate(
                                &cert.display().to_string(),
                                &key_file.display().to_string(),
                            )
                            .unwrap();
                            settings.enable_h2();
                            service.add_tls_with_settings(&key, None, settings);
                        }
                        None => service.add_tcp(&key),
                    }
                    let mut fds = Fds::new();
                    fds.add(key, listener.into_raw_fd());
                    let fds: ListenFds = Arc::new(Mutex::new(fds));
                    let stop = shutdown_rx.clone();
                    tokio::spawn(async move { service.start_service(Some(fds), stop, 1).await });
                    while !*shutdown_rx.borrow() {
                        if shutdown_rx.changed().await.is_err() {
                            break;
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .unwrap();
        Self {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Stop it and wait for its thread.
    pub fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
