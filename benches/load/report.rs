//! The bench's output: one table on stdout and the same figures as JSON under `target/`, with
//! the machine they were measured on.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Value, json};

/// One scenario's result over its rounds (medians).
pub struct Row {
    pub scenario: String,
    pub threads: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests per second relative to the bare pass-through with the same thread count.
    pub ratio: Option<f64>,
    /// The middle half of the rounds' ratios (first and third quartile): how far one run's
    /// ratio can be trusted on this machine.
    pub ratio_quartiles: Option<(f64, f64)>,
    /// p99 minus the bare pass-through's p99.
    pub p99_over_bare_ms: Option<f64>,
    pub answered: u64,
    pub failed: u64,
    pub failures: Vec<String>,
    /// Store statements executed while the scenario ran (None for the bare proxy).
    pub store_queries: Option<u64>,
    /// CPU time of the proxy's worker threads per request, in microseconds (None for rows
    /// that do not measure it).
    pub cpu_us: Option<f64>,
    /// The part of `cpu_us` spent in the kernel (system calls, and the loopback network
    /// stack's work done on the proxy's behalf).
    pub kernel_cpu_us: Option<f64>,
    /// CPU time of the load generator per request, in microseconds (None for rows that are
    /// not request loads).
    pub generator_cpu_us: Option<f64>,
    /// CPU time of the upstream (and the simulator, on the same threads) per request, in
    /// microseconds: on a machine whose cores the proxy shares with the generator and the
    /// upstream, a bigger upstream request costs requests/s here that it would not cost with
    /// the upstream on another machine.
    pub upstream_cpu_us: Option<f64>,
    /// Requests per second of each round, in order.
    pub rounds_per_second: Vec<f64>,
}

/// nproc, CPU model and memory of this machine.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    })
}

/// The table, as Markdown (it reads as well in a terminal as in the README).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | threads | requests/s | p50 ms | p99 ms | × bare | p99 − bare ms | proxy CPU µs/req (kernel) | generator CPU µs/req | upstream CPU µs/req | store queries |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let ratio = row.ratio.map_or("—".into(), |r| format!("{r:.3}"));
        let over = row
            .p99_over_bare_ms
            .map_or("—".into(), |d| format!("{d:+.3}"));
        let queries = row.store_queries.map_or("—".into(), |q| q.to_string());
        let proxy = match (row.cpu_us, row.kernel_cpu_us) {
            (Some(us), Some(kernel)) => format!("{us:.1} ({kernel:.1})"),
            (Some(us), None) => format!("{us:.1}"),
            (None, _) => "—".into(),
        };
        let generator = row
            .generator_cpu_us
            .map_or("—".into(), |us| format!("{us:.1}"));
        let upstream = row
            .upstream_cpu_us
            .map_or("—".into(), |us| format!("{us:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.threads,
            row.per_second,
            millis(row.p50_ms),
            millis(row.p99_ms),
            ratio,
            over,
            proxy,
            generator,
            upstream,
            queries
        );
    }
    out
}

/// Write the rows and `context` as JSON to `target/mpapi-bench/{file}`; returns where.
pub fn write_json(rows: &[Row], context: Value, file: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("mpapi-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "scenario": row.scenario,
                "threads": row.threads,
                "requests_per_second": row.per_second.round(),
                "p50_ms": row.p50_ms,
                "p99_ms": row.p99_ms,
                "ratio_to_bare": row.ratio,
                "ratio_to_bare_quartiles": row.ratio_quartiles.map(|(q1, q3)| [q1, q3]),
                "p99_over_bare_ms": row.p99_over_bare_ms,
                "answered": row.answered,
                "failed": row.failed,
                "failures": row.failures,
                "store_queries": row.store_queries,
                "proxy_cpu_us_per_request": row.cpu_us,
                "proxy_kernel_cpu_us_per_request": row.kernel_cpu_us,
                "generator_cpu_us_per_request": row.generator_cpu_us,
                "upstream_cpu_us_per_request": row.upstream_cpu_us,
                "rounds_requests_per_second": row.rounds_per_second,
            })
        })
        .collect();
    let document = json!({ "context": context, "rows": rows });
    std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
    Ok(path)
}

/// A latency in milliseconds, or a dash for a row that has none.
fn millis(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.3}")
    } else {
        "—".into()
    }
}
