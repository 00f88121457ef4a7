//! Pingora's own log lines, which it writes through the `log` crate, bridged into `tracing` as
//! `tracing-subscriber` would bridge them, with one correction.
//!
//! Pingora reports a client whose TLS handshake fails or times out at ERROR, under the same
//! target as a failed `accept()`; a client that chose HTTP/2 but did not start it properly
//! (no valid connection preface) at ERROR too; and at ERROR again a request that failed on the
//! client's side ("Fail to proxy: Downstream …": the client closed or reset the connection,
//! sent its header too slowly, or stopped reading its answer). On a port open to the internet
//! that is every scanner, every TCP probe of the TLS port and every client that gives up: the
//! client's doing, nothing an operator can act on, yet it trips alerts on ERROR lines. Those
//! lines are logged at INFO, as nginx logs a failed SSL handshake or a client timeout; every
//! other line keeps its level.

use tracing_log::{AsLog, LogTracer};

/// Pingora's lines for a client's failure: where it logs them, and how they begin.
const CLIENT_FAILURES: [(&str, &str); 3] = [
    // "Downstream handshake error from …", "… timeout": TLS.
    ("pingora_core::services::listening", "Downstream handshake"),
    // "H2 handshake error …": HTTP/2 after ALPN chose it.
    ("pingora_core::apps", "H2 handshake error"),
    // "Fail to proxy: Downstream ReadError …", "… WriteError …", "… ConnectionClosed …".
    ("pingora_proxy", "Fail to proxy: Downstream "),
];

struct Bridge(LogTracer);

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let target = record.target();
        let of_target = || CLIENT_FAILURES.iter().filter(move |(t, _)| *t == target);
        if record.level() == log::Level::Error && of_target().next().is_some() {
            let text = record.args().to_string();
            if of_target().any(|(_, prefix)| text.starts_with(prefix)) {
                self.0.log(
                    &log::Record::builder()
                        .level(log::Level::Info)
                        .target(target)
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .args(format_args!("{text}"))
                        .build(),
                );
                return;
            }
        }
        self.0.log(record);
    }

    fn flush(&self) {}
}

/// Route `log` records into `tracing`. Call once, after the global `tracing` subscriber is set
/// (its level becomes the `log` crate's); fails when a `log` logger is already installed.
pub fn install() -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(Bridge(LogTracer::new())))?;
    log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    Ok(())
}
