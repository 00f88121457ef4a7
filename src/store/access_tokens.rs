//! Access tokens shared between nodes: compare-and-set writes and a fetch lease.

use sqlx::Row;

use super::{Store, StoreError};

/// An app's access token as the store holds it.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: String,
    pub expires_at: i64,
    /// When nodes should stop handing the token out and fetch a new one.
    pub refresh_at: i64,
    /// Incremented by every write; writes name the version they replace.
    pub version: i64,
}

impl Store {
    /// The app's token row, created empty when absent.
    pub async fn access_token(&self, appid: &str) -> Result<StoredToken, StoreError> {
        self.count(2);
        let insert = self
            .dialect
            .insert_ignore("access_tokens", &["appid"], &["appid"]);
        sqlx::query(&insert).bind(appid).execute(&self.pool).await?;
        let row = sqlx::query(&self.dialect.sql(
            "SELECT token, expires_at, refresh_at, version FROM access_tokens WHERE appid = ?",
        ))
        .bind(appid)
        .fetch_one(&self.pool)
        .await?;
        Ok(StoredToken {
            token: row.try_get("token")?,
            expires_at: row.try_get("expires_at")?,
            refresh_at: row.try_get("refresh_at")?,
            version: row.try_get("version")?,
        })
    }

    /// Try to become the one node fetching the app's next token until `lease_until`.
    pub async fn claim_token_fetch(
        &self,
        appid: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.count(1);
        let done =
            sqlx::query(&self.dialect.sql(
                "UPDATE access_tokens SET lease_until = ? WHERE appid = ? AND lease_until < ?",
            ))
            .bind(lease_until)
            .bind(appid)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replace the token if the row is still at `version`; false when another node wrote first.
    pub async fn save_access_token(
        &self,
        appid: &str,
        token: &StoredToken,
    ) -> Result<bool, StoreError> {
        self.count(1);
        let done = sqlx::query(&self.dialect.sql(
            "UPDATE access_tokens SET token = ?, expires_at = ?, refresh_at = ?, version = version + 1, \
             lease_until = 0 WHERE appid = ? AND version = ?",
        ))
        .bind(&token.token)
        .bind(token.expires_at)
        .bind(token.refresh_at)
        .bind(appid)
        .bind(token.version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Mark `token` dead (WeChat refused it), unless the row already holds a newer one.
    pub async fn expire_access_token(&self, appid: &str, token: &str) -> Result<(), StoreError> {
        self.count(1);
        sqlx::query(&self.dialect.sql(
            "UPDATE access_tokens SET refresh_at = 0, expires_at = 0, version = version + 1 \
             WHERE appid = ? AND token = ?",
        ))
        .bind(appid)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
