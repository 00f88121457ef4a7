//! Every node hears of the session changes other nodes make — a login that retires a token, a
//! logout, a new profile or mobile — and forgets its cached copy, within a second, with no
//! query on the request path.
//!
//! - PostgreSQL: one `LISTEN` connection per node on [`SESSION_CHANNEL`]. When it drops, the
//!   node reconnects and then forgets its whole cache: what was published meanwhile is lost, so
//!   nothing cached before the gap is trusted.
//! - MySQL: the `session_changes` table, read every `session.sync_interval_ms` from the last id
//!   seen (an indexed range read); rows older than [`KEEP_CHANGES`] are purged. A node that
//!   could not read for longer than that forgets its whole cache.
//! - SQLite: one node, nothing to hear.
//!
//! `session.cache_ttl_seconds` stays the backstop for anything missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::state::State;
use crate::store::{Dialect, SESSION_CHANNEL};
use crate::types::unix_now;

/// How long the MySQL table keeps a change: far longer than any node's polling interval.
const KEEP_CHANGES: Duration = Duration::from_secs(300);
/// How often a node purges old changes.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Wait before retrying a failed connection or read.
const RETRY: Duration = Duration::from_secs(1);
/// Most changes read per poll.
const BATCH: i64 = 1_000;

/// Hear the other nodes' session changes until shutdown.
pub async fn run(state: Arc<State>, shutdown: watch::Receiver<bool>) {
    match state.store.dialect() {
        Dialect::Sqlite => {}
        Dialect::Postgres => listen(&state, shutdown).await,
        Dialect::MySql => poll(&state, shutdown).await,
    }
}

/// Wait `duration`; false when the process shuts down first.
async fn pause(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => !*shutdown.borrow(),
        changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
    }
}

async fn listen(state: &State, mut shutdown: watch::Receiver<bool>) {
    let url = state.config.database.url.expose().to_string();
    let mut first = true;
    while !*shutdown.borrow() {
        let mut listener = match connect(&url).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "session changes: cannot listen; retrying");
                if !pause(RETRY, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        if !first {
            state.sessions.forget_all();
            tracing::info!("session changes: listening again; cached sessions forgotten");
        }
        first = false;
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = shutdown.changed() => return,
            };
            match received {
                Ok(Some(notification)) => {
                    if let Some((origin, hash)) = notification.payload().split_once(':') {
                        state.sessions.apply_change(origin, hash);
                    }
                }
                // The connection dropped: listen anew, then forget what may have been missed.
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "session changes: the listening connection failed");
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(SESSION_CHANNEL).await?;
    Ok(listener)
}

async fn poll(state: &State, mut shutdown: watch::Receiver<bool>) {
    let interval = state.config.session.sync_interval;
    let store = &state.store;
    let mut last_seen = loop {
        match store.last_session_change().await {
            Ok(id) => break id,
            Err(error) => {
                tracing::warn!(%error, "session changes: cannot read; retrying");
                if !pause(RETRY, &mut shutdown).await {
                    return;
                }
            }
        }
    };
    let mut last_read = Instant::now();
    let mut last_purge = Instant::now();
    while pause(interval, &mut shutdown).await {
        match store.session_changes_after(last_seen, BATCH).await {
            Ok(changes) => {
                if last_read.elapsed() > KEEP_CHANGES {
                    // Changes may have been purged unread while the store was away.
                    state.sessions.forget_all();
                }
                last_read = Instant::now();
                for change in changes {
                    last_seen = last_seen.max(change.id);
                    state
                        .sessions
                        .apply_change(&change.origin, &change.token_hash);
                }
            }
            Err(error) => tracing::warn!(%error, "session changes: cannot read"),
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            let before = unix_now() - KEEP_CHANGES.as_secs() as i64;
            if let Err(error) = store.purge_session_changes(before).await {
                tracing::warn!(%error, "session changes: cannot purge");
            }
        }
    }
}
