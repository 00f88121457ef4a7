//! `wxa/business/getuserphonenumber`: the phone number behind a `wx.getPhoneNumber` code.

use serde::Deserialize;
use serde_json::{Value, json};

use super::WeChatClient;
use crate::error::ApiError;

#[derive(Deserialize)]
struct PhoneAnswer {
    phone_info: Value,
}

impl WeChatClient {
    /// Exchange a phone `code` for WeChat's `phone_info` (`phoneNumber`, `purePhoneNumber`,
    /// `countryCode`, `watermark`). Passing `openid` makes WeChat refuse a code that was issued
    /// to another user. Codes are single-use: a retry with the same code answers 40163.
    pub async fn user_phone_number(
        &self,
        access_token: &str,
        code: &str,
        openid: &str,
    ) -> Result<Value, ApiError> {
        let url = self.url(
            "wxa/business/getuserphonenumber",
            &[("access_token", access_token)],
        )?;
        let answer: PhoneAnswer = self
            .post_json(url, &json!({ "code": code, "openid": openid }))
            .await?;
        Ok(answer.phone_info)
    }
}
