//! Per-node rate limits on the native endpoints: `/login` per client address, the others per
//! `User-Token`. Counted in memory with `pingora-limits` (fixed one-minute windows over a
//! count-min sketch: no allocation per request, a bounded table whatever the number of keys).
//! Proxied `/app/*` requests are not limited here.
//!
//! A window starts when the first request after the previous one's end arrives, so 60 seconds
//! from any refusal is always in a new window: `Retry-After` says 60.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::config::LimitsConfig;
use crate::error::ApiError;

/// Counters per sketch row: large enough that a node seeing many thousand addresses a minute
/// does not count one client's neighbours against it (4 rows × 64 Ki × 8 bytes, twice: 4 MiB).
const SLOTS: usize = 1 << 16;
const HASHES: usize = 4;
const WINDOW: Duration = Duration::from_secs(60);

/// One limit: its window counter and the most calls a window admits.
struct Limit {
    rate: Rate,
    max: isize,
}

impl Limit {
    fn new(max: Option<u32>) -> Option<Self> {
        max.map(|max| Self {
            rate: Rate::new_with_estimator_config(WINDOW, HASHES, SLOTS),
            max: max as isize,
        })
    }

    fn admit<K: std::hash::Hash>(&self, key: &K) -> Result<(), ApiError> {
        if self.rate.observe(key, 1) > self.max {
            return Err(ApiError::TooManyRequests {
                retry_after_seconds: WINDOW.as_secs(),
            });
        }
        Ok(())
    }
}

/// The node's limits.
pub struct RateLimits {
    login: Option<Limit>,
    native: Option<Limit>,
}

impl RateLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            login: Limit::new(config.login_per_ip_per_minute),
            native: Limit::new(config.native_per_token_per_minute),
        }
    }

    /// Count one `/login` from `client`.
    pub fn admit_login(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.login, client) {
            (Some(limit), Some(client)) => limit.admit(&client),
            _ => Ok(()),
        }
    }

    /// Count one native call made with `token` (the `User-Token` header's bytes).
    pub fn admit_native(&self, token: Option<&[u8]>) -> Result<(), ApiError> {
        match (&self.native, token) {
            (Some(limit), Some(token)) => limit.admit(&token),
            _ => Ok(()),
        }
    }
}
