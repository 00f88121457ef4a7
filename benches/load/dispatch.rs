//! The notification dispatcher's send rate.
//!
//! Not a request/response load, so not part of the alternating rounds: `count` notifications
//! are enqueued through `POST /notify`, all due at one second a little ahead, and the clock runs
//! from the first subscribe message the simulator receives to the last. Users log in through
//! the simulator first, so WeChat knows every addressee. Run once the rounds are over, so that
//! no send competes with a measured scenario.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use mpapi::notify::message::format_time;
use mpapi::server::RunningGateway;
use mpapi::sim::Simulator;

use crate::generator::{self, Load};
use crate::scenarios;

/// Where the simulator receives subscribe messages.
const SEND_PATH: &str = "/cgi-bin/message/subscribe/send";
/// How long the sends may take before the run is reported as failed.
const DEADLINE: Duration = Duration::from_secs(120);

/// What one measurement found.
pub struct Dispatched {
    pub sent: u64,
    /// Sends per second from the first to the last.
    pub per_second: f64,
    /// CPU time of the gateway's worker threads per send, in microseconds.
    pub cpu_us: f64,
    /// Store statements the dispatcher ran (claims, outcomes, lease sweeps).
    pub queries: u64,
    pub failures: Vec<String>,
}

/// Enqueue `count` notifications for `users` users of `gateway` (log-in prefix `prefix`), all
/// due at one instant, and time their sending.
pub async fn measure(
    gateway: &RunningGateway,
    simulator: &Arc<Simulator>,
    prefix: &'static str,
    users: usize,
    count: u64,
    cpu_us: impl Fn() -> u64,
) -> Dispatched {
    let addr = gateway.addr;
    let mut failures = Vec::new();
    let tokens = match log_in(addr, simulator, prefix, users).await {
        Ok(tokens) => Arc::new(tokens),
        Err(error) => return failed(format!("login before the dispatch run: {error}")),
    };
    // Due at the start of the second after next (one to two seconds ahead): `active_at` has
    // whole seconds.
    let due = chrono::Utc::now().timestamp() + 2;
    // As `/notify` reads `active_at`: the app's time zone, Asia/Shanghai by default.
    let active_at = format_time(due, chrono_tz::Asia::Shanghai);
    let enqueue = Load {
        addr,
        connections: 1,
        duration: Duration::from_secs(60),
        expect: StatusCode::OK,
        make: scenarios::notify_at(addr, 1, tokens, &active_at),
    };
    let before = simulator.requests(SEND_PATH) as u64;
    let store = &gateway.state.store;
    let queries_before = store.background_query_count();
    let cpu_before = cpu_us();
    let outcome = generator::run_count(&enqueue, count).await;
    if outcome.failed > 0 {
        return failed(format!("enqueue: {:?}", outcome.failures));
    }
    if chrono::Utc::now().timestamp() >= due {
        failures.push("enqueueing took longer than the lead time; sends overlapped it".into());
    }

    let started = Instant::now();
    let mut first = None;
    let done = loop {
        let sent = simulator.requests(SEND_PATH) as u64 - before;
        if sent > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if sent >= count {
            break Some(Instant::now());
        }
        if started.elapsed() > DEADLINE {
            failures.push(format!("{sent} of {count} sent within {DEADLINE:?}"));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Anything sent twice would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = simulator.requests(SEND_PATH) as u64 - before;
    if sent > count {
        failures.push(format!("{sent} sends for {count} notifications"));
    }
    let per_second = match (first, done) {
        (Some(first), Some(done)) if done > first => count as f64 / (done - first).as_secs_f64(),
        _ => 0.0,
    };
    Dispatched {
        sent,
        per_second,
        cpu_us: (cpu_us() - cpu_before) as f64 / sent.max(1) as f64,
        queries: store.background_query_count() - queries_before,
        failures,
    }
}

fn failed(failure: String) -> Dispatched {
    Dispatched {
        sent: 0,
        per_second: 0.0,
        cpu_us: 0.0,
        queries: 0,
        failures: vec![failure],
    }
}

/// Log `users` users in through the gateway and the simulator; their tokens.
async fn log_in(
    addr: SocketAddr,
    simulator: &Arc<Simulator>,
    prefix: &'static str,
    users: usize,
) -> Result<Vec<String>, String> {
    let make = scenarios::login(addr, simulator.clone(), prefix, users as u64);
    let mut tokens = Vec::with_capacity(users);
    for _ in 0..users {
        let (status, body) = generator::fetch(addr, make(0, 0))
            .await
            .map_err(|e| e.to_string())?;
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        match answer["data"]["token"].as_str() {
            Some(token) if status == StatusCode::OK => tokens.push(token.to_string()),
            _ => return Err(format!("{status}: {answer}")),
        }
    }
    Ok(tokens)
}
