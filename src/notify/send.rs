//! One attempt at sending a claimed notification through `cgi-bin/message/subscribe/send`, and
//! what its outcome means for the queue.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::AppConfig;
use crate::error::ApiError;
use crate::state::State;
use crate::store::NotificationRow;
use crate::wechat::access_token::TOKEN_ERRCODES;

/// errcodes worth another attempt later: system busy, per-minute rate limit.
const TRANSIENT_ERRCODES: [i64; 2] = [-1, 45011];

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Try again later: WeChat busy or rate-limited, unreachable, an HTTP error, or an access
    /// token still refused after the token manager's one retry.
    Transient {
        errcode: Option<i64>,
        error: String,
    },
    /// Never worth retrying (40003 openid, 40037 template, 43101 not subscribed, 47003 data, …).
    Permanent {
        errcode: Option<i64>,
        error: String,
    },
}

/// Send `row` to WeChat, giving up after `deadline` (so that the attempt ends before its claim
/// does).
pub async fn attempt(
    state: &State,
    app: &AppConfig,
    row: &NotificationRow,
    deadline: Duration,
) -> Outcome {
    let body = match body(row) {
        Ok(body) => body,
        Err(error) => {
            return Outcome::Permanent {
                errcode: None,
                error,
            };
        }
    };
    let wechat = &state.wechat;
    let body = &body;
    let call = state.access_tokens.call(app, |token| async move {
        let url = wechat.url(
            "cgi-bin/message/subscribe/send",
            &[("access_token", &token)],
        )?;
        wechat.post_json::<Value>(url, body).await
    });
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => classify(result),
        Err(_) => Outcome::Transient {
            errcode: None,
            error: format!("no answer from WeChat within {} ms", deadline.as_millis()),
        },
    }
}

/// The subscribe-message request for `row`.
fn body(row: &NotificationRow) -> Result<Value, String> {
    let data: Value =
        serde_json::from_str(&row.data).map_err(|_| "stored data is not JSON".to_string())?;
    let mut body = json!({
        "touser": row.openid,
        "template_id": row.template_id,
        "data": data,
    });
    if let Some(page) = &row.page {
        body["page"] = json!(page);
    }
    if let Some(state) = &row.miniprogram_state {
        body["miniprogram_state"] = json!(state);
    }
    if let Some(lang) = &row.lang {
        body["lang"] = json!(lang);
    }
    Ok(body)
}

/// What WeChat's answer means for the queue.
pub fn classify(result: Result<Value, ApiError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Sent,
        Err(ApiError::WeChat { errcode, errmsg })
            if TRANSIENT_ERRCODES.contains(&errcode) || TOKEN_ERRCODES.contains(&errcode) =>
        {
            Outcome::Transient {
                errcode: Some(errcode),
                error: errmsg,
            }
        }
        Err(ApiError::WeChat { errcode, errmsg }) => Outcome::Permanent {
            errcode: Some(errcode),
            error: errmsg,
        },
        // Unreachable, timed out, HTTP 5xx, or our token store briefly down: all pass.
        Err(other) => Outcome::Transient {
            errcode: None,
            error: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wechat(errcode: i64) -> Result<Value, ApiError> {
        Err(ApiError::WeChat {
            errcode,
            errmsg: "x".into(),
        })
    }

    #[test]
    fn busy_rate_limited_unreachable_and_token_errors_are_retried() {
        for errcode in [-1, 45011, 40001, 42001] {
            assert!(
                matches!(classify(wechat(errcode)), Outcome::Transient { errcode: Some(e), .. } if e == errcode),
                "{errcode}"
            );
        }
        let unreachable = classify(Err(ApiError::WeChatUnavailable("HTTP 502".into())));
        assert!(matches!(
            unreachable,
            Outcome::Transient { errcode: None, .. }
        ));
    }

    #[test]
    fn any_other_errcode_fails_at_once_and_is_kept() {
        for errcode in [40003, 40037, 43101, 47003, 45009, 12345] {
            assert_eq!(
                classify(wechat(errcode)),
                Outcome::Permanent {
                    errcode: Some(errcode),
                    error: "x".into()
                }
            );
        }
        assert_eq!(classify(Ok(json!({"errcode": 0}))), Outcome::Sent);
    }
}
