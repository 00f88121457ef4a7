//! Every node hears of the session changes other nodes make — a login that retires a token, a
//! logout, a new profile or mobile — and forgets its cached copy, within a second, with no
//! query on the request path.
//!
//! - PostgreSQL: one `LISTEN` connection per node on [`SESSION_CHANNEL`]. When it drops, the
//!   node reconnects and then forgets its whole cache: what was published meanwhile is lost, so
//!   nothing cached before the gap is trusted.
//! - MySQL: the `session_changes` table, read every `session.sync_interval_ms` from the last id
//!   seen (an indexed range read); rows older than [`KEEP_CHANGES`] are purged. A node that
//!   could not read for longer than that forgets its whole cache. Ids are taken when a row is
//!   inserted and become visible when it commits, so a change can appear after a later id
//!   was read: the ids a read skipped are asked for again, by primary key, for
//!   [`LATE_CHANGES`] (see [`Cursor`]).
//! - SQLite: one node, nothing to hear.
//!
//! `session.cache_ttl_seconds` stays the backstop for anything missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::state::State;
use crate::store::{Dialect, SESSION_CHANNEL, SessionChange};
use crate::types::unix_now;

/// How long the MySQL table keeps a change: far longer than any node's polling interval.
const KEEP_CHANGES: Duration = Duration::from_secs(300);
/// How often a node purges old changes.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Wait before retrying a failed connection or read.
const RETRY: Duration = Duration::from_secs(1);
/// Most changes read per poll.
const BATCH: i64 = 1_000;
/// How long an id that a read skipped is asked for again. A change's row commits within
/// milliseconds of taking its id; an id still absent after this was never used (a failed
/// insert, or `auto_increment_increment` above 1).
const LATE_CHANGES: Duration = Duration::from_secs(10);
/// Most skipped ids kept; beyond it the oldest are given up.
const MAX_SKIPPED: usize = 500;

/// Where a MySQL node is in the changes table: the highest id read, and the lower ids it has
/// not seen yet, each with when it was first missed.
#[derive(Debug)]
struct Cursor {
    last_seen: i64,
    skipped: BTreeMap<i64, Instant>,
}

impl Cursor {
    fn new(last_seen: i64) -> Self {
        Self {
            last_seen,
            skipped: BTreeMap::new(),
        }
    }

    /// A node's cursor at start, `last_seen` being the highest id committed then. Changes that
    /// took lower ids may still be committing, invisible for now: the latest ids below it are
    /// treated as skipped ones, asked for by primary key for ten seconds. Those already
    /// committed come back once, as changes to sessions the node has barely begun to cache.
    fn starting_at(last_seen: i64, now: Instant) -> Self {
        let mut cursor = Self::new(0);
        cursor.saw(last_seen, now);
        cursor
    }

    /// Note a change read now; ids between the last one seen and it are missing so far.
    fn saw(&mut self, id: i64, now: Instant) {
        if id > self.last_seen {
            let from = (self.last_seen + 1).max(id - MAX_SKIPPED as i64);
            for missing in from..id {
                self.skipped.insert(missing, now);
            }
            self.last_seen = id;
            while self.skipped.len() > MAX_SKIPPED {
                self.skipped.pop_first();
            }
        } else {
            self.skipped.remove(&id);
        }
    }

    /// The skipped ids to ask for again, after giving up those missed for too long.
    fn still_missing(&mut self, now: Instant) -> Vec<i64> {
        self.skipped
            .retain(|_, missed| now.duration_since(*missed) < LATE_CHANGES);
        self.skipped.keys().copied().collect()
    }
}

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
    let last_seen = loop {
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
    let mut cursor = Cursor::starting_at(last_seen, Instant::now());
    let mut last_read = Instant::now();
    let mut last_purge = Instant::now();
    while pause(interval, &mut shutdown).await {
        match store.session_changes_after(cursor.last_seen, BATCH).await {
            Ok(changes) => {
                if last_read.elapsed() > KEEP_CHANGES {
                    // Changes may have been purged unread while the store was away.
                    state.sessions.forget_all();
                }
                last_read = Instant::now();
                for change in &changes {
                    hear(state, &mut cursor, change, last_read);
                }
            }
            Err(error) => tracing::warn!(%error, "session changes: cannot read"),
        }
        let missing = cursor.still_missing(Instant::now());
        if !missing.is_empty() {
            match store.session_changes_among(&missing).await {
                Ok(late) => {
                    for change in &late {
                        tracing::debug!(id = change.id, "session changes: a late change");
                        hear(state, &mut cursor, change, Instant::now());
                    }
                }
                Err(error) => tracing::warn!(%error, "session changes: cannot read"),
            }
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

/// Take in a change read from the table: note its id, and drop the cached session it retires.
fn hear(state: &State, cursor: &mut Cursor, change: &SessionChange, now: Instant) {
    cursor.saw(change.id, now);
    state
        .sessions
        .apply_change(&change.origin, &change.token_hash);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_a_read_skipped_are_asked_for_until_seen() {
        let now = Instant::now();
        let mut cursor = Cursor::new(10);
        cursor.saw(11, now);
        cursor.saw(14, now);
        assert_eq!(cursor.last_seen, 14);
        assert_eq!(cursor.still_missing(now), vec![12, 13]);
        cursor.saw(13, now);
        assert_eq!(cursor.still_missing(now), vec![12]);
        assert_eq!(cursor.last_seen, 14);
    }

    #[test]
    fn at_start_the_ids_below_the_highest_committed_are_asked_for() {
        let now = Instant::now();
        let mut cursor = Cursor::starting_at(10, now);
        assert_eq!(cursor.last_seen, 10);
        assert_eq!(cursor.still_missing(now), (1..10).collect::<Vec<i64>>());
        assert!(Cursor::starting_at(0, now).still_missing(now).is_empty());
    }

    #[test]
    fn an_id_missing_for_longer_than_a_late_change_takes_is_given_up() {
        let then = Instant::now();
        let mut cursor = Cursor::new(0);
        cursor.saw(3, then);
        let later = then + LATE_CHANGES;
        assert!(cursor.still_missing(later).is_empty());
    }

    #[test]
    fn a_jump_in_ids_keeps_only_the_latest_skipped() {
        let now = Instant::now();
        let mut cursor = Cursor::new(0);
        cursor.saw(1_000_000, now);
        let missing = cursor.still_missing(now);
        assert_eq!(missing.len(), MAX_SKIPPED);
        assert_eq!(missing.first(), Some(&(1_000_000 - MAX_SKIPPED as i64)));
        assert_eq!(missing.last(), Some(&999_999));
    }
}
