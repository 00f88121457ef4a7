//! `mpapi -c PATH` runs the gateway; `mpapi -t -c PATH` checks the file; `mpapi sim` runs the
//! WeChat simulator alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mpapi::config::Config;
use mpapi::server::{Listeners, TlsListener};
use mpapi::sim::Simulator;
use mpapi::tls::CertificateResolver;

#[derive(Parser)]
#[command(
    name = "mpapi",
    version,
    about = "The server side of WeChat mini programs, on Pingora"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "conf/mpapi.yaml",
        global = true
    )]
    conf: PathBuf,
    /// Validate the configuration and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the WeChat API simulator, knowing the apps of the configuration file.
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli.conf) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mpapi: configuration {}: {error}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("mpapi: configuration {} is valid", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::Sim { listen }) => run_simulator(&config, &listen),
        None => run_gateway(config, &cli.conf),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mpapi: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_gateway(config: Config, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plain = config.server.listen.map(bind).transpose()?;
    let tls = match &config.server.tls {
        Some(tls) => Some(TlsListener {
            listener: bind(tls.listen)?,
            certificates: CertificateResolver::new(tls.load_certificates()?),
        }),
        None => None,
    };
    let gateway = runtime.block_on(mpapi::server::spawn_with(config, Listeners { plain, tls }))?;
    if gateway.tls_addr != Some(gateway.addr) {
        tracing::info!(addr = %gateway.addr, "mpapi gateway listening");
    }
    if let Some(addr) = gateway.tls_addr {
        tracing::info!(%addr, "mpapi gateway listening with TLS");
    }
    runtime.block_on(serve_until_shutdown(&gateway, path));
    tracing::info!("shutting down");
    gateway.stop_blocking();
    Ok(())
}

fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Wait for SIGINT/SIGTERM; on SIGHUP, re-read the file and swap in its TLS certificates (new
/// handshakes get them, open connections keep theirs). A file that does not validate changes
/// nothing. Other keys take effect at the next start.
async fn serve_until_shutdown(gateway: &mpapi::server::RunningGateway, path: &Path) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        shutdown_signal().await;
        return;
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = hangup.recv() => reload(gateway, path),
        }
    }
}

fn reload(gateway: &mpapi::server::RunningGateway, path: &Path) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: configuration refused; nothing changed");
            return;
        }
    };
    match &config.server.tls {
        Some(tls) if gateway.tls_addr.is_some() => match gateway.reload_certificates(tls) {
            Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
            Err(error) => {
                tracing::error!(%error, "SIGHUP: certificates refused; the old ones stay")
            }
        },
        _ => {}
    }
    tracing::warn!("SIGHUP: keys other than the TLS certificates take effect at the next start");
}

fn run_simulator(config: &Config, listen: &str) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let simulator = Simulator::for_config(config);
        tracing::info!(%listen, "WeChat simulator listening");
        mpapi::sim::serve(listener, simulator, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
