//! `mpapi -c PATH` as a process: the gateway under Pingora's `Server`, so that its process
//! model works as Pingora documents it.
//!
//! - `-u` (upgrade): a new process takes the listening sockets over from the running one
//!   through `server.upgrade_sock`, once that one gets SIGQUIT; it hands them over, keeps
//!   serving for `server.grace_period_seconds`, then gives requests in flight
//!   `server.graceful_shutdown_timeout_seconds` and exits. Between the two, both accept from
//!   the same sockets: no connection is refused.
//! - SIGTERM: graceful stop (stop accepting, then the same two periods); SIGINT: fast stop.
//! - SIGHUP: re-read the file ([`crate::server::reload`]); a file that does not validate
//!   changes nothing.
//! - `-d`: daemonize, writing `server.pid_file`.
//!
//! Three services: the core (store, sessions, background work, SIGHUP), Pingora's bootstrap
//! (which receives the sockets in an upgrade, after a daemon's fork), and the proxy, which
//! starts accepting only when both are ready. The core builds the state inside its service, on
//! a runtime Pingora makes after forking: a daemon's threads do not survive `fork`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::configuration::Opt;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::{BackgroundService, background_service};
use tokio::sync::broadcast;

use crate::config::Config;
use crate::gateway::respond;
use crate::gateway::slow_clients::ClientLimits;
use crate::server::{proxy_service, reload, server_conf, start_core};
use crate::shutdown::wait_for;
use crate::state::State;
use crate::tls::CertificateResolver;

/// How the process was asked to start.
pub struct ProcessOptions {
    /// The configuration file, read again on SIGHUP.
    pub path: PathBuf,
    /// Take the listeners over from a running process.
    pub upgrade: bool,
    /// Run in the background.
    pub daemon: bool,
}

/// Serve until a signal ends the process.
pub fn run(config: Config, options: ProcessOptions) -> Result<(), String> {
    let addrs = listen_addrs(&config);
    let mut upgrade = options.upgrade;
    if upgrade && addrs.iter().all(|addr| can_bind(*addr).is_ok()) {
        tracing::warn!("upgrade requested, but no process holds the listeners: starting normally");
        upgrade = false;
    }
    if !upgrade {
        for addr in &addrs {
            can_bind(*addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        }
    }
    let certificates = match &config.server.tls {
        Some(tls) => Some(CertificateResolver::new(
            tls.load_certificates().map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let opt = Opt {
        upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    let phases = server.watch_execution_phase();
    let cell = Arc::new(OnceLock::new());
    let proxy = proxy_service(
        &server.configuration,
        cell.clone(),
        ClientLimits::of(&config.server),
        config.server.listen,
        config
            .server
            .tls
            .as_ref()
            .zip(certificates.clone())
            .map(|(tls, certificates)| (tls.listen, certificates)),
    )
    .map_err(|e| e.to_string())?;
    let built = cell.clone();
    let core = Core {
        phases: Mutex::new(Some(phases)),
        config: Mutex::new(Some(config)),
        state: cell,
        certificates,
        path: options.path,
    };
    let core = server.add_service(background_service("mpapi core", core));
    let bootstrap = server.bootstrap_as_a_service();
    let proxy = server.add_service(proxy);
    proxy.add_dependencies([&core, &bootstrap]);
    server.run(RunArgs::default());
    // The runtimes have stopped: every request has been answered and logged.
    if let Some(log) = built.get().and_then(|state| state.access_log.as_ref()) {
        log.finish();
    }
    Ok(())
}

/// From the moment the sockets go to a new process, answer with `Connection: close` (see
/// [`respond::close_if_shutting_down`]).
async fn watch_for_handover(mut phases: broadcast::Receiver<ExecutionPhase>) {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                respond::HANDING_OVER.store(true, Ordering::Relaxed);
                tracing::info!("handing the listeners over: closing keep-alive connections");
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Every address the gateway listens on.
fn listen_addrs(config: &Config) -> Vec<SocketAddr> {
    let tls = config.server.tls.as_ref().map(|tls| tls.listen);
    config.server.listen.into_iter().chain(tls).collect()
}

/// Whether `addr` is free (nothing listens there), checked by binding it for a moment.
fn can_bind(addr: SocketAddr) -> std::io::Result<()> {
    std::net::TcpListener::bind(addr).map(drop)
}

/// The store, sessions and background work, with the SIGHUP handler.
struct Core {
    /// Pingora's execution phases, watched for the handover (made before a daemon's fork,
    /// watched after it).
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    /// Taken when the service starts.
    config: Mutex<Option<Config>>,
    /// Where the proxy finds the state once built.
    state: Arc<OnceLock<Arc<State>>>,
    certificates: Option<Arc<CertificateResolver>>,
    path: PathBuf,
}

#[async_trait]
impl BackgroundService for Core {
    async fn start_with_ready_notifier(
        &self,
        shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let Some(config) = self.config.lock().take() else {
            return;
        };
        if let Some(phases) = self.phases.lock().take() {
            tokio::spawn(watch_for_handover(phases));
        }
        let (state, dispatcher) = match start_core(config, shutdown.clone()).await {
            Ok(started) => started,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                eprintln!("mpapi: {error}");
                std::process::exit(1);
            }
        };
        let _ = self.state.set(state.clone());
        ready.notify_ready();
        tracing::info!("mpapi gateway ready");
        self.serve_reloads(&state, shutdown).await;
        // Notification sends in flight finish (the dispatcher bounds the wait).
        let _ = dispatcher.await;
    }
}

impl Core {
    /// Reload on every SIGHUP until the process shuts down.
    async fn serve_reloads(&self, state: &State, shutdown: ShutdownWatch) {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let Ok(mut hangup) = hangup else {
            tracing::warn!("cannot watch SIGHUP: reloads need a restart");
            wait_for(shutdown).await;
            return;
        };
        let stopped = wait_for(shutdown);
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = hangup.recv() => self.reload(state).await,
            }
        }
    }

    async fn reload(&self, state: &State) {
        if let Some(log) = &state.access_log {
            log.reopen();
        }
        let config = match Config::load(&self.path) {
            Ok(config) => config,
            Err(error) => {
                state.metrics.config_reloaded(false);
                tracing::error!(%error, "SIGHUP: configuration refused; the last good one stays");
                return;
            }
        };
        let reloaded = reload(state, self.certificates.as_deref(), &config).await;
        state.metrics.config_reloaded(reloaded.is_ok());
        match reloaded {
            Ok(reloaded) => {
                tracing::info!(apps = config.apps.len(), "SIGHUP: configuration reloaded");
                for key in reloaded.needing_restart {
                    tracing::warn!(
                        key,
                        "SIGHUP: this key changed but cannot change in place; it takes effect \
                         at the next start or upgrade (-u)"
                    );
                }
            }
            Err(error) => {
                tracing::error!(%error, "SIGHUP: configuration refused; the last good one stays")
            }
        }
    }
}
