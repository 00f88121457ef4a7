//! The notification queue: rows written by `POST /notify`, claimed and finished by the
//! dispatcher of any node.
//!
//! Safety across nodes rests on three rules, all enforced here in SQL:
//! - a row is claimed (`pending` → `sending`) by exactly one node: `FOR UPDATE SKIP LOCKED` where
//!   the server has it, else a conditional update per row ([`ClaimStrategy`]);
//! - a claim carries a `claim_id` and a lease; the result of a send is written only where the
//!   row still carries that `claim_id` (a fenced write), so a node whose lease ran out cannot
//!   overwrite what happened after;
//! - a claim whose lease expired is returned to `pending` (or `failed` when it was the last
//!   attempt) by whichever node notices first.
//!
//! Dispatcher queries are counted apart from request queries ([`Store::background_query_count`]).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::ClaimStrategy;
use super::{Dialect, Store, StoreError};

const COLUMNS: &str = "id, appid, user_id, openid, template_id, page, data, miniprogram_state, \
                       lang, description, state, active_at, next_attempt_at, attempts, \
                       last_errcode, last_error, lease_until, sent_at, created_at, updated_at";

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationState {
    /// Waiting for `next_attempt_at` (first `active_at`, later a retry time).
    Pending,
    /// Claimed by a node that is sending it (until `lease_until`).
    Sending,
    /// WeChat accepted it.
    Sent,
    /// WeChat refused it for good, or every attempt failed.
    Failed,
    /// Its user cancelled it before it was sent.
    Cancelled,
}

impl NotificationState {
    /// The word stored and shown to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "pending" => Self::Pending,
            "sending" => Self::Sending,
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// A notification as stored.
#[derive(Debug, Clone)]
pub struct NotificationRow {
    pub id: i64,
    pub appid: String,
    pub user_id: i64,
    pub openid: String,
    pub template_id: String,
    pub page: Option<String>,
    /// Subscribe-message data, JSON: `{"key":{"value":"…"}}`.
    pub data: String,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
    pub description: Option<String>,
    pub state: NotificationState,
    pub active_at: i64,
    pub next_attempt_at: i64,
    /// Sends started (claims), including the one in progress.
    pub attempts: i64,
    /// WeChat's errcode of the last failed attempt.
    pub last_errcode: Option<i64>,
    pub last_error: Option<String>,
    pub lease_until: i64,
    pub sent_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl NotificationRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let state: String = row.try_get("state")?;
        Ok(Self {
            id: row.try_get("id")?,
            appid: row.try_get("appid")?,
            user_id: row.try_get("user_id")?,
            openid: row.try_get("openid")?,
            template_id: row.try_get("template_id")?,
            page: row.try_get("page")?,
            data: row.try_get("data")?,
            miniprogram_state: row.try_get("miniprogram_state")?,
            lang: row.try_get("lang")?,
            description: row.try_get("description")?,
            state: NotificationState::parse(&state)
                .ok_or_else(|| sqlx::Error::Protocol(format!("unknown state {state}")))?,
            active_at: row.try_get("active_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            attempts: row.try_get("attempts")?,
            last_errcode: row.try_get("last_errcode")?,
            last_error: row.try_get("last_error")?,
            lease_until: row.try_get("lease_until")?,
            sent_at: row.try_get("sent_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What `POST /notify` stores.
pub struct NewNotification<'a> {
    pub appid: &'a str,
    pub user_id: i64,
    pub openid: &'a str,
    pub template_id: &'a str,
    pub page: Option<&'a str>,
    pub data: &'a str,
    pub miniprogram_state: Option<&'a str>,
    pub lang: Option<&'a str>,
    pub description: Option<&'a str>,
    pub active_at: i64,
}

/// One claim of due notifications by a dispatcher.
pub struct Claim<'a> {
    pub strategy: ClaimStrategy,
    /// Only notifications of these apps (the ones this node can send for).
    pub appids: &'a [String],
    /// Unique to this claim; every later write about these rows names it.
    pub claim_id: &'a str,
    pub now: i64,
    pub lease_until: i64,
    pub limit: u32,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish<'a> {
    Sent,
    /// Back to `pending` until `next_attempt_at`.
    Retry {
        next_attempt_at: i64,
        errcode: Option<i64>,
        error: &'a str,
    },
    Failed {
        errcode: Option<i64>,
        error: &'a str,
    },
}

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Error texts are shown to clients and kept in a VARCHAR(512).
fn clip(text: &str) -> &str {
    match text.char_indices().nth(500) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

impl Store {
    /// Queue a notification; returns its id.
    pub async fn insert_notification(&self, n: &NewNotification<'_>) -> Result<i64, StoreError> {
        self.count(1);
        let now = crate::types::unix_now();
        let mut sql = String::from(
            "INSERT INTO notifications (appid, user_id, openid, template_id, page, data, \
             miniprogram_state, lang, description, state, active_at, next_attempt_at, attempts, \
             lease_until, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, 0, 0, ?, ?)",
        );
        if self.dialect.insert_returns_id() {
            sql.push_str(" RETURNING id");
        }
        let sql = self.dialect.sql(&sql);
        let query = sqlx::query(&sql)
            .bind(n.appid)
            .bind(n.user_id)
            .bind(n.openid)
            .bind(n.template_id)
            .bind(n.page)
            .bind(n.data)
            .bind(n.miniprogram_state)
            .bind(n.lang)
            .bind(n.description)
            .bind(n.active_at)
            .bind(n.active_at)
            .bind(now)
            .bind(now);
        if self.dialect.insert_returns_id() {
            let row = query.fetch_one(&self.pool).await?;
            Ok(row.try_get::<i64, _>(0)?)
        } else {
            let done = query.execute(&self.pool).await?;
            done.last_insert_id()
                .ok_or_else(|| StoreError::Query(sqlx::Error::Protocol("no insert id".into())))
        }
    }

    /// Notification `id`, if it belongs to `user_id` of `appid`.
    pub async fn user_notification(
        &self,
        appid: &str,
        user_id: i64,
        id: i64,
    ) -> Result<Option<NotificationRow>, StoreError> {
        self.count(1);
        let row = sqlx::query(&self.dialect.sql(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = ? AND appid = ? AND user_id = ?"
        )))
        .bind(id)
        .bind(appid)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(NotificationRow::from_row).transpose()?)
    }

    /// Cancel notification `id` of `user_id` if it is still pending. Returns the row as it is
    /// afterwards (`None`: no such notification for this user).
    pub async fn cancel_notification(
        &self,
        appid: &str,
        user_id: i64,
        id: i64,
    ) -> Result<Option<NotificationRow>, StoreError> {
        self.count(1);
        // Only a pending row: a claimed one is being sent and can no longer be stopped.
        sqlx::query(&self.dialect.sql(
            "UPDATE notifications SET state = 'cancelled', updated_at = ? \
             WHERE id = ? AND appid = ? AND user_id = ? AND state = 'pending'",
        ))
        .bind(crate::types::unix_now())
        .bind(id)
        .bind(appid)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.user_notification(appid, user_id, id).await
    }

    /// Which [`ClaimStrategy`] this database allows (asks MySQL/MariaDB for its version).
    pub async fn claim_strategy(&self) -> Result<ClaimStrategy, StoreError> {
        let version = match self.dialect {
            Dialect::MySql => {
                self.count_background(1);
                let row = sqlx::query("SELECT VERSION()")
                    .fetch_one(&self.pool)
                    .await?;
                row.try_get::<String, _>(0)?
            }
            Dialect::Sqlite | Dialect::Postgres => String::new(),
        };
        Ok(self.dialect.claim_strategy(&version))
    }

    /// Return claims whose lease ended before `now` to `pending`, or to `failed` when they
    /// were the last of `max_attempts`. Returns how many rows changed.
    pub async fn release_expired_claims(
        &self,
        now: i64,
        max_attempts: i64,
    ) -> Result<u64, StoreError> {
        self.count_background(2);
        let error = "lease expired: the node sending it stopped or took too long";
        let failed = sqlx::query(&self.dialect.sql(
            "UPDATE notifications SET state = 'failed', last_errcode = NULL, last_error = ?, \
             lease_until = 0, claim_id = NULL, updated_at = ? \
             WHERE state = 'sending' AND lease_until < ? AND attempts >= ?",
        ))
        .bind(error)
        .bind(now)
        .bind(now)
        .bind(max_attempts)
        .execute(&self.pool)
        .await?;
        let pending = sqlx::query(&self.dialect.sql(
            "UPDATE notifications SET state = 'pending', next_attempt_at = ?, last_errcode = NULL, \
             last_error = ?, lease_until = 0, claim_id = NULL, updated_at = ? \
             WHERE state = 'sending' AND lease_until < ?",
        ))
        .bind(now)
        .bind(error)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(failed.rows_affected() + pending.rows_affected())
    }

    /// Claim up to `claim.limit` due notifications: each becomes `sending` under this claim,
    /// with one more attempt counted. Returns the claimed rows.
    pub async fn claim_notifications(
        &self,
        claim: &Claim<'_>,
    ) -> Result<Vec<NotificationRow>, StoreError> {
        let candidates = format!(
            "SELECT id FROM notifications WHERE state = 'pending' AND next_attempt_at <= ? \
             AND appid IN ({}) ORDER BY next_attempt_at, id LIMIT ?",
            placeholders(claim.appids.len())
        );
        let ids = match claim.strategy {
            ClaimStrategy::SkipLocked => self.claim_skip_locked(claim, &candidates).await?,
            ClaimStrategy::ConditionalUpdate => self.claim_conditional(claim, &candidates).await?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.count_background(1);
        let sql = self.dialect.sql(&format!(
            "SELECT {COLUMNS} FROM notifications WHERE claim_id = ? AND id IN ({}) ORDER BY id",
            placeholders(ids.len())
        ));
        let mut query = sqlx::query(&sql).bind(claim.claim_id);
        for id in &ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(NotificationRow::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Lock the candidates (skipping rows another node holds locked) and claim them, in one
    /// transaction.
    async fn claim_skip_locked(
        &self,
        claim: &Claim<'_>,
        candidates: &str,
    ) -> Result<Vec<i64>, StoreError> {
        self.count_background(1);
        let mut tx = self.pool.begin().await?;
        let select = self
            .dialect
            .sql(&format!("{candidates} FOR UPDATE SKIP LOCKED"));
        let mut query = sqlx::query_as::<_, (i64,)>(&select).bind(claim.now);
        for appid in claim.appids {
            query = query.bind(appid);
        }
        let ids: Vec<i64> = query
            .bind(i64::from(claim.limit))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        if !ids.is_empty() {
            self.count_background(1);
            let update = self.dialect.sql(&format!(
                "UPDATE notifications SET state = 'sending', attempts = attempts + 1, \
                 lease_until = ?, claim_id = ?, updated_at = ? WHERE id IN ({})",
                placeholders(ids.len())
            ));
            let mut query = sqlx::query(&update)
                .bind(claim.lease_until)
                .bind(claim.claim_id)
                .bind(claim.now);
            for id in &ids {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Read the candidates, then take each with an update that only succeeds while the row is
    /// still pending and due: of two nodes racing for a row, exactly one changes it.
    async fn claim_conditional(
        &self,
        claim: &Claim<'_>,
        candidates: &str,
    ) -> Result<Vec<i64>, StoreError> {
        self.count_background(1);
        let select = self.dialect.sql(candidates);
        let mut query = sqlx::query_as::<_, (i64,)>(&select).bind(claim.now);
        for appid in claim.appids {
            query = query.bind(appid);
        }
        let candidates = query
            .bind(i64::from(claim.limit))
            .fetch_all(&self.pool)
            .await?;
        let update = self.dialect.sql(
            "UPDATE notifications SET state = 'sending', attempts = attempts + 1, \
             lease_until = ?, claim_id = ?, updated_at = ? \
             WHERE id = ? AND state = 'pending' AND next_attempt_at <= ?",
        );
        let mut claimed = Vec::with_capacity(candidates.len());
        for (id,) in candidates {
            self.count_background(1);
            let done = sqlx::query(&update)
                .bind(claim.lease_until)
                .bind(claim.claim_id)
                .bind(claim.now)
                .bind(id)
                .bind(claim.now)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 1 {
                claimed.push(id);
            }
        }
        Ok(claimed)
    }

    /// Record how the attempt under `claim_id` ended. False when the claim was lost meanwhile
    /// (its lease expired and the row was released): nothing is written then.
    pub async fn finish_notification(
        &self,
        id: i64,
        claim_id: &str,
        finish: &Finish<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.count_background(1);
        let set = match finish {
            Finish::Sent => "state = 'sent', sent_at = ?",
            Finish::Retry { .. } => {
                "state = 'pending', next_attempt_at = ?, last_errcode = ?, last_error = ?"
            }
            Finish::Failed { .. } => "state = 'failed', last_errcode = ?, last_error = ?",
        };
        // Fenced: only while the row is still under this claim.
        let sql = self.dialect.sql(&format!(
            "UPDATE notifications SET {set}, lease_until = 0, claim_id = NULL, updated_at = ? \
             WHERE id = ? AND claim_id = ? AND state = 'sending'"
        ));
        let query = sqlx::query(&sql);
        let query = match finish {
            Finish::Sent => query.bind(now),
            Finish::Retry {
                next_attempt_at,
                errcode,
                error,
            } => query
                .bind(*next_attempt_at)
                .bind(*errcode)
                .bind(clip(error)),
            Finish::Failed { errcode, error } => query.bind(*errcode).bind(clip(error)),
        };
        let done = query
            .bind(now)
            .bind(id)
            .bind(claim_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
