//! The load generator: `connections` keep-alive HTTP/1.1 connections, each sending requests back
//! to back (a closed loop) for a fixed time, recording every latency.
//!
//! Written for the bench on hyper's low-level client (`hyper::client::conn::http1`) so that
//! nothing has to be installed and the client adds as little CPU as possible: it shares the
//! machine's cores with the servers it measures. Every answer whose status is not the one the
//! scenario expects is counted as a failure; a run with any failure fails the bench.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Builds the `seq`-th request of connection `connection`.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

/// No single request may take longer than this; one that does counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A bound on every connection's loop besides the clock.
const MAX_REQUESTS_PER_CONNECTION: u64 = 10_000_000;
/// A connection that fails is reopened at most this many times per run.
const MAX_RECONNECTS: u32 = 20;
/// Failure descriptions kept per run (the count is always exact).
const KEPT_FAILURES: usize = 5;

/// One closed-loop run against one address.
#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    /// The status every answer must have (2xx, or 401 for token floods).
    pub expect: StatusCode,
    pub make: MakeRequest,
}

/// What a run (or several, merged) observed.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Answers with the expected status.
    pub answered: u64,
    /// Answers with another status, transport errors and timeouts.
    pub failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// Latency of every answered request, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Wall-clock time the run lasted.
    pub elapsed: Duration,
}

impl Outcome {
    /// Add another run's observations (for scenarios measured in several rounds).
    pub fn merge(&mut self, other: Outcome) {
        self.answered += other.answered;
        self.failed += other.failed;
        for failure in other.failures {
            if self.failures.len() < KEPT_FAILURES {
                self.failures.push(failure);
            }
        }
        self.latencies_us.extend(other.latencies_us);
        self.elapsed += other.elapsed;
    }

    /// Answered requests per second of wall-clock time.
    pub fn per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.answered as f64 / seconds
        } else {
            0.0
        }
    }

    /// The `pct`-th percentile latency in milliseconds (sorts the samples).
    pub fn percentile_ms(&mut self, pct: usize) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let index = (self.latencies_us.len() * pct / 100).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[index]) / 1000.0
    }

    fn fail(&mut self, description: String) {
        self.failed += 1;
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(description);
        }
    }
}

/// Run `load` on the current runtime; returns once every connection has stopped.
pub async fn run(load: &Load) -> Outcome {
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..load.connections {
        let load = load.clone();
        tasks.spawn(async move {
            drive(&load, connection, deadline, MAX_REQUESTS_PER_CONNECTION).await
        });
    }
    let mut outcome = Outcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(part) => outcome.merge(part),
            Err(error) => outcome.fail(format!("connection task died: {error}")),
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Send exactly `count` requests of `load` one after the other on one connection (or fewer
/// if its duration runs out first).
pub async fn run_count(load: &Load, count: u64) -> Outcome {
    let started = Instant::now();
    let mut outcome = drive(load, 0, started + load.duration, count).await;
    outcome.elapsed = started.elapsed();
    outcome
}

/// One request on a connection of its own; returns the status and the body.
pub async fn fetch(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let mut sender = connect(addr).await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// One connection's loop: send, wait for the whole answer, record, repeat until `deadline` or
/// `limit` requests.
async fn drive(load: &Load, connection: usize, deadline: Instant, limit: u64) -> Outcome {
    let mut outcome = Outcome {
        latencies_us: Vec::with_capacity(65_536),
        ..Outcome::default()
    };
    let mut seq = 0u64;
    let mut reconnects = 0;
    'connect: while Instant::now() < deadline && reconnects <= MAX_RECONNECTS {
        reconnects += 1;
        let mut sender = match connect(load.addr).await {
            Ok(sender) => sender,
            Err(error) => {
                outcome.fail(format!("connect: {error}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while Instant::now() < deadline && seq < limit {
            let request = (load.make)(connection, seq);
            seq += 1;
            let sent = Instant::now();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await;
            let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
            match answer {
                Ok(Ok((status, _))) if status == load.expect => {
                    outcome.answered += 1;
                    outcome.latencies_us.push(micros);
                }
                Ok(Ok((status, body))) => {
                    let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    outcome.fail(format!(
                        "status {status} (expected {}): {body}",
                        load.expect
                    ));
                }
                Ok(Err(error)) => {
                    outcome.fail(format!("transport: {error}"));
                    continue 'connect;
                }
                Err(_) => {
                    outcome.fail(format!("no answer within {REQUEST_TIMEOUT:?}"));
                    continue 'connect;
                }
            }
        }
        break;
    }
    outcome
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
