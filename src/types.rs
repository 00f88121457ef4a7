//! Small newtypes shared by every layer. A [`Secret`] cannot be printed by accident: its
//! `Debug` and `Display` write `***`, so no log line or error message can leak one.

use std::fmt;

/// A value that must never reach a log: app secrets, host tokens, push keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that must send it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Current Unix time in seconds; the store keeps every instant in this form so the three SQL
/// dialects agree on it.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Exponential back-off shared by every retry loop (notification sends, help-desk forwards):
/// `base × 2^(attempt−1)` in whole seconds, at most `cap`.
pub fn backoff_seconds(base: std::time::Duration, attempt: i64, cap: i64) -> i64 {
    let doublings = attempt.clamp(1, 31) - 1;
    let seconds = base.as_secs_f64() * 2f64.powi(doublings as i32);
    (seconds.ceil() as i64).min(cap)
}

/// The store outages a background loop lives through, logged once each rather than once per
/// poll: a warning when the first statement fails, debug lines while it keeps failing, and one
/// line with the count and duration when a statement succeeds again.
#[derive(Debug, Default)]
pub struct Outage {
    /// Unix time of the first failure of the current outage; 0 when the store answers.
    since: std::sync::atomic::AtomicI64,
    failures: std::sync::atomic::AtomicU64,
}

impl Outage {
    /// A statement of `task` failed with `error`.
    pub fn failed(&self, task: &'static str, error: &dyn std::fmt::Display) {
        use std::sync::atomic::Ordering::Relaxed;
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if self
            .since
            .compare_exchange(0, unix_now(), Relaxed, Relaxed)
            .is_ok()
        {
            tracing::warn!(task, %error, "store unavailable; retrying every poll, logged once");
        } else {
            tracing::debug!(task, %error, failures, "store still unavailable");
        }
    }

    /// A statement of `task` succeeded: ends the current outage, if any.
    pub fn ok(&self, task: &'static str) {
        use std::sync::atomic::Ordering::Relaxed;
        let since = self.since.swap(0, Relaxed);
        if since != 0 {
            let failures = self.failures.swap(0, Relaxed);
            let seconds = unix_now() - since;
            tracing::info!(task, failures, seconds, "store available again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_is_logged_once_not_once_per_poll() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outage = Outage::default();
            outage.ok("poller");
            for _ in 0..50 {
                outage.failed("poller", &"connection refused");
            }
            outage.ok("poller");
            outage.ok("poller");
            outage.failed("poller", &"connection refused");
        });
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logs.matches("store unavailable").count(), 2, "{logs}");
        assert_eq!(logs.matches("store available again").count(), 1, "{logs}");
        assert!(logs.contains("failures=50"), "{logs}");
    }
}
