//! Sessions: issuing tokens at login and authenticating them on every proxied request.
//!
//! Hot path. A token is checked in this order:
//! 1. the cache of live sessions, by the token's SHA-256: a hit costs no query and no HMAC
//!    (only issued tokens are ever cached), and the session's identity headers are already
//!    rendered;
//! 2. its HMAC tag ([`token`]): a forged or guessed token is refused with no query at all;
//! 3. a short-lived cache of tokens the store did not know (retired or expired ones);
//! 4. the store, with concurrent misses for one token coalesced into one query.
//!
//! Expiry slides: every use pushes it `ttl` ahead in memory, but the store is written at most
//! once per session per `extend_interval`, in the background.
//!
//! The live cache is `quick_cache` (sharded, S3-FIFO eviction), not moka: moka's bookkeeping
//! is about 370 bytes per entry (measured, `benches/memory.rs`), more than a whole session, and
//! a million sessions must fit in 512 MiB. quick_cache costs about 75 bytes an entry and
//! has no time-to-live of its own, so each [`Session`] records when it was loaded and a lookup
//! treats one older than `cache_ttl` as a miss.

pub mod sync;
pub mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use moka::future::Cache;
use parking_lot::Mutex;

use crate::config::SessionConfig;
use crate::error::ApiError;
use crate::gateway::identity::IdentityHeaders;
use crate::observe::{Lookup, Metrics};
use crate::store::{LoginRecord, Store, StoreError, UserRow};
use crate::types::unix_now;
use token::{TokenHash, TokenSigner};

/// A live session as the gateway holds it. Kept small: a million of them are cached.
#[derive(Debug)]
pub struct Session {
    pub user_id: i64,
    /// Shared by every session of the app (see [`Sessions::intern`]).
    appid: Arc<str>,
    pub identity: IdentityHeaders,
    token_hash: TokenHash,
    expires_at: AtomicI64,
    /// When the store's expiry was last written (inferred from it on load).
    extended_at: AtomicI64,
    /// When this copy was read from the store (or created by a login): it is trusted for
    /// `cache_ttl` after that.
    loaded_at: i64,
}

impl Session {
    fn new(user: &UserRow, appid: Arc<str>, token_hash: TokenHash, ttl: i64, now: i64) -> Self {
        Self {
            user_id: user.id,
            appid,
            identity: IdentityHeaders::render(user),
            token_hash,
            expires_at: AtomicI64::new(user.expires_at),
            extended_at: AtomicI64::new(user.expires_at - ttl),
            loaded_at: now,
        }
    }

    /// The app the session's token was issued for.
    pub fn appid(&self) -> &str {
        &self.appid
    }

    /// The user's openid.
    pub fn openid(&self) -> &str {
        self.identity.openid()
    }

    /// Unix time after which the session is dead unless used again.
    pub fn expires_at(&self) -> i64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// The token's hash, hex-encoded as the store keeps it.
    pub fn token_hash_hex(&self) -> String {
        hex::encode(self.token_hash)
    }
}

/// The result of a login.
pub struct Login {
    pub token: String,
    pub user: UserRow,
}

/// Token issue and authentication, shared by every worker.
pub struct Sessions {
    store: Arc<Store>,
    signer: TokenSigner,
    live: quick_cache::sync::Cache<TokenHash, Arc<Session>>,
    unknown: Cache<TokenHash, ()>,
    /// One shared copy of each appid, for [`Session::appid`].
    appids: Mutex<Vec<Arc<str>>>,
    ttl: i64,
    extend_interval: i64,
    cache_ttl: i64,
    metrics: Arc<Metrics>,
    /// This node's name in the session changes it publishes, so it skips its own.
    origin: String,
}

impl Sessions {
    /// Build the session layer; the token key comes from the config or, when absent, from the
    /// store (generated once and shared by every node on that database).
    pub async fn new(
        store: Arc<Store>,
        config: &SessionConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let key = match &config.token_key {
            Some(key) => key.expose().to_string(),
            None => {
                store
                    .setting_or_insert("token_key", &TokenSigner::generate_key())
                    .await?
            }
        };
        Ok(Self {
            store,
            metrics,
            origin: crate::sim::random_hex(8),
            signer: TokenSigner::new(&key),
            live: quick_cache::sync::Cache::new(
                usize::try_from(config.cache_capacity).unwrap_or(usize::MAX),
            ),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(
                    config
                        .negative_cache_ttl
                        .max(std::time::Duration::from_millis(1)),
                )
                .build(),
            appids: Mutex::new(Vec::new()),
            ttl: config.ttl.as_secs() as i64,
            extend_interval: config.extend_interval.as_secs() as i64,
            cache_ttl: config.cache_ttl.as_secs() as i64,
        })
    }

    /// The live session of `token` for `appid`, or `NotLoggedIn`.
    pub async fn authenticate(&self, appid: &str, token: &str) -> Result<Arc<Session>, ApiError> {
        if token.len() != token::TOKEN_LEN {
            self.metrics.session_lookup(Lookup::Forged);
            return Err(ApiError::NotLoggedIn);
        }
        let hash = token::hash(token);
        let now = unix_now();
        // A cached session was keyed by the hash of a token this cluster issued, so a hit
        // needs no HMAC check; every token that misses is checked before anything else.
        let session = match self.live.get(&hash) {
            Some(session) if now - session.loaded_at < self.cache_ttl => {
                self.metrics.session_lookup(Lookup::Hit);
                session
            }
            _ if !self.signer.verify(token) => {
                self.metrics.session_lookup(Lookup::Forged);
                return Err(ApiError::NotLoggedIn);
            }
            // Boxed: the store query's state is kilobytes, and unboxed it would make every
            // request's future (Pingora boxes each phase's) that large, hits included.
            _ => Box::pin(self.load(hash, now)).await?,
        };
        // A token is bound to the app it was issued for.
        if *session.appid != *appid {
            return Err(ApiError::NotLoggedIn);
        }
        if now >= session.expires_at() {
            self.live.remove(&hash);
            return Err(ApiError::NotLoggedIn);
        }
        self.slide(&session, now);
        Ok(session)
    }

    /// Read the session of `hash` from the store and cache it. Concurrent loads of one token
    /// wait for the first: it holds the cache's placeholder while it queries.
    async fn load(&self, hash: TokenHash, now: i64) -> Result<Arc<Session>, ApiError> {
        if self.unknown.get(&hash).await.is_some() {
            self.metrics.session_lookup(Lookup::Unknown);
            return Err(ApiError::NotLoggedIn);
        }
        let guard = match self.live.get_value_or_guard_async(&hash).await {
            Ok(session) if now - session.loaded_at < self.cache_ttl => {
                self.metrics.session_lookup(Lookup::Hit);
                return Ok(session);
            }
            Ok(_stale) => None,
            Err(guard) => Some(guard),
        };
        // A waiter handed the placeholder after a fruitless load finds the token here.
        if self.unknown.get(&hash).await.is_some() {
            self.metrics.session_lookup(Lookup::Unknown);
            return Err(ApiError::NotLoggedIn);
        }
        let user = match self.store.user_by_token_hash(&hex::encode(hash)).await {
            Ok(Some(user)) if user.expires_at > now => {
                self.metrics.session_lookup(Lookup::Miss);
                user
            }
            Ok(_) => {
                self.metrics.session_lookup(Lookup::Unknown);
                if guard.is_none() {
                    // The stale copy of a session that has since ended.
                    self.live.remove(&hash);
                }
                self.unknown.insert(hash, ()).await;
                return Err(ApiError::NotLoggedIn);
            }
            Err(cause) => {
                self.metrics.session_lookup(Lookup::Miss);
                tracing::error!(error = %cause, "session lookup failed");
                return Err(ApiError::StoreUnavailable);
            }
        };
        let session = Arc::new(Session::new(
            &user,
            self.intern(&user.appid),
            hash,
            self.ttl,
            now,
        ));
        match guard {
            Some(guard) => {
                // Err only when a login or an invalidation replaced the placeholder meanwhile.
                let _ = guard.insert(session.clone());
            }
            None => self.live.insert(hash, session.clone()),
        }
        Ok(session)
    }

    /// Push the expiry forward; write it to the store at most once per interval.
    fn slide(&self, session: &Arc<Session>, now: i64) {
        session.expires_at.store(now + self.ttl, Ordering::Relaxed);
        let last = session.extended_at.load(Ordering::Relaxed);
        if now - last < self.extend_interval {
            return;
        }
        // Only the request that wins this exchange writes; the others see the new time.
        if session
            .extended_at
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let store = self.store.clone();
        let session = session.clone();
        let expires_at = now + self.ttl;
        tokio::spawn(async move {
            let hash = session.token_hash_hex();
            if let Err(error) = store
                .extend_session(session.user_id, &hash, expires_at)
                .await
            {
                tracing::warn!(user_id = session.user_id, %error, "could not extend session");
                // Let a later request try again.
                session.extended_at.store(last, Ordering::Relaxed);
            }
        });
    }

    /// Record a login and issue its token; the user's previous token dies at once.
    pub async fn login(
        &self,
        appid: &str,
        openid: &str,
        unionid: Option<&str>,
        session_key: &str,
    ) -> Result<Login, StoreError> {
        let token = self.signer.issue();
        let hash = token::hash(&token);
        let expires_at = unix_now() + self.ttl;
        let (user, retired) = self
            .store
            .record_login(&LoginRecord {
                appid,
                openid,
                unionid,
                session_key,
                token_hash: &hex::encode(hash),
                expires_at,
            })
            .await?;
        if let Some(retired_hex) = retired {
            if let Some(retired) = decode_hash(&retired_hex) {
                self.live.remove(&retired);
            }
            self.publish(&retired_hex).await;
        }
        let session = Session::new(&user, self.intern(&user.appid), hash, self.ttl, unix_now());
        self.live.insert(hash, Arc::new(session));
        Ok(Login { token, user })
    }

    /// End `session` at once: the store forgets its token and this node's caches refuse it.
    /// `false` when the store no longer held it as live (retired by a login or a logout).
    pub async fn logout(&self, session: &Session) -> Result<bool, StoreError> {
        let live = self
            .store
            .retire_session(session.user_id, &session.token_hash_hex())
            .await?;
        self.live.remove(&session.token_hash);
        self.unknown.insert(session.token_hash, ()).await;
        self.publish(&session.token_hash_hex()).await;
        Ok(live)
    }

    /// Tell the other nodes to forget their cached copy of the session of `token_hash`. A
    /// failure is logged, not returned: the change itself is in the store, and the other
    /// nodes' copies expire after `session.cache_ttl_seconds` at the latest.
    async fn publish(&self, token_hash: &str) {
        if let Err(error) = self
            .store
            .publish_session_change(&self.origin, token_hash)
            .await
        {
            tracing::warn!(%error, "could not tell the other nodes of a session change");
        }
    }

    /// A session change published by a node: forget the cached copy (the next request reads
    /// the store). A node's own changes are already in its cache.
    pub fn apply_change(&self, origin: &str, token_hash: &str) {
        if origin == self.origin {
            return;
        }
        if let Some(hash) = decode_hash(token_hash) {
            self.live.remove(&hash);
        }
    }

    /// Forget every cached session: changes may have been missed (the channel was down).
    pub fn forget_all(&self) {
        self.live.clear();
    }

    /// Re-render a cached session after its user's profile or mobile changed, so the next
    /// proxied request carries the new headers.
    pub async fn refresh(&self, session: &Session, user: &UserRow) {
        let fresh = Session::new(
            user,
            session.appid.clone(),
            session.token_hash,
            self.ttl,
            unix_now(),
        );
        fresh
            .expires_at
            .store(session.expires_at(), Ordering::Relaxed);
        fresh.extended_at.store(
            session.extended_at.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        // Replace only an entry still cached: a login that retired this token meanwhile removed
        // it, and putting it back would revive the retired token on this node. An entry evicted
        // meanwhile is re-read from the store, which already holds the new profile.
        let _ = self
            .live
            .replace(session.token_hash, Arc::new(fresh), false);
        self.publish(&session.token_hash_hex()).await;
    }

    /// Sessions currently cached (for metrics and benches).
    pub fn cached(&self) -> u64 {
        self.live.len() as u64
    }

    /// The shared copy of `appid`. Sessions are created only for configured apps, so the
    /// list stays as short as the configuration; this runs on logins and cache misses only.
    fn intern(&self, appid: &str) -> Arc<str> {
        let mut appids = self.appids.lock();
        if let Some(known) = appids.iter().find(|known| ***known == *appid) {
            return known.clone();
        }
        let interned: Arc<str> = Arc::from(appid);
        appids.push(interned.clone());
        interned
    }

    /// The store behind the sessions.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

fn decode_hash(hex_hash: &str) -> Option<TokenHash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut hash).ok()?;
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `authenticate` returns for these arguments.
    fn authenticate_future_size<'a, R>(_: fn(&'a Sessions, &'a str, &'a str) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn authenticate<'a>(
        sessions: &'a Sessions,
        appid: &'a str,
        token: &'a str,
    ) -> impl std::future::Future + 'a {
        sessions.authenticate(appid, token)
    }

    /// Pingora allocates every phase's future on every request, and `request_filter`'s holds
    /// this one: a cache hit must not pay for the store query's state.
    #[test]
    fn authenticating_a_cached_token_carries_no_store_query_state() {
        let size = authenticate_future_size(authenticate);
        assert!(size <= 256, "authenticate's future is {size} bytes");
    }
}
