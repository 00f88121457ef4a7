//! The background forwarder: delivers recorded messages to each app's help desk, with retries.
//!
//! Every node runs one. Each iteration reads the due rows, claims each one (an atomic update
//! that only one node wins) and delivers it in a task of its own, at most [`CONCURRENCY`] at a
//! time, so a slow help desk delays nothing else. Outcomes: delivered (2xx), or failed and due
//! again after a back-off of 1, 2, 4… seconds (capped at [`MAX_BACKOFF_SECONDS`]); a message
//! still undelivered after [`MAX_AGE_SECONDS`] is abandoned, since the help desk could no longer
//! answer it anyway (WeChat's reply window is 48 hours).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::config::AppConfig;
use crate::state::State;
use crate::store::PendingMessage;
use crate::types::{Outage, unix_now};

/// How often due messages are looked for when nothing wakes the forwarder.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows read per iteration.
const BATCH: u32 = 32;
/// Deliveries in flight at once on one node.
const CONCURRENCY: usize = 8;
/// How long a claim keeps other nodes off a row; longer than a forward can take.
const LEASE_SECONDS: i64 = 30;
/// Longest wait between two attempts.
const MAX_BACKOFF_SECONDS: i64 = 600;
/// Messages older than this are abandoned: WeChat's 48-hour reply window has closed.
const MAX_AGE_SECONDS: i64 = 48 * 3600;
/// Finished rows are kept this long (far beyond WeChat's retries, which come within seconds).
const KEEP_SECONDS: i64 = 24 * 3600;
/// How the forwarder's polls are named in the logs.
const TASK: &str = "message forwarder";
/// Housekeeping runs once per this many iterations (about every 10 minutes).
const HOUSEKEEPING_EVERY: u64 = 600;

/// Deliver messages until `shutdown` turns true. Deliveries in flight at shutdown are simply
/// dropped: their claims expire and another iteration (here or on another node) retries them.
pub async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let in_flight = Arc::new(Semaphore::new(CONCURRENCY));
    let outage = Outage::default();
    let mut iteration: u64 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Idle while no app forwards (a reload may add one, and wakes this loop).
        if state.routing().forwards_messages() {
            if iteration.is_multiple_of(HOUSEKEEPING_EVERY) {
                housekeeping(&state).await;
            }
            iteration += 1;
            poll_once(&state, &in_flight, &outage).await;
        }
        tokio::select! {
            _ = state.messages.wake.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

/// Claim the due messages and start their deliveries.
async fn poll_once(state: &Arc<State>, in_flight: &Arc<Semaphore>, outage: &Outage) {
    let now = unix_now();
    let due = match state.store.due_messages(now, BATCH).await {
        Ok(due) => {
            outage.ok(TASK);
            due
        }
        Err(error) => {
            outage.failed(TASK, &error);
            return;
        }
    };
    for message in due {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let now = unix_now();
        match state
            .store
            .claim_message(message.id, now, now + LEASE_SECONDS)
            .await
        {
            Ok(true) => {
                let state = state.clone();
                tokio::spawn(async move {
                    deliver(&state, message).await;
                    drop(permit);
                });
            }
            Ok(false) => {} // another node took it
            Err(error) => {
                tracing::warn!(%error, id = message.id, "message forwarder: could not claim");
            }
        }
    }
}

/// One delivery attempt of a claimed message, and its outcome in the store.
async fn deliver(state: &State, message: PendingMessage) {
    let attempt = message.attempts + 1;
    let app = state.app_config(&message.appid);
    let Some((app, url)) = app.as_ref().and_then(|app| {
        let url = app.messages.as_ref()?.forward_url.clone()?;
        Some((app, url))
    }) else {
        let result = state
            .store
            .abandon_message(
                message.id,
                "the app no longer forwards messages",
                unix_now(),
            )
            .await;
        tracing::warn!(id = message.id, appid = %message.appid, ok = result.is_ok(),
            "message abandoned: the app no longer forwards messages");
        return;
    };
    let outcome = forward(state, app, url, &message).await;
    let now = unix_now();
    let recorded = match &outcome {
        Ok(()) => {
            tracing::info!(id = message.id, appid = %message.appid, attempt, "message forwarded");
            state.store.message_delivered(message.id, now).await
        }
        Err(error) => {
            let retry_at = now + backoff_seconds(attempt);
            tracing::warn!(id = message.id, appid = %message.appid, attempt, %error,
                retry_in = retry_at - now, "message forward failed");
            state
                .store
                .message_failed(message.id, retry_at, error, now)
                .await
        }
    };
    if let Err(error) = recorded {
        // The claim expires by itself; the message is then tried again.
        tracing::warn!(id = message.id, %error, "message forwarder: could not record the outcome");
    }
}

/// POST the help desk's body to `forward_url?partner=<appid>`.
async fn forward(
    state: &State,
    app: &AppConfig,
    mut url: url::Url,
    message: &PendingMessage,
) -> Result<(), String> {
    let profile = state
        .store
        .user_by_openid(&message.appid, &message.openid)
        .await
        .map_err(|error| format!("store: {error}"))?;
    let (user_name, user_avatar) = profile
        .map(|user| {
            (
                user.nickname.unwrap_or_default(),
                user.avatar_url.unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let body = json!({
        "user_id": message.openid,
        "user_name": user_name,
        "user_avatar": user_avatar,
        "message_type": message.msg_type,
        "message_event": message.event,
        "message_content": message.content,
    });
    url.query_pairs_mut().append_pair("partner", &app.appid);
    let mut request = state.messages.http.post(url).json(&body);
    if let Some(token) = app.messages.as_ref().and_then(|m| m.forward_token.as_ref()) {
        request = request.header(http::header::AUTHORIZATION, token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|error| error.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("help desk answered HTTP {}", status.as_u16()))
    }
}

/// Wait before attempt `attempt + 1`: 1, 2, 4… seconds, capped.
fn backoff_seconds(attempt: i64) -> i64 {
    crate::types::backoff_seconds(Duration::from_secs(1), attempt, MAX_BACKOFF_SECONDS)
}

async fn housekeeping(state: &State) {
    let now = unix_now();
    match state
        .store
        .expire_messages(now - MAX_AGE_SECONDS, now - KEEP_SECONDS, now)
        .await
    {
        Ok((0, 0)) => {}
        Ok((abandoned, deleted)) => {
            tracing::info!(abandoned, deleted, "message forwarder housekeeping");
        }
        Err(error) => tracing::warn!(%error, "message forwarder housekeeping failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_one_second_up_to_its_cap() {
        let waits: Vec<i64> = (1..=12).map(backoff_seconds).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff_seconds(1_000), 600);
    }
}
