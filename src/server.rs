//! The gateway's services, and starting one in-process for the tests and the benches.
//!
//! [`start_core`] builds the shared state and starts the background work; [`proxy_service`]
//! is the Pingora proxy service on its listeners. `main` runs both under Pingora's `Server`
//! ([`crate::process`]). [`spawn`] / [`spawn_with`] run the same two on runtimes of their own
//! with listeners the caller bound (tests bind port 0), handed over through Pingora's fd
//! table: Pingora's `Server` owns the process (signals, `exit`), which a test cannot host.
//! As under `Server`, the background work and the proxy get a runtime each, so the proxy's
//! worker threads carry only requests (the load bench measures them).

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora::services::listening::Service;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::config::TlsConfig;
use crate::gateway::Gateway;
use crate::gateway::slow_clients::{ClientLimits, GuardedApp};
use crate::notify;
use crate::shutdown::wait_for;
use crate::sim::{self, Simulator};
use crate::state::{Reloaded, StartError, State};
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

    /// Put `config` in force as SIGHUP does (see [`reload`]).
    pub async fn reload(&self, config: &Config) -> Result<Reloaded, ReloadError> {
        reload(&self.state, self.certificates.as_deref(), config).await
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
            let runtimes = runtime("mpapi-core", 1)
                .and_then(|core| Ok((core, runtime("mpapi-worker", threads)?)));
            let (core, workers) = match runtimes {
                Ok(runtimes) => runtimes,
                Err(error) => {
                    let _ = ready_tx.send(Err(StartError::Listener(error)));
                    return;
                }
            };
            let started = core.block_on(start(
                config,
                listeners,
                shutdown_rx.clone(),
                workers.handle(),
            ));
            let (started, dispatcher) = match started {
                Ok((state, dispatcher)) => (Ok(state), Some(dispatcher)),
                Err(error) => (Err(error), None),
            };
            let ok = started.is_ok();
            let _ = ready_tx.send(started);
            if ok {
                let mut shutdown = shutdown_rx;
                core.block_on(async move {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() {
                            break;
                        }
                    }
                });
            }
            if killed_in_thread.load(Ordering::SeqCst) {
                workers.shutdown_background();
                core.shutdown_background();
                return;
            }
            if let Some(dispatcher) = dispatcher {
                // Notification sends in flight finish (the dispatcher bounds the wait).
                let _ = core.block_on(dispatcher);
            }
            workers.shutdown_timeout(Duration::from_secs(5));
            core.shutdown_timeout(Duration::from_secs(5));
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

/// A multi-threaded runtime of `threads` workers named `name`.
fn runtime(name: &str, threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
}

/// Build the state and start the background work on the current runtime, and the proxy
/// service on `workers`.
async fn start(
    config: Config,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
    workers: &tokio::runtime::Handle,
) -> Result<(Arc<State>, JoinHandle<()>), StartError> {
    let server_conf = Arc::new(server_conf(&config));
    let (state, dispatcher) = start_core(config, shutdown.clone()).await?;
    let mut fds = Fds::new();
    let plain = match listeners.plain {
        Some(listener) => {
            let addr = listener.local_addr()?;
            fds.add(addr.to_string(), listener.into_raw_fd());
            Some(addr)
        }
        None => None,
    };
    let tls = match listeners.tls {
        Some(tls) => {
            let addr = tls.listener.local_addr()?;
            fds.add(addr.to_string(), tls.listener.into_raw_fd());
            Some((addr, tls.certificates))
        }
        None => None,
    };
    let cell = Arc::new(OnceLock::from(state.clone()));
    let limits = ClientLimits::of(&state.config.server);
    let mut service = proxy_service(&server_conf, cell, limits, plain, tls)?;
    let fds: ListenFds = Arc::new(Mutex::new(fds));
    workers.spawn(async move { service.start_service(Some(fds), shutdown, 1).await });
    Ok((state, dispatcher))
}

/// Pingora's settings for mpapi's configuration.
pub fn server_conf(config: &Config) -> ServerConf {
    let server = &config.server;
    ServerConf {
        upstream_keepalive_pool_size: 1024,
        threads: server.threads,
        upgrade_sock: server.upgrade_sock.display().to_string(),
        pid_file: server.pid_file.display().to_string(),
        grace_period_seconds: Some(server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(server.graceful_shutdown_timeout.as_secs()),
        // A new process (`-u`) waits this many seconds for the old one's sockets.
        upgrade_sock_connect_accept_max_retries: Some(30),
        ..ServerConf::default()
    }
}

/// Build the shared state and start the background work on the current runtime: the customer
/// service message forwarder and the notification dispatcher (whose handle resolves once its
/// sends in flight have finished after `shutdown`), and any `dev:` side services.
pub async fn start_core(
    config: Config,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<State>, JoinHandle<()>), StartError> {
    start_dev_services(&config, &shutdown).await?;
    let state = Arc::new(State::build(config, shutdown.clone()).await?);
    start_admin(&state, &shutdown).await?;
    tokio::spawn(crate::messages::forwarder::run(
        state.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::session::sync::run(state.clone(), shutdown.clone()));
    let dispatcher = tokio::spawn(notify::run(state.clone(), shutdown));
    Ok((state, dispatcher))
}

/// The proxy service on `plain` and/or `tls`: the listeners are taken from the fd table the
/// service starts with (inherited in an upgrade, handed over by the tests) or bound. Every
/// connection is held to `limits`.
pub fn proxy_service(
    server_conf: &Arc<ServerConf>,
    state: Arc<OnceLock<Arc<State>>>,
    limits: ClientLimits,
    plain: Option<SocketAddr>,
    tls: Option<(SocketAddr, Arc<CertificateResolver>)>,
) -> Result<ProxyService, StartError> {
    let mut proxy = pingora_proxy::http_proxy(server_conf, Gateway::new(state.clone()));
    proxy.server_options = Some(limits.server_options());
    let app = GuardedApp::new(proxy, limits, state);
    let mut service = Service::new("mpapi".to_string(), app);
    if let Some(addr) = plain {
        service.add_tcp(&addr.to_string());
    }
    if let Some((addr, certificates)) = tls {
        service.add_tls_with_settings(&addr.to_string(), None, tls_settings(certificates)?);
    }
    Ok(service)
}

/// The gateway's proxy service type.
pub type ProxyService = Service<GuardedApp<pingora_proxy::HttpProxy<Gateway>>>;

/// Re-read configuration put in force: TLS certificates for new handshakes, apps and trusted
/// proxies for new requests. On any error nothing changes.
pub async fn reload(
    state: &State,
    certificates: Option<&CertificateResolver>,
    config: &Config,
) -> Result<Reloaded, ReloadError> {
    if let (Some(resolver), Some(tls)) = (certificates, &config.server.tls) {
        // Checked first: the certificates are the part most likely to be wrong.
        let set = tls.load_certificates()?;
        let routing_reloaded = state.reload(config).await?;
        resolver.replace(set);
        return Ok(routing_reloaded);
    }
    Ok(state.reload(config).await?)
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Certificates(#[from] TlsError),
    #[error("{0}")]
    Routing(#[from] StartError),
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

/// The admin listener (`admin.listen`): metrics and probes. In an upgrade the old process
/// still holds the port: it is bound as soon as the old process lets go.
async fn start_admin(
    state: &Arc<State>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), StartError> {
    let Some(addr) = state.config.admin.listen else {
        return Ok(());
    };
    let listener = bind_or_wait(addr, shutdown).await?;
    let state = state.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let Some(listener) = listener.await else {
            return;
        };
        let Ok(bound) = listener.local_addr() else {
            return;
        };
        let _ = state.admin_addr.set(bound);
        tracing::info!(addr = %bound, "admin listener (metrics, probes)");
        let router = crate::observe::admin::router(state);
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(wait_for(shutdown))
            .await
        {
            tracing::error!(%error, "admin listener failed");
        }
    });
    Ok(())
}

/// The simulator and echo upstream of a `dev:` section, on this runtime. In an upgrade the old
/// process still holds their ports: they are bound as soon as it lets go.
async fn start_dev_services(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), StartError> {
    if let Some(addr) = config.dev.simulator {
        let listener = bind_or_wait(addr, shutdown).await?;
        let simulator = Simulator::for_config(config);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Some(listener) = listener.await else {
                return;
            };
            tracing::info!(%addr, "WeChat simulator listening");
            let _ = sim::serve(listener, simulator, wait_for(shutdown)).await;
        });
    }
    if let Some(addr) = config.dev.echo_upstream {
        let listener = bind_or_wait(addr, shutdown).await?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Some(listener) = listener.await else {
                return;
            };
            tracing::info!(%addr, "echo upstream listening");
            let _ = sim::echo::serve(listener, wait_for(shutdown)).await;
        });
    }
    Ok(())
}

/// Bind `addr` now, or — when it is in use — keep trying in the background until shutdown.
async fn bind_or_wait(
    addr: SocketAddr,
    shutdown: &watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = Option<tokio::net::TcpListener>> + use<>, StartError>
{
    let first = tokio::net::TcpListener::bind(addr).await;
    let in_use = matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse);
    let first = if in_use { None } else { Some(first?) };
    let shutdown = shutdown.clone();
    Ok(async move {
        if first.is_some() {
            return first;
        }
        tracing::info!(%addr, "port in use: waiting for it (in an upgrade, the old process holds it until it exits)");
        while !*shutdown.borrow() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
                return Some(listener);
            }
        }
        None
    })
}
