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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
