//! Notifications: subscribe messages queued by `POST /notify` and sent at their `active_at` by
//! a dispatcher running on every node.
//!
//! The dispatcher polls every `notify.poll_interval`:
//! 1. claims whose lease expired (their node died or hung) return to `pending`, or become
//!    `failed` when that was the last attempt (at most once a second: leases are whole seconds);
//! 2. it takes free send slots (`notify.concurrency`, a semaphore; it waits for one when all are
//!    busy) and claims at most that many due notifications, at most `batch_size` — a claim never
//!    waits in a local queue while its lease runs;
//! 3. each claimed notification is sent in a task of its own ([`send::attempt`]) and the outcome
//!    written under its claim: `sent`; `failed` at once for a permanent WeChat error; back to
//!    `pending` after `retry_backoff × 2^(attempts−1)` for a transient one, until `max_attempts`.
//!
//! On shutdown nothing new is claimed and the sends in flight finish (each is cut at 80 % of the
//! lease, so a stop waits at most that long).
//!
//! Guarantee: one send per claim, and one claim at a time per notification, on any number of
//! nodes (see [`crate::store`]'s claim rules). A notification is resent only when an attempt's
//! outcome could not be recorded — its node died, lost the database or overran its lease —
//! after WeChat may already have accepted it: delivery is at least once, and exactly once
//! whenever every node records what it sent.

pub mod message;
pub mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::observe::SendOutcome;
use crate::shutdown::wait_for;
use crate::state::State;
use crate::store::{Claim, ClaimStrategy, Finish, NotificationRow};
use crate::types::{Outage, unix_now};
use send::Outcome;

/// How the dispatcher's polls are named in the logs.
const TASK: &str = "notification dispatcher";

/// Most sends in flight on one node, whatever the configuration says.
const MAX_CONCURRENCY: usize = 65_536;

/// Run the dispatcher until `shutdown` turns true, then let the sends in flight finish.
pub async fn run(state: Arc<State>, shutdown: watch::Receiver<bool>) {
    let dispatcher = Arc::new(Dispatcher::new(state).await);
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Not cancelled by the shutdown once it holds send slots: a claim it made is always
        // handed to a send.
        let more_due = dispatcher.poll(&shutdown).await;
        if !more_due {
            tokio::select! {
                _ = tokio::time::sleep(dispatcher.config().poll_interval) => {}
                _ = wait_for(shutdown.clone()) => break,
            }
        }
    }
    dispatcher.drain().await;
}

/// One node's dispatcher.
struct Dispatcher {
    state: Arc<State>,
    /// One permit per send in flight.
    slots: Arc<Semaphore>,
    slot_count: u32,
    strategy: ClaimStrategy,
    /// Apps this node can send for; other apps' notifications are left to nodes that have them.
    /// Random per process, so that claim ids never repeat across nodes or restarts.
    node: String,
    claims: AtomicU64,
    /// The second expired claims were last released: leases are whole seconds, so once a
    /// second is enough however often the dispatcher polls.
    released_at: AtomicI64,
    /// Store outages seen by the polls, logged once each.
    outage: Outage,
    /// How long one attempt may take: 80 % of the lease, so it ends before its claim does.
    send_deadline: Duration,
}

impl Dispatcher {
    async fn new(state: Arc<State>) -> Self {
        let config = &state.config.notify;
        let strategy = match state.store.claim_strategy().await {
            Ok(strategy) => strategy,
            Err(error) => {
                // Conditional updates are correct on every database, only less efficient.
                tracing::warn!(%error, "could not read the database version; claiming row by row");
                ClaimStrategy::ConditionalUpdate
            }
        };
        let slot_count = config.concurrency.clamp(1, MAX_CONCURRENCY);
        let send_deadline = config.lease.mul_f64(0.8);
        if send_deadline < state.config.wechat.timeout * 2 {
            tracing::warn!(
                lease_seconds = config.lease.as_secs(),
                wechat_timeout_ms = state.config.wechat.timeout.as_millis() as u64,
                "notify.lease is short for wechat.timeout_ms: a slow send may be cut and retried"
            );
        }
        tracing::info!(
            ?strategy,
            concurrency = slot_count,
            "notification dispatcher started"
        );
        Self {
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count: slot_count as u32,
            strategy,
            node: format!("{:012x}", rand::random::<u64>() >> 16),
            claims: AtomicU64::new(0),
            released_at: AtomicI64::new(0),
            outage: Outage::default(),
            send_deadline,
            state,
        }
    }

    fn config(&self) -> &crate::config::NotifyConfig {
        &self.state.config.notify
    }

    /// One round: release expired claims, claim what fits in the free slots, start the sends.
    /// True when it claimed as much as it could, so more may be due right away.
    async fn poll(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> bool {
        let config = self.config();
        let store = &self.state.store;
        let now = unix_now();
        if self.released_at.swap(now, Ordering::Relaxed) != now {
            match store
                .release_expired_claims(now, i64::from(config.max_attempts))
                .await
            {
                Ok(0) => {}
                Ok(released) => {
                    tracing::warn!(released, "notification claims expired (node died or hung)");
                }
                Err(error) => {
                    self.outage.failed(TASK, &error);
                    return false;
                }
            }
        }
        let permits = tokio::select! {
            permits = self.free_slots() => permits,
            _ = wait_for(shutdown.clone()) => return false,
        };
        if *shutdown.borrow() {
            return false; // Stopping: nothing new is claimed.
        }
        let now = unix_now();
        let claim_id = format!(
            "{}-{}",
            self.node,
            self.claims.fetch_add(1, Ordering::Relaxed)
        );
        // The apps of the routing in force: a reload may add or remove some.
        let appids: Vec<String> = self
            .state
            .routing()
            .apps
            .iter()
            .map(|app| app.config.appid.clone())
            .collect();
        let rows = match store
            .claim_notifications(&Claim {
                strategy: self.strategy,
                appids: &appids,
                claim_id: &claim_id,
                now,
                lease_until: now + config.lease.as_secs() as i64,
                limit: permits.len() as u32,
            })
            .await
        {
            Ok(rows) => {
                self.outage.ok(TASK);
                rows
            }
            Err(error) => {
                self.outage.failed(TASK, &error);
                return false;
            }
        };
        let more_due = !rows.is_empty() && rows.len() == permits.len();
        let claim_id: Arc<str> = claim_id.into();
        for (row, permit) in rows.into_iter().zip(permits) {
            let this = self.clone();
            let claim_id = claim_id.clone();
            tokio::spawn(async move {
                this.deliver(row, &claim_id).await;
                drop(permit);
            });
        }
        more_due
    }

    /// At least one free send slot (waiting for it), and as many more as are free, up to
    /// `batch_size`.
    async fn free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        let batch = self.config().batch_size as usize;
        let mut permits = Vec::with_capacity(batch.min(self.slot_count as usize));
        // The semaphore is never closed, so acquiring only waits.
        if let Ok(permit) = self.slots.clone().acquire_owned().await {
            permits.push(permit);
        }
        while permits.len() < batch {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        permits
    }

    /// Send one claimed notification and record the outcome under its claim.
    async fn deliver(&self, row: NotificationRow, claim_id: &str) {
        let Some(app) = self.state.app_config(&row.appid) else {
            return; // Removed by a reload since it was claimed: its claim lapses.
        };
        let outcome = send::attempt(&self.state, &app, &row, self.send_deadline).await;
        let finish = self.finish_for(&row, &outcome);
        self.state.metrics.notification_sent(match &finish {
            Finish::Sent => SendOutcome::Sent,
            Finish::Retry { .. } => SendOutcome::Retry,
            Finish::Failed { .. } => SendOutcome::Failed,
        });
        match &finish {
            Finish::Sent => tracing::info!(
                notification = row.id, claim = claim_id, appid = %row.appid, user_id = row.user_id,
                attempts = row.attempts, "notification sent"
            ),
            Finish::Retry {
                next_attempt_at,
                errcode,
                error,
            } => tracing::warn!(
                notification = row.id, claim = claim_id, appid = %row.appid, attempts = row.attempts, ?errcode,
                error, retry_in_seconds = next_attempt_at - unix_now(), "notification attempt failed; will retry"
            ),
            Finish::Failed { errcode, error } => tracing::warn!(
                notification = row.id, claim = claim_id, appid = %row.appid, attempts = row.attempts, ?errcode,
                error, "notification failed"
            ),
        }
        self.record(&row, claim_id, &finish).await;
    }

    /// The queue's answer to `outcome` of attempt number `row.attempts`.
    fn finish_for<'a>(&self, row: &NotificationRow, outcome: &'a Outcome) -> Finish<'a> {
        let config = self.config();
        match outcome {
            Outcome::Sent => Finish::Sent,
            Outcome::Permanent { errcode, error } => Finish::Failed {
                errcode: *errcode,
                error,
            },
            Outcome::Transient { errcode, error }
                if row.attempts >= i64::from(config.max_attempts) =>
            {
                Finish::Failed {
                    errcode: *errcode,
                    error,
                }
            }
            Outcome::Transient { errcode, error } => Finish::Retry {
                next_attempt_at: unix_now() + backoff_seconds(config.retry_backoff, row.attempts),
                errcode: *errcode,
                error,
            },
        }
    }

    /// Write the outcome, retrying a few times: an outcome that is not written leaves the row
    /// `sending` until its lease expires, and a sent notification would then be sent again.
    async fn record(&self, row: &NotificationRow, claim_id: &str, finish: &Finish<'_>) {
        for pause_ms in [100, 500, 2_000, 0] {
            match self
                .state
                .store
                .finish_notification(row.id, claim_id, finish, unix_now())
                .await
            {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        notification = row.id,
                        "claim lost before the outcome was written (lease expired); \
                         another node may send it again"
                    );
                    return;
                }
                Err(error) if pause_ms > 0 => {
                    tracing::warn!(notification = row.id, %error, "could not record the outcome; retrying");
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                }
                Err(error) => {
                    tracing::error!(
                        notification = row.id, %error,
                        "could not record the outcome; the claim will expire and the notification be retried"
                    );
                }
            }
        }
    }

    /// Wait for the sends in flight (each bounded by the send deadline).
    async fn drain(&self) {
        let in_flight = self.slot_count as usize - self.slots.available_permits();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for notification sends in flight");
        }
        let all = self.slots.acquire_many(self.slot_count);
        if tokio::time::timeout(self.send_deadline + Duration::from_secs(3), all)
            .await
            .is_err()
        {
            tracing::warn!(
                "notification sends still in flight at shutdown; their claims will expire"
            );
        }
    }
}

/// `base × 2^(attempts−1)` in whole seconds, capped at a day.
fn backoff_seconds(base: Duration, attempts: i64) -> i64 {
    crate::types::backoff_seconds(base, attempts, 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_per_attempt_and_is_capped() {
        let base = Duration::from_secs(30);
        let delays: Vec<i64> = (1..=4).map(|n| backoff_seconds(base, n)).collect();
        assert_eq!(delays, [30, 60, 120, 240]);
        assert_eq!(backoff_seconds(base, 40), 86_400);
        assert_eq!(backoff_seconds(Duration::ZERO, 3), 0);
    }
}
