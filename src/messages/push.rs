//! Proving a push comes from WeChat, and opening it.
//!
//! - URL check (`GET ?signature&timestamp&nonce&echostr`): `signature` over the app's token.
//! - Plaintext mode: `signature` over token, timestamp and nonce. It does not cover the body, so
//!   an app with an `aes_key` accepts encrypted pushes only: otherwise one captured query
//!   string would carry any forged body.
//! - Compatible and safe modes (`encrypt_type=aes`): `msg_signature` covers the `Encrypt` field
//!   and is checked *before* decrypting; the plaintext's trailing appid must be the app's own.
//!   In compatible mode the plaintext copy of the fields is ignored: only what was encrypted
//!   is trusted.

use serde_json::{Map, Value};

use super::message::{self, MessageError};
use crate::config::MessagesConfig;
use crate::wechat::crypto::{self, CryptoError, PushCipher};

/// The query string WeChat adds to the push URL.
#[derive(Debug, Default, Clone)]
pub struct PushQuery {
    pub signature: String,
    pub timestamp: String,
    pub nonce: String,
    pub echostr: Option<String>,
    pub encrypt_type: String,
    pub msg_signature: String,
}

impl PushQuery {
    /// Read the parameters WeChat sends (others, like `appid` and `openid`, are ignored).
    pub fn parse(query: Option<&str>) -> Self {
        let mut out = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = value.into_owned();
            match key.as_ref() {
                "signature" => out.signature = value,
                "timestamp" => out.timestamp = value,
                "nonce" => out.nonce = value,
                "echostr" => out.echostr = Some(value),
                "encrypt_type" => out.encrypt_type = value,
                "msg_signature" => out.msg_signature = value,
                _ => {}
            }
        }
        out
    }
}

/// Why a push was refused. Everything but [`PushError::Message`] means "not proven to come
/// from WeChat" and is answered 403.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("signature does not verify")]
    Signature,
    #[error("msg_signature does not verify")]
    MsgSignature,
    #[error("plaintext push refused: the app has an aes_key, so pushes must be encrypted")]
    PlaintextRefused,
    #[error("encrypted push, but the app has no aes_key")]
    NoAesKey,
    #[error("unsupported encrypt_type")]
    EncryptType,
    #[error("encrypted body has no Encrypt field")]
    NoEncrypt,
    #[error("decryption failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Message(#[from] MessageError),
}

/// `echostr` when the URL check's `signature` verifies.
pub fn url_check(config: &MessagesConfig, query: &PushQuery) -> Result<Option<String>, PushError> {
    verify_signature(config, query)?;
    Ok(query.echostr.clone())
}

/// The verified (and, in safe and compatible modes, decrypted) fields of a push.
pub fn open(
    config: &MessagesConfig,
    appid: &str,
    query: &PushQuery,
    body: &[u8],
) -> Result<Map<String, Value>, PushError> {
    match query.encrypt_type.as_str() {
        "" | "raw" => {
            if config.aes_key.is_some() {
                return Err(PushError::PlaintextRefused);
            }
            verify_signature(config, query)?;
            Ok(message::fields(as_text(body)?)?)
        }
        "aes" => {
            let key = config.aes_key.as_ref().ok_or(PushError::NoAesKey)?;
            let envelope = message::fields(as_text(body)?)?;
            let encrypt = message::text(&envelope, "Encrypt").ok_or(PushError::NoEncrypt)?;
            let verified = crypto::verify_msg_signature(
                config.token.expose(),
                &query.timestamp,
                &query.nonce,
                &encrypt,
                &query.msg_signature,
            );
            if !verified {
                return Err(PushError::MsgSignature);
            }
            let plaintext = PushCipher::new(key.expose())?.decrypt(&encrypt, appid)?;
            Ok(message::fields(&plaintext)?)
        }
        _ => Err(PushError::EncryptType),
    }
}

fn verify_signature(config: &MessagesConfig, query: &PushQuery) -> Result<(), PushError> {
    if crypto::verify_push_signature(
        config.token.expose(),
        &query.timestamp,
        &query.nonce,
        &query.signature,
    ) {
        Ok(())
    } else {
        Err(PushError::Signature)
    }
}

fn as_text(body: &[u8]) -> Result<&str, PushError> {
    std::str::from_utf8(body).map_err(|_| PushError::Message(MessageError::UnknownFormat))
}
