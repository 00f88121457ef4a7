//! Telling the other nodes which cached sessions to forget (see `session::sync`).
//!
//! PostgreSQL carries each change on a `NOTIFY` channel; MySQL, which has none, in the
//! `session_changes` table that every node polls; SQLite serves one node and needs neither.

use sqlx::Row;

use super::{Dialect, Store, StoreError};

/// The PostgreSQL channel of session changes; a payload is `origin:token_hash`.
pub const SESSION_CHANNEL: &str = "mpapi_sessions";

/// A session change read from the MySQL table.
#[derive(Debug, Clone)]
pub struct SessionChange {
    pub id: i64,
    pub origin: String,
    pub token_hash: String,
}

impl Store {
    /// Publish that the session of `token_hash` changed (retired, or its profile), from the node
    /// `origin`. Part of the request that made the change.
    pub async fn publish_session_change(
        &self,
        origin: &str,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        match self.dialect {
            Dialect::Sqlite => {}
            Dialect::Postgres => {
                self.count(1);
                sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, $2)) AS sent")
                    .bind(SESSION_CHANNEL)
                    .bind(format!("{origin}:{token_hash}"))
                    .execute(&self.pool)
                    .await?;
            }
            Dialect::MySql => {
                self.count(1);
                sqlx::query(
                    "INSERT INTO session_changes (origin, token_hash, created_at) VALUES (?, ?, ?)",
                )
                .bind(origin)
                .bind(token_hash)
                .bind(crate::types::unix_now())
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The newest change's id (0 when there is none): where a starting node begins to read.
    pub async fn last_session_change(&self) -> Result<i64, StoreError> {
        self.count_background(1);
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM session_changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Changes after `last_seen`, oldest first, at most `limit`. One indexed range read.
    pub async fn session_changes_after(
        &self,
        last_seen: i64,
        limit: i64,
    ) -> Result<Vec<SessionChange>, StoreError> {
        self.count_background(1);
        let rows = sqlx::query(&self.dialect.sql(
            "SELECT id, origin, token_hash FROM session_changes WHERE id > ? ORDER BY id LIMIT ?",
        ))
        .bind(last_seen)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_of).collect()
    }

    /// The changes among `ids` that exist now (ids a reader skipped because their rows had not
    /// committed yet when later ones had). One primary-key read.
    pub async fn session_changes_among(
        &self,
        ids: &[i64],
    ) -> Result<Vec<SessionChange>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.count_background(1);
        let marks = vec!["?"; ids.len()].join(", ");
        let sql = self.dialect.sql(&format!(
            "SELECT id, origin, token_hash FROM session_changes WHERE id IN ({marks}) ORDER BY id"
        ));
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(change_of).collect()
    }

    /// Delete changes written before `before` (unix seconds); every node has read them.
    pub async fn purge_session_changes(&self, before: i64) -> Result<u64, StoreError> {
        self.count_background(1);
        let done = sqlx::query(
            &self
                .dialect
                .sql("DELETE FROM session_changes WHERE created_at < ?"),
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

fn change_of(row: &sqlx::any::AnyRow) -> Result<SessionChange, StoreError> {
    Ok(SessionChange {
        id: row.try_get("id")?,
        origin: row.try_get("origin")?,
        token_hash: row.try_get("token_hash")?,
    })
}
