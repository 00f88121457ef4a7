//! What monitoring reads from the store: whether it answers, and the queues' sizes.

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// One round trip: whether the database answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.count_background(1);
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Notifications by state, and customer-service messages waiting for the help desk.
    pub async fn queue_sizes(&self) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        self.count_background(2);
        let rows = sqlx::query("SELECT state, COUNT(*) FROM notifications GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut notifications = Vec::with_capacity(rows.len());
        for row in rows {
            notifications.push((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
        }
        let pending: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE state = 0")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok((notifications, pending))
    }
}
