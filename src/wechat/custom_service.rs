//! Customer-service replies: `cgi-bin/message/custom/send`, the typing indicator and the image
//! upload they need. Each takes an access token; callers go through
//! [`super::access_token::AccessTokens::call`] so an expired token is replaced once.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{WeChatClient, decode, unavailable};
use crate::error::ApiError;

#[derive(Deserialize)]
struct Uploaded {
    media_id: String,
}

impl WeChatClient {
    /// Send `message` (`{"touser","msgtype",…}`). 45015: the user's 48-hour window has closed.
    pub async fn send_custom_message(&self, token: &str, message: &Value) -> Result<(), ApiError> {
        let url = self.url("cgi-bin/message/custom/send", &[("access_token", token)])?;
        self.post_json::<Value>(url, message).await.map(drop)
    }

    /// Show (`Typing`) or hide (`CancelTyping`) the typing indicator to `touser`.
    pub async fn custom_typing(
        &self,
        token: &str,
        touser: &str,
        command: &str,
    ) -> Result<(), ApiError> {
        let url = self.url(
            "cgi-bin/message/custom/business/typing",
            &[("access_token", token)],
        )?;
        let body = json!({ "touser": touser, "command": command });
        self.post_json::<Value>(url, &body).await.map(drop)
    }

    /// Upload an image as temporary media (multipart field `media`); returns its `media_id`.
    pub async fn upload_image(
        &self,
        token: &str,
        image: Bytes,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, ApiError> {
        let url = self.url(
            "cgi-bin/media/upload",
            &[("access_token", token), ("type", "image")],
        )?;
        let part = reqwest::multipart::Part::stream(image)
            .file_name(file_name.to_string())
            .mime_str(content_type)
            .map_err(|_| ApiError::InvalidParam("invalid image content type".into()))?;
        let form = reqwest::multipart::Form::new().part("media", part);
        let response = self
            .http
            .post(url)
            .multipart(form)
            .send()
            .await
            .map_err(unavailable)?;
        let uploaded: Uploaded = decode(response).await?;
        Ok(uploaded.media_id)
    }
}
