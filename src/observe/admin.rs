//! The admin listener (`admin.listen`): metrics and probes on an address of their own, never
//! reachable through the gateway's public port and never in an app's path space.
//!
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the store answers and the gateway takes requests; 503 with the
//!   reason otherwise (the database is away, or the process is shutting down or handing over),
//!   so a load balancer takes the node out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::State;

/// How long `/readyz` waits for the store.
const STORE_DEADLINE: Duration = Duration::from_secs(2);

/// The admin router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> impl IntoResponse {
    let metrics = &state.metrics;
    if metrics.store_gauges_due() {
        match state.store.queue_sizes().await {
            Ok((notifications, pending)) => metrics.set_store_gauges(&notifications, pending),
            Err(error) => tracing::warn!(%error, "could not read the queue sizes"),
        }
    }
    let store = &state.store;
    metrics.set_totals(
        state.sessions.cached(),
        store.query_count() + store.background_query_count(),
        crate::store::error_count(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn readyz(Extract(state): Extract<Arc<State>>) -> (StatusCode, String) {
    if crate::gateway::respond::is_handing_over() || state.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".into(),
        );
    }
    match tokio::time::timeout(STORE_DEADLINE, state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: store: no answer within {} s\n",
                STORE_DEADLINE.as_secs()
            ),
        ),
    }
}
