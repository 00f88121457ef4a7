//! `POST /notify`, `GET /notify/{id}`, `DELETE /notify/{id}` — a subscribe message to the
//! calling user, sent at `active_at` by the dispatcher ([`crate::notify`]).
//!
//! The message always goes to the caller's own openid. A notification is visible only to the
//! user who made it: anyone else gets 404, as for an id that does not exist, so ids cannot be
//! probed.

use chrono_tz::Tz;
use pingora_proxy::Session as HttpSession;
use serde_json::{Value, json};

use super::{logged_in_post, require_session};
use crate::error::{ApiError, ok_data};
use crate::gateway::routing::App;
use crate::notify::message::{Message, NotifyRequest, format_time};
use crate::state::State;
use crate::store::{NewNotification, NotificationRow, NotificationState};
use crate::types::unix_now;

/// `POST /notify`: validate, queue, answer `{"id": N}`.
pub async fn create(
    state: &State,
    session: &mut HttpSession,
    app: &App,
) -> Result<Value, ApiError> {
    let (user, request): (_, NotifyRequest) = logged_in_post(state, session, app).await?;
    let message =
        Message::parse(request, app.config.timezone, unix_now()).map_err(ApiError::InvalidParam)?;
    let data = message.data.to_string();
    let id = state
        .store
        .insert_notification(&NewNotification {
            appid: &app.config.appid,
            user_id: user.user_id,
            openid: user.openid(),
            template_id: &message.template_id,
            page: message.page.as_deref(),
            data: &data,
            miniprogram_state: message.miniprogram_state.as_deref(),
            lang: message.lang.as_deref(),
            description: message.description.as_deref(),
            active_at: message.active_at,
        })
        .await?;
    tracing::info!(
        notification = id,
        appid = %app.config.appid,
        user_id = user.user_id,
        active_at = message.active_at,
        "notification queued"
    );
    Ok(ok_data(json!({ "id": id })))
}

/// `GET /notify/{id}` shows the notification; `DELETE /notify/{id}` cancels it while pending.
pub async fn item(
    state: &State,
    session: &mut HttpSession,
    app: &App,
    id: i64,
) -> Result<Value, ApiError> {
    let method = session.req_header().method.clone();
    if method != http::Method::GET && method != http::Method::DELETE {
        return Err(ApiError::MethodNotAllowed);
    }
    let user = require_session(state, session, app).await?;
    let appid = &app.config.appid;
    if method == http::Method::GET {
        let row = state
            .store
            .user_notification(appid, user.user_id, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        return Ok(ok_data(view(&row, app.config.timezone)));
    }
    let row = state
        .store
        .cancel_notification(appid, user.user_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if row.state != NotificationState::Cancelled {
        return Err(ApiError::InvalidParam(format!(
            "notification {id} is {}; only a pending one can be cancelled",
            row.state.as_str()
        )));
    }
    tracing::info!(notification = id, appid = %appid, user_id = user.user_id, "notification cancelled");
    Ok(ok_data(view(&row, app.config.timezone)))
}

/// What a client sees of a notification; times in the app's time zone, like `active_at`.
fn view(row: &NotificationRow, timezone: Tz) -> Value {
    let time = |unix: i64| format_time(unix, timezone);
    json!({
        "id": row.id,
        "state": row.state.as_str(),
        "template_id": row.template_id,
        "page": row.page,
        "data": serde_json::from_str::<Value>(&row.data).unwrap_or(Value::Null),
        "miniprogram_state": row.miniprogram_state,
        "lang": row.lang,
        "description": row.description,
        "active_at": time(row.active_at),
        "attempts": row.attempts,
        "last_errcode": row.last_errcode,
        "last_error": row.last_error,
        "next_attempt_at": (row.state == NotificationState::Pending).then(|| time(row.next_attempt_at)),
        "sent_at": row.sent_at.map(time),
        "created_at": time(row.created_at),
    })
}
