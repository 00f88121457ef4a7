//! The cross-check: the same servers driven by wrk, the load generator ops teams use, so a
//! reader can compare the bench's own generator with a familiar one.
//!
//! wrk sends what the bench's generator sends (the same headers, and each request the next of
//! the live tokens): a Lua script formats every request once, at start, and hands them out in
//! turn, so wrk spends no Lua time building requests. One wrk thread, as many connections as the
//! bench's generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cpu;
use crate::generator::Outcome;

/// What one wrk run observed.
pub struct Run {
    pub outcome: Outcome,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// wrk's own CPU time per answered request, in microseconds.
    pub cpu_us: f64,
}

/// The script every wrk run uses, in a temp file removed on drop.
pub struct Script {
    path: PathBuf,
}

impl Script {
    /// Requests for `path` with `headers`, then one request per token with `User-Token` added.
    pub fn write(path: &str, headers: &[(String, String)], tokens: &[String]) -> Self {
        let quote = |text: &str| format!("{text:?}");
        let fields: String = headers
            .iter()
            .map(|(name, value)| format!("[{}] = {}, ", quote(name), quote(value)))
            .collect();
        let tokens: String = tokens.iter().map(|t| format!("{}, ", quote(t))).collect();
        let script = format!(
            r#"local tokens = {{ {tokens} }}
local requests = {{}}
local cursor = 0
init = function(args)
  for n, token in ipairs(tokens) do
    local headers = {{ {fields} }}
    headers["User-Token"] = token
    requests[n] = wrk.format("GET", {path}, headers)
  end
end
request = function()
  cursor = cursor % #requests + 1
  return requests[cursor]
end
"#,
            path = quote(path)
        );
        let file = std::env::temp_dir().join(format!(
            "mpapi_bench_wrk_{}_{}.lua",
            std::process::id(),
            mpapi::sim::random_hex(4)
        ));
        std::fs::write(&file, script).unwrap();
        Self { path: file }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How wrk reaches the server. A script whose requests say `Connection: close` makes every
/// request a new connection (over TLS, a new handshake): wrk's own `-H` does not apply to
/// requests a script formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// Drive `addr` over `transport` for `duration` (whole seconds, at least one) with
/// `connections` connections.
pub fn run_over(
    transport: Transport,
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
    script: &Script,
) -> Run {
    let seconds = duration.as_secs().max(1);
    let before = cpu::waited_children_us();
    let scheme = if transport == Transport::Plain {
        "http"
    } else {
        "https"
    };
    let mut command = Command::new("wrk");
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg("--latency")
        .arg("-s")
        .arg(script.path());
    let output = command
        .arg(format!("{scheme}://{addr}{path}"))
        .stdin(Stdio::null())
        .output();
    let cpu = cpu::waited_children_us() - before;
    let mut outcome = Outcome {
        elapsed: Duration::from_secs(seconds),
        ..Outcome::default()
    };
    let text = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        Ok(output) => {
            outcome.failed = 1;
            outcome.failures.push(format!(
                "wrk exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
            String::new()
        }
        Err(error) => {
            outcome.failed = 1;
            outcome.failures.push(format!("wrk: {error}"));
            String::new()
        }
    };
    let report = parse(&text);
    let answered = report.requests.saturating_sub(report.non_2xx);
    outcome.answered = answered;
    let errors = report.non_2xx + report.socket_errors;
    if errors > 0 {
        outcome.failed += errors;
        outcome.failures.push(format!(
            "wrk: {} non-2xx answers, {} socket errors",
            report.non_2xx, report.socket_errors
        ));
    }
    if report.per_second > 0.0 {
        // wrk's own figure: its clock starts with the connections, not with the process.
        outcome.elapsed = Duration::from_secs_f64(report.requests as f64 / report.per_second);
    }
    Run {
        outcome,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        cpu_us: cpu as f64 / answered.max(1) as f64,
    }
}

/// The figures of wrk's `--latency` report.
#[derive(Debug, Default, PartialEq)]
struct Report {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

fn parse(text: &str) -> Report {
    let mut report = Report::default();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.per_second = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("50%") {
            report.p50_ms = millis(rest.trim());
        } else if let Some(rest) = line.strip_prefix("99%") {
            report.p99_ms = millis(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some((count, rest)) = line.split_once(" requests in ")
            && rest.contains(',')
        {
            report.requests = count.trim().parse().unwrap_or(0);
        }
    }
    report
}

/// `845.00us`, `1.21ms` or `2.00s` in milliseconds.
fn millis(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let number: f64 = value[..split].parse().unwrap_or(f64::NAN);
    match &value[split..] {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}

/// wrk's report format, as the bench reads it (checked in the smoke run whether or not wrk is
/// installed, so a misread report cannot go unnoticed).
pub fn self_test() {
    let sample = "Running 1s test @ http://127.0.0.1:1/app/orders/7?page=2
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.90ms  206.53us   4.28ms   80.08%
    Req/Sec    35.87k     1.21k   37.11k    80.00%
  Latency Distribution
     50%  845.00us
     75%    1.01ms
     90%    1.21ms
     99%    2.10ms
  35696 requests in 1.00s, 6.81MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  35700.12
Transfer/sec:      6.80MB
";
    let report = parse(sample);
    assert_eq!(
        report,
        Report {
            requests: 35696,
            per_second: 35700.12,
            p50_ms: 0.845,
            p99_ms: 2.1,
            non_2xx: 4,
            socket_errors: 3,
        }
    );
}
