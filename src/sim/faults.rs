//! Faults on demand, so the retry rules are tested against real failures: a WeChat errcode
//! (-1 system busy, 45011 rate limit…), a slow answer, or an HTTP error status.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Simulator, wechat_error};

/// What an injected fault does to one request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer `{"errcode": N, "errmsg": "injected"}` instead of handling the request.
    Errcode(i64),
    /// Wait this long, then handle the request normally.
    Slow(Duration),
    /// Answer this HTTP status with an empty body.
    Status(u16),
}

/// A fault waiting for requests to `path`.
#[derive(Debug)]
pub(super) struct PendingFault {
    path: String,
    fault: Fault,
    remaining: usize,
}

impl Simulator {
    /// Apply `fault` to the next `times` requests whose path is `path` (e.g.
    /// `/cgi-bin/message/subscribe/send`).
    pub fn inject(&self, path: &str, fault: Fault, times: usize) {
        self.faults.lock().push(PendingFault {
            path: path.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Requests received for `path` so far, faulted ones included.
    pub fn requests(&self, path: &str) -> usize {
        self.requests.lock().get(path).copied().unwrap_or(0)
    }

    fn take_fault(&self, path: &str) -> Option<Fault> {
        *self.requests.lock().entry(path.to_string()).or_insert(0) += 1;
        let mut faults = self.faults.lock();
        let index = faults
            .iter()
            .position(|f| f.path == path && f.remaining > 0)?;
        let pending = &mut faults[index];
        pending.remaining -= 1;
        let fault = pending.fault;
        if pending.remaining == 0 {
            faults.remove(index);
        }
        Some(fault)
    }
}

/// Middleware applying pending faults.
pub async fn apply(State(sim): State<Arc<Simulator>>, request: Request, next: Next) -> Response {
    match sim.take_fault(request.uri().path()) {
        None => next.run(request).await,
        Some(Fault::Errcode(code)) => Json(wechat_error(code, "injected")).into_response(),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(Fault::Status(status)) => StatusCode::from_u16(status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    }
}
