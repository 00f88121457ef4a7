//! `mpapi -c PATH` runs the gateway (`-u` to take over from a running one, `-d` in the
//! background); `mpapi -t -c PATH` checks the file; `mpapi sim` runs the WeChat simulator alone.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mpapi::config::Config;
use mpapi::process::ProcessOptions;
use mpapi::sim::Simulator;

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
    /// Take the listening sockets over from a running mpapi (send it SIGQUIT next).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background, writing `server.pid_file`.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
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

/// Log lines go to stderr, as text or (`log.format: json`) one JSON object per line; Pingora's
/// own lines join them through [`mpapi::observe::pingora_log`].
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let set = if json {
        tracing::subscriber::set_global_default(
            builder
                .json()
                .flatten_event(false)
                .with_current_span(true)
                .finish(),
        )
    } else {
        tracing::subscriber::set_global_default(builder.finish())
    };
    if set.is_ok() {
        let _ = mpapi::observe::pingora_log::install();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.conf) {
        Ok(config) => config,
        Err(error) => {
            init_logging(false);
            eprintln!("mpapi: configuration {}: {error}", cli.conf.display());
            return ExitCode::FAILURE;
        }
    };
    init_logging(config.log.json);
    if cli.test {
        println!("mpapi: configuration {} is valid", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::Sim { listen }) => run_simulator(&config, &listen),
        None => mpapi::process::run(
            config,
            ProcessOptions {
                path: cli.conf,
                upgrade: cli.upgrade,
                daemon: cli.daemon,
            },
        )
        .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mpapi: {error}");
            ExitCode::FAILURE
        }
    }
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
