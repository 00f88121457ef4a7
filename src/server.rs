//! Starting and stopping a gateway: the one code path used by `main`, the tests and the benches.
//!
//! [`spawn`] takes an already-bound listener (tests bind port 0) and runs the Pingora proxy
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
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::Service as _;
use pingora::services::background::BackgroundService;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::notify;
use crate::shutdown::wait_for;
use crate::sim::{self, Simulator};
use crate::state::{StartError, State};

/// A gateway running on its own threads.
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state (tests read the store's query count from here).
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    /// Set by [`RunningGateway::kill`]: stop without finishing anything.
    killed: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
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
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
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
            let started = runtime.block_on(start(config, listener, addr, shutdown_rx.clone()));
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
        state,
        shutdown: shutdown_tx,
        killed,
        thread: Some(thread),
    })
}

async fn start(
    config: Config,
    listener: std::net::TcpListener,
    addr: SocketAddr,
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
    let key = addr.to_string();
    service.add_tcp(&key);
    let mut fds = Fds::new();
    fds.add(key, listener.into_raw_fd());
    let fds: ListenFds = Arc::new(Mutex::new(fds));
    tokio::spawn(async move { service.start_service(Some(fds), shutdown, 1).await });
    Ok((state, dispatcher))
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
