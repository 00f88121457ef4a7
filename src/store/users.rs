//! Users and their one live session.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, Store, StoreError};

pub(super) const USER_COLUMNS: &str = "id, appid, openid, unionid, session_key, expires_at, \
                                       nickname, avatar_url, phone_number, pure_phone_number, \
                                       country_code";

/// A user as the gateway needs it: identity, session expiry, profile and mobile.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: i64,
    pub appid: String,
    pub openid: String,
    pub unionid: Option<String>,
    /// WeChat's key for this user's encrypted data; never logged.
    pub session_key: String,
    pub expires_at: i64,
    pub nickname: Option<String>,
    pub avatar_url: Option<String>,
    pub phone_number: Option<String>,
    pub pure_phone_number: Option<String>,
    pub country_code: Option<String>,
}

impl UserRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            appid: row.try_get("appid")?,
            openid: row.try_get("openid")?,
            unionid: row.try_get("unionid")?,
            session_key: row.try_get("session_key")?,
            expires_at: row.try_get("expires_at")?,
            nickname: row.try_get("nickname")?,
            avatar_url: row.try_get("avatar_url")?,
            phone_number: row.try_get("phone_number")?,
            pure_phone_number: row.try_get("pure_phone_number")?,
            country_code: row.try_get("country_code")?,
        })
    }
}

/// What a login writes.
pub struct LoginRecord<'a> {
    pub appid: &'a str,
    pub openid: &'a str,
    pub unionid: Option<&'a str>,
    pub session_key: &'a str,
    pub token_hash: &'a str,
    pub expires_at: i64,
}

/// SQL rendered once per dialect at start.
pub(super) struct Statements {
    by_token: String,
    by_openid: String,
    token_of: String,
    upsert_login: String,
    extend: String,
    retire: String,
}

impl Statements {
    pub(super) fn new(dialect: Dialect) -> Self {
        Self {
            by_token: dialect.sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE token_hash = ?")),
            by_openid: dialect.sql(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE appid = ? AND openid = ?"
            )),
            token_of: dialect.sql("SELECT token_hash FROM users WHERE appid = ? AND openid = ?"),
            upsert_login: dialect.upsert(
                "users",
                &[
                    "appid",
                    "openid",
                    "unionid",
                    "session_key",
                    "token_hash",
                    "expires_at",
                    "created_at",
                    "updated_at",
                ],
                &["appid", "openid"],
                &[
                    // WeChat sends unionid only for apps bound to an open-platform account; a
                    // login without it must not erase one learnt earlier.
                    ("unionid", "COALESCE(NEW(unionid), OLD(unionid))"),
                    ("session_key", "NEW(session_key)"),
                    ("token_hash", "NEW(token_hash)"),
                    ("expires_at", "NEW(expires_at)"),
                    ("updated_at", "NEW(updated_at)"),
                ],
            ),
            extend: dialect
                .sql("UPDATE users SET expires_at = ? WHERE id = ? AND token_hash = ? AND expires_at < ?"),
            retire: dialect.sql("UPDATE users SET token_hash = NULL WHERE id = ? AND token_hash = ?"),
        }
    }
}

impl Store {
    /// The user whose live session token hashes to `token_hash`.
    pub async fn user_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<UserRow>, StoreError> {
        self.count(1);
        let row = sqlx::query(&self.sql.by_token)
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(UserRow::from_row).transpose()?)
    }

    /// The user `openid` of `appid`.
    pub async fn user_by_openid(
        &self,
        appid: &str,
        openid: &str,
    ) -> Result<Option<UserRow>, StoreError> {
        self.count(1);
        let row = sqlx::query(&self.sql.by_openid)
            .bind(appid)
            .bind(openid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(UserRow::from_row).transpose()?)
    }

    /// Record a login: create or update the user and make `token_hash` its only live session.
    /// Returns the user and the hash of the session this login retired, if any, so the caller
    /// can drop it from its cache.
    pub async fn record_login(
        &self,
        login: &LoginRecord<'_>,
    ) -> Result<(UserRow, Option<String>), StoreError> {
        self.count(3);
        let retired: Option<(Option<String>,)> = sqlx::query_as(&self.sql.token_of)
            .bind(login.appid)
            .bind(login.openid)
            .fetch_optional(&self.pool)
            .await?;
        let now = crate::types::unix_now();
        sqlx::query(&self.sql.upsert_login)
            .bind(login.appid)
            .bind(login.openid)
            .bind(login.unionid)
            .bind(login.session_key)
            .bind(login.token_hash)
            .bind(login.expires_at)
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(&self.sql.by_openid)
            .bind(login.appid)
            .bind(login.openid)
            .fetch_one(&self.pool)
            .await?;
        Ok((UserRow::from_row(&row)?, retired.and_then(|r| r.0)))
    }

    /// Slide a session's expiry forward to `expires_at`; a no-op when the token was retired
    /// meanwhile, or when another node already pushed it further.
    pub async fn extend_session(
        &self,
        user_id: i64,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.count(1);
        sqlx::query(&self.sql.extend)
            .bind(expires_at)
            .bind(user_id)
            .bind(token_hash)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// End the session `token_hash` of user `user_id`. Returns whether it was still live:
    /// false when a login or another logout retired it meanwhile.
    pub async fn retire_session(&self, user_id: i64, token_hash: &str) -> Result<bool, StoreError> {
        self.count(1);
        let done = sqlx::query(&self.sql.retire)
            .bind(user_id)
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
