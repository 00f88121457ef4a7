//! Starting and stopping a gateway: the one code path used by `main`, the tests and the benches.
//!
//! [`spawn`] takes an already-bound listener (tests bind port 0), [`spawn_with`] a plain and/or
//! a TLS one (certificates behind a [`CertificateResolver`]), and runs the Pingora proxy
//! service, the upstream health checks, the notification dispatcher and any `dev:` side
//! services on a runtime of its own
//! with `server.threads` workers. Pingora's `Server` is not used: it owns the process (signals,
//! `exit`), which a test cannot host; its listening service is started directly instead, with
//! our listener handed over through Pingora's fd table.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora::services::background::BackgroundService;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config::TlsConfig;
use crate::gateway::Gateway;
use crate::notify;
use crate::shutdown::wait_for;
use crate::sim::{self, Simulator};
use crate::state::{StartError, State};
use crate::tls::{CertificateResolver, TlsError, reload_certificates};

/// The sockets a gateway serves, already bound: plain HTTP, TLS, or both.
pub struct Listeners {
    pub plain: Option<std::net::TcpListener>,
    pub tls: Option<TlsListener>,
}

/// A socket for TLS termination and the certificates it serves (swappable while it runs).
pub struct TlsListener {
    pub listener: std::net::TcpListener,
    pub certificates: Arc<CertificateResolver>,
}

/// A gateway running on its own threads.
pub struct RunningGateway {
    /// Where it listens: the plain listener's address, else the TLS one's.
    pub addr: SocketAddr,
    /// Where it terminates TLS, if it does.
    pub tls_addr: Option<SocketAddr>,
    /// The certificates the TLS listener serves, swappable by [`RunningGateway::reload_certificates`].
    certificates: Option<Arc<CertificateResolver>>,
    /// Its shared state (tests read the store's query count from here).
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    /// Set by [`RunningGateway::kill`]: stop without finishing anything.
    killed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    /// Serve the certificates of `tls` to new TLS handshakes (open connections keep theirs).
    /// On any error nothing changes and the error names the key of the file at fault.
    pub fn reload_certificates(&self, tls: &TlsConfig) -> Result<(), TlsError> {
        match &self.certificates {
            Some(resolver) => reload_certificates(resolver, &tls.certificates),
            None => Err(TlsError::NotListening),
        }
    }

    /// Stop accepting, let requests in flight finish (up to a few seconds), and wait.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Stop as a crash would: every task is dropped at once — requests and notification sends
    /// in flight included — and nothing is written on the way out. Tests use it to check that
    /// a dead node strands no work.
    pub async fn kill(mut self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Blocking variant of [`RunningGateway::stop`], for `main`.
    pub fn stop_blocking(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Start a gateway serving `listener` with `config`; resolves once it accepts connections.
pub async fn spawn(
    config: Config,
    listener: std::net::TcpListener,
) -> Result<RunningGateway, StartError> {
    spawn_with(
        config,
        Listeners {
            plain: Some(listener),
            tls: None,
        },
    )
    .await
}

/// [`spawn`] with any of a plain and a TLS listener.
pub async fn spawn_with(
    config: Config,
    listeners: Listeners,
) -> Result<RunningGateway, StartError> {
    let plain_addr = match &listeners.plain {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Some(listener.local_addr()?)
        }
        None => None,
    };
    let certificates = listeners.tls.as_ref().map(|tls| tls.certificates.clone());
    let tls_addr = match &listeners.tls {
        Some(tls) => {
            tls.listener.set_nonblocking(true)?;
            Some(tls.listener.local_addr()?)
        }
        None => None,
    };
    let addr = plain_addr
        .or(tls_addr)
        .ok_or_else(|| StartError::Listener(std::io::Error::other("no listener to serve")))?;
    let threads = config.server.threads;
    let (ready_tx, ready_rx) = oneshot::channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let killed = Arc::new(AtomicBool::new(false));
    let killed_in_thread = killed.clone();
    let thread = std::thread::Builder::new()
        .name("mpapi-gateway".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("mpapi-worker")
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(StartError::Listener(error)));
                    return;
                }
            };
            let started = runtime.block_on(start(config, listeners, shutdown_rx.clone()));
            let (started, dispatcher) = match started {
                Ok((state, dispatcher)) => (Ok(state), Some(dispatcher)),
                Err(error) => (Err(error), None),
            };
            let ok = started.is_ok();
            let _ = ready_tx.send(started);
            if ok {
                let mut shutdown = shutdown_rx;
                runtime.block_on(async move {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() {
                            break;
                        }
                    }
                });
            }
            if killed_in_thread.load(Ordering::SeqCst) {
                runtime.shutdown_background();
                return;
            }
            if let Some(dispatcher) = dispatcher {
                // Notification sends in flight finish (the dispatcher bounds the wait).
                let _ = runtime.block_on(dispatcher);
            }
            runtime.shutdown_timeout(Duration::from_secs(5));
        })?;
    let state = ready_rx
        .await
        .map_err(|_| StartError::Listener(std::io::Error::other("gateway thread died")))??;
    Ok(RunningGateway {
        addr,
        tls_addr,
        certificates,
        state,
        shutdown: shutdown_tx,
        killed,
        thread: Some(thread),
    })
}

async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<State>, JoinHandle<()>), StartError> {
    start_dev_services(&config, &shutdown).await?;
    let state = Arc::new(State::build(config).await?);

    for pool in state.apps.pools() {
        let pool = pool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { pool.start(shutdown).await });
    }
    // Deliver recorded customer-service messages to help desks.
    if state.messages.enabled() {
        tokio::spawn(crate::messages::forwarder::run(
            state.clone(),
            shutdown.clone(),
        ));
    }
    // The notification dispatcher, stopped by the same shutdown.
    let dispatcher = tokio::spawn(notify::run(state.clone(), shutdown.clone()));

    let server_conf = Arc::new(ServerConf {
        upstream_keepalive_pool_size: 1024,
        threads: state.config.server.threads,
        ..ServerConf::default()
    });
    let mut service = pingora_proxy::http_proxy_service_with_name(
        &server_conf,
        Gateway {
            state: state.clone(),
        },
        "mpapi",
    );
    let mut fds = Fds::new();
    if let Some(listener) = listeners.plain {
        let key = listener.local_addr()?.to_string();
        service.add_tcp(&key);
        fds.add(key, listener.into_raw_fd());
    }
    if let Some(tls) = listeners.tls {
        let key = tls.listener.local_addr()?.to_string();
        service.add_tls_with_settings(&key, None, tls_settings(tls.certificates)?);
        fds.add(key, tls.listener.into_raw_fd());
    }
    let fds: ListenFds = Arc::new(Mutex::new(fds));
    tokio::spawn(async move { service.start_service(Some(fds), shutdown, 1).await });
    Ok((state, dispatcher))
}

/// TLS 1.2/1.3 with the certificates chosen by `certificates`; ALPN offers `h2` then
/// `http/1.1`, so HTTP/2 clients get HTTP/2.
fn tls_settings(certificates: Arc<CertificateResolver>) -> Result<TlsSettings, StartError> {
    // No files: the resolver set below replaces the certificate and key paths.
    let mut settings = TlsSettings::intermediate("", "")
        .map_err(|e| StartError::Listener(std::io::Error::other(e.to_string())))?;
    settings.set_cert_resolver(certificates);
    settings.enable_h2();
    Ok(settings)
}

/// The simulator and echo upstream of a `dev:` section, on this runtime.
async fn start_dev_services(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), StartError> {
    if let Some(addr) = config.dev.simulator {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let simulator = Simulator::for_config(config);
        tracing::info!(%addr, "WeChat simulator listening");
        tokio::spawn(sim::serve(listener, simulator, wait_for(shutdown.clone())));
    }
    if let Some(addr) = config.dev.echo_upstream {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "echo upstream listening");
        tokio::spawn(sim::echo::serve(listener, wait_for(shutdown.clone())));
    }
    Ok(())
}
