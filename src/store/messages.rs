//! Customer-service messages waiting for (or done with) delivery to a help desk.
//!
//! The unique `(appid, dedup_key)` makes recording idempotent across WeChat's retries and across
//! nodes; `next_attempt_at` is both the retry time and the claim (see the migration's comment).

use sqlx::Row;

use super::{Store, StoreError};

/// Row states.
const PENDING: i64 = 0;
const DELIVERED: i64 = 1;
const ABANDONED: i64 = 2;

/// A message as received, before it is recorded.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub appid: &'a str,
    pub dedup_key: &'a str,
    pub openid: &'a str,
    pub msg_type: &'a str,
    pub event: &'a str,
    pub content: &'a str,
}

/// A recorded message that is due for delivery.
#[derive(Debug, Clone)]
pub struct PendingMessage {
    pub id: i64,
    pub appid: String,
    pub openid: String,
    pub msg_type: String,
    pub event: String,
    pub content: String,
    /// Attempts made before this one.
    pub attempts: i64,
    pub created_at: i64,
}

impl Store {
    /// Record a received message, due at once. False when the same message (same dedup key)
    /// was recorded before: WeChat is retrying it, and it must not be forwarded again.
    pub async fn record_message(
        &self,
        message: &NewMessage<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.count(1);
        let insert = self.dialect.insert_ignore(
            "messages",
            &[
                "appid",
                "dedup_key",
                "openid",
                "msg_type",
                "event",
                "content",
                "next_attempt_at",
                "created_at",
                "updated_at",
            ],
            &["appid", "dedup_key"],
        );
        let done = sqlx::query(&insert)
            .bind(message.appid)
            .bind(message.dedup_key)
            .bind(message.openid)
            .bind(message.msg_type)
            .bind(message.event)
            .bind(message.content)
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Up to `limit` pending messages whose next attempt is due, oldest first.
    pub async fn due_messages(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<PendingMessage>, StoreError> {
        self.count_background(1);
        let rows = sqlx::query(&self.dialect.sql(&format!(
            "SELECT id, appid, openid, msg_type, event, content, attempts, created_at FROM messages \
             WHERE state = {PENDING} AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT {limit}"
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PendingMessage {
                    id: row.try_get("id")?,
                    appid: row.try_get("appid")?,
                    openid: row.try_get("openid")?,
                    msg_type: row.try_get("msg_type")?,
                    event: row.try_get("event")?,
                    content: row.try_get("content")?,
                    attempts: row.try_get("attempts")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Take message `id` for one delivery attempt until `lease_until`. False when another node
    /// (or task) took it first or it is no longer due.
    pub async fn claim_message(
        &self,
        id: i64,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.count_background(1);
        let done = sqlx::query(&self.dialect.sql(&format!(
            "UPDATE messages SET next_attempt_at = ?, attempts = attempts + 1, updated_at = ? \
             WHERE id = ? AND state = {PENDING} AND next_attempt_at <= ?"
        )))
        .bind(lease_until)
        .bind(now)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The help desk accepted message `id`.
    pub async fn message_delivered(&self, id: i64, now: i64) -> Result<(), StoreError> {
        self.count_background(1);
        sqlx::query(&self.dialect.sql(&format!(
            "UPDATE messages SET state = {DELIVERED}, last_error = '', updated_at = ? WHERE id = ?"
        )))
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Delivery of message `id` failed: try again at `retry_at`.
    pub async fn message_failed(
        &self,
        id: i64,
        retry_at: i64,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.count_background(1);
        let error: String = error.chars().take(255).collect();
        sqlx::query(&self.dialect.sql(&format!(
            "UPDATE messages SET next_attempt_at = ?, last_error = ?, updated_at = ? \
             WHERE id = ? AND state = {PENDING}"
        )))
        .bind(retry_at)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stop trying message `id` (its app no longer forwards, say).
    pub async fn abandon_message(&self, id: i64, error: &str, now: i64) -> Result<(), StoreError> {
        self.count_background(1);
        let error: String = error.chars().take(255).collect();
        sqlx::query(&self.dialect.sql(&format!(
            "UPDATE messages SET state = {ABANDONED}, last_error = ?, updated_at = ? WHERE id = ?"
        )))
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Housekeeping: abandon pending messages received before `abandon_before`, and delete
    /// finished ones last touched before `delete_before` (their dedup keys are no longer needed:
    /// WeChat retries within seconds). Returns (abandoned, deleted).
    pub async fn expire_messages(
        &self,
        abandon_before: i64,
        delete_before: i64,
        now: i64,
    ) -> Result<(u64, u64), StoreError> {
        self.count_background(2);
        let abandoned = sqlx::query(&self.dialect.sql(&format!(
            "UPDATE messages SET state = {ABANDONED}, last_error = 'too old', updated_at = ? \
             WHERE state = {PENDING} AND created_at < ?"
        )))
        .bind(now)
        .bind(abandon_before)
        .execute(&self.pool)
        .await?;
        let deleted = sqlx::query(&self.dialect.sql(&format!(
            "DELETE FROM messages WHERE state <> {PENDING} AND updated_at < ?"
        )))
        .bind(delete_before)
        .execute(&self.pool)
        .await?;
        Ok((abandoned.rows_affected(), deleted.rows_affected()))
    }
}
