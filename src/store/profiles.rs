//! A user's profile and mobile, written by `/credentials` and `/mobile`. Not on the hot path:
//! the SQL is rendered per call.

use super::users::{USER_COLUMNS, UserRow};
use super::{Store, StoreError};
use crate::types::unix_now;

/// The profile `/credentials` stores, from WeChat's decrypted data. `None` keeps what the
/// store holds: WeChat omits `unionId` for apps without an open-platform account, and a profile
/// without it must not erase one learnt at login.
pub struct ProfileUpdate<'a> {
    pub nickname: Option<&'a str>,
    pub avatar_url: Option<&'a str>,
    pub unionid: Option<&'a str>,
}

/// The phone number `/mobile` stores.
pub struct MobileUpdate<'a> {
    pub phone_number: &'a str,
    pub pure_phone_number: &'a str,
    pub country_code: &'a str,
}

impl Store {
    /// Store `profile` for user `user_id`; returns the user as stored now.
    pub async fn update_profile(
        &self,
        user_id: i64,
        profile: &ProfileUpdate<'_>,
    ) -> Result<UserRow, StoreError> {
        self.count(1);
        sqlx::query(&self.dialect.sql(
            "UPDATE users SET nickname = COALESCE(?, nickname), \
             avatar_url = COALESCE(?, avatar_url), unionid = COALESCE(?, unionid), \
             updated_at = ? WHERE id = ?",
        ))
        .bind(profile.nickname)
        .bind(profile.avatar_url)
        .bind(profile.unionid)
        .bind(unix_now())
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.user_by_id(user_id).await
    }

    /// Store `mobile` for user `user_id`; returns the user as stored now.
    pub async fn update_mobile(
        &self,
        user_id: i64,
        mobile: &MobileUpdate<'_>,
    ) -> Result<UserRow, StoreError> {
        self.count(1);
        sqlx::query(&self.dialect.sql(
            "UPDATE users SET phone_number = ?, pure_phone_number = ?, country_code = ?, \
             updated_at = ? WHERE id = ?",
        ))
        .bind(mobile.phone_number)
        .bind(mobile.pure_phone_number)
        .bind(mobile.country_code)
        .bind(unix_now())
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.user_by_id(user_id).await
    }

    /// The user `user_id` (users are never deleted, so a missing row is a store fault).
    async fn user_by_id(&self, user_id: i64) -> Result<UserRow, StoreError> {
        self.count(1);
        let row = sqlx::query(
            &self
                .dialect
                .sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")),
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(UserRow::from_row(&row)?)
    }
}
