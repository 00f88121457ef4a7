//! The one error type of the request layer and its single path to HTTP.
//!
//! Every native endpoint and every refusal of the gateway returns an [`ApiError`]; [`ApiError::status`]
//! and [`ApiError::envelope`] are the only places that decide what the client sees. The envelope is
//! the original Go service's (`{"status":N,"message":"…"}`), so existing mini programs keep
//! working; internal causes are logged by the caller and never sent to the client.

use bytes::Bytes;
use serde_json::{Value, json};

/// Envelope status codes of the original service.
pub mod code {
    pub const OK: i64 = 0;
    pub const INVALID_PARAM: i64 = 3;
    pub const APP_NOT_ALLOWED: i64 = 10000;
    pub const NOT_LOGGED_IN: i64 = 10001;
    pub const INTERNAL: i64 = 10002;
    pub const TOO_MANY_REQUESTS: i64 = 10003;
}

/// WeChat errcodes caused by what the client sent (a used code, a page that does not exist…):
/// answered as 400 so the client knows retrying the same request is pointless.
const CLIENT_WECHAT_ERRCODES: &[i64] = &[
    40029, 40163, 40226, 40003, 40037, 41030, 43101, 45015, 47003, 87009,
];

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    #[error("app not allowed")]
    AppNotAllowed,
    #[error("not logged in")]
    NotLoggedIn,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("wechat errcode {errcode}: {errmsg}")]
    WeChat { errcode: i64, errmsg: String },
    #[error("wechat unreachable: {0}")]
    WeChatUnavailable(String),
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("store unavailable")]
    StoreUnavailable,
    /// Over a rate limit; the client may retry after this many seconds.
    #[error("too many requests")]
    TooManyRequests { retry_after_seconds: u64 },
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidParam(_) => 400,
            Self::AppNotAllowed | Self::Forbidden(_) => 403,
            Self::NotLoggedIn => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge(_) => 413,
            Self::WeChat { errcode, .. } if CLIENT_WECHAT_ERRCODES.contains(errcode) => 400,
            Self::WeChat { .. } | Self::WeChatUnavailable(_) | Self::UpstreamUnavailable(_) => 502,
            Self::StoreUnavailable => 503,
            Self::TooManyRequests { .. } => 429,
            Self::Internal => 500,
        }
    }

    /// The envelope status code of the original service.
    pub fn code(&self) -> i64 {
        match self {
            Self::AppNotAllowed => code::APP_NOT_ALLOWED,
            Self::TooManyRequests { .. } => code::TOO_MANY_REQUESTS,
            Self::NotLoggedIn => code::NOT_LOGGED_IN,
            Self::InvalidParam(_)
            | Self::Forbidden(_)
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge(_) => code::INVALID_PARAM,
            Self::WeChat { errcode, .. } if CLIENT_WECHAT_ERRCODES.contains(errcode) => {
                code::INVALID_PARAM
            }
            Self::WeChat { .. }
            | Self::WeChatUnavailable(_)
            | Self::UpstreamUnavailable(_)
            | Self::StoreUnavailable
            | Self::Internal => code::INTERNAL,
        }
    }

    /// The JSON body the client receives. Messages for internal failures stay generic.
    pub fn envelope(&self) -> Value {
        let message = match self {
            Self::WeChatUnavailable(_) => "wechat unreachable".to_string(),
            Self::UpstreamUnavailable(_) => "upstream unavailable".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({ "status": self.code(), "message": message });
        if let Self::WeChat { errcode, errmsg } = self {
            body["errcode"] = json!(errcode);
            body["errmsg"] = json!(errmsg);
        }
        body
    }

    /// The serialized envelope.
    pub fn body(&self) -> Bytes {
        Bytes::from(self.envelope().to_string())
    }
}

/// The success envelope around `data`.
pub fn ok_data(data: Value) -> Value {
    json!({ "status": code::OK, "data": data })
}

/// The success envelope carrying only a message.
pub fn ok_message(message: &str) -> Value {
    json!({ "status": code::OK, "message": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_the_original_envelope_code_and_a_real_http_status() {
        let cases: Vec<(ApiError, u16, i64)> = vec![
            (ApiError::InvalidParam("code".into()), 400, 3),
            (ApiError::AppNotAllowed, 403, 10000),
            (ApiError::NotLoggedIn, 401, 10001),
            (ApiError::NotFound, 404, 3),
            (ApiError::PayloadTooLarge(10), 413, 3),
            (
                ApiError::WeChat {
                    errcode: 40163,
                    errmsg: "code been used".into(),
                },
                400,
                3,
            ),
            (
                ApiError::WeChat {
                    errcode: -1,
                    errmsg: "system busy".into(),
                },
                502,
                10002,
            ),
            (ApiError::WeChatUnavailable("timeout".into()), 502, 10002),
            (ApiError::StoreUnavailable, 503, 10002),
            (ApiError::Internal, 500, 10002),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status(), error.code()), (status, code), "{error:?}");
        }
    }

    #[test]
    fn wechat_errors_carry_errcode_and_errmsg_and_internal_causes_stay_private() {
        let body = ApiError::WeChat {
            errcode: 40163,
            errmsg: "code been used".into(),
        }
        .envelope();
        assert_eq!(body["errcode"], 40163);
        assert!(body["message"].as_str().unwrap().contains("40163"));
        let body = ApiError::WeChatUnavailable("connect 10.1.2.3 refused".into()).envelope();
        assert_eq!(body["message"], "wechat unreachable");
    }
}
