//! The store: one sqlx `Any` pool over SQLite, PostgreSQL or MySQL/MariaDB, migrated at start.
//!
//! Every query goes through [`Store`] so that dialect differences stay in [`dialect`] and so
//! that tests can count queries ([`Store::query_count`]): the hot path promises zero queries for
//! a cached session, and that promise is checked, not assumed.

mod access_tokens;
mod dialect;
mod messages;
mod notifications;
mod observed;
mod profiles;
mod session_changes;
mod users;

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::config::DatabaseConfig;
pub use access_tokens::StoredToken;
pub use dialect::{ClaimStrategy, Dialect};
pub use messages::{NewMessage, PendingMessage};
pub use notifications::{Claim, Finish, NewNotification, NotificationRow, NotificationState};
pub use profiles::{MobileUpdate, ProfileUpdate};
pub use session_changes::{SESSION_CHANNEL, SessionChange};
pub use users::{LoginRecord, UserRow};

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or timed out: the caller answers 503 and may retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else the database refused.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Store operations that failed, process-wide (every failure becomes a [`StoreError`] here).
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// Store operations that failed since the process started.
pub fn error_count() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        ERRORS.fetch_add(1, Ordering::Relaxed);
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            other => Self::Query(other),
        }
    }
}

impl From<StoreError> for crate::error::ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store failure");
        crate::error::ApiError::StoreUnavailable
    }
}

/// Handle to the database; cheap to share behind an `Arc`.
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    queries: AtomicU64,
    /// Statements of background work (the notification dispatcher), kept apart so that
    /// [`Store::query_count`] measures what requests cost.
    background_queries: AtomicU64,
    sql: users::Statements,
}

impl Store {
    /// Connect, create the SQLite file if needed, and apply pending migrations.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = config.url.expose();
        let dialect = Dialect::from_url(url);
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    for statement in dialect.connection_setup() {
                        conn.execute(*statement).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        dialect.migrator().run(&pool).await?;
        Ok(Self {
            pool,
            dialect,
            queries: AtomicU64::new(0),
            background_queries: AtomicU64::new(0),
            sql: users::Statements::new(dialect),
        })
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Statements executed since start for requests (migrations and background work excluded).
    pub fn query_count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Statements executed since start by background work (notification dispatcher, message
    /// forwarder).
    pub fn background_query_count(&self) -> u64 {
        self.background_queries.load(Ordering::Relaxed)
    }

    /// Close the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn count(&self, statements: u64) {
        self.queries.fetch_add(statements, Ordering::Relaxed);
    }

    /// Count statements of background work (dispatcher, forwarder), apart from requests'.
    fn count_background(&self, statements: u64) {
        self.background_queries
            .fetch_add(statements, Ordering::Relaxed);
    }

    /// The value of the setting `name`, set to `proposed` first if absent. Every node of a
    /// cluster reads the same value, whoever wrote it first.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        proposed: &str,
    ) -> Result<String, StoreError> {
        let insert = self
            .dialect
            .insert_ignore("settings", &["name", "value"], &["name"]);
        self.count(2);
        sqlx::query(&insert)
            .bind(name)
            .bind(proposed)
            .execute(&self.pool)
            .await?;
        let value: (String,) = sqlx::query_as(
            &self
                .dialect
                .sql("SELECT value FROM settings WHERE name = ?"),
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(value.0)
    }
}
