//! Resident memory of the session cache: 1,000,000 live sessions cached through the real
//! `Sessions` path (a miss served from a SQLite store, then cached), for two kinds of user:
//!
//! - `typical`: openid and unionid, no profile, no mobile — what most sessions carry, since
//!   WeChat no longer hands out profiles and a phone number costs the app a paid call;
//! - `full`: a profile (nickname, avatar URL) and a mobile as well, so all five identity
//!   headers are rendered — the largest a session gets.
//!
//! `cargo bench --bench memory` measures each in a process of its own (so one's heap does not
//! blur the other's baseline), prints VmRSS before and after and bytes per session, and writes
//! `target/mpapi-bench/memory-{typical,full}.json`. Run without `--bench` (as
//! `cargo test --all-targets` does) it caches 10,000 sessions of each kind and checks they are
//! all then served without a query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpapi::config::{DatabaseConfig, SessionConfig};
use mpapi::session::Sessions;
use mpapi::session::token::{self, TOKEN_LEN, TokenSigner};
use mpapi::store::Store;
use mpapi::types::Secret;
use serde_json::json;
use sqlx::Connection;

const APPID: &str = "wxbench000000001";
const TOKEN_KEY: &str = "memory-bench-token-key-0123456789abcdef";
/// The issue's budget for a million cached sessions.
const BUDGET_BYTES: u64 = 512 << 20;

/// Which users the sessions belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Population {
    Typical,
    Full,
}

impl Population {
    fn name(self) -> &'static str {
        match self {
            Self::Typical => "typical",
            Self::Full => "full",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    let population = args
        .iter()
        .position(|arg| arg == "--population")
        .and_then(|i| args.get(i + 1))
        .map(|name| match name.as_str() {
            "full" => Population::Full,
            _ => Population::Typical,
        });
    match population {
        Some(population) => run(population, bench),
        None if bench => {
            // One child process per population, each with a clean heap.
            let exe = std::env::current_exe().unwrap();
            for population in ["typical", "full"] {
                let status = std::process::Command::new(&exe)
                    .args(["--bench", "--population", population])
                    .status()
                    .unwrap();
                assert!(status.success(), "{population}: {status}");
            }
        }
        None => {
            run(Population::Typical, false);
            run(Population::Full, false);
        }
    }
}

fn run(population: Population, bench: bool) {
    let count: usize = if bench { 1_000_000 } else { 10_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("mpapi_mem_{}", mpapi::sim::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/mpapi.db?mode=rwc", dir.display());
    let result = runtime.block_on(measure(&url, count, population));
    let _ = std::fs::remove_dir_all(&dir);
    let report = result.unwrap();
    println!("{}", report.text);
    if !bench {
        println!("(smoke run: memory figures come from `cargo bench --bench memory`)\n");
    }
    if bench {
        println!("{}", report.memory_text);
        write_json(population, &report.json);
        let verdict = if report.resident_bytes > BUDGET_BYTES * count as u64 / 1_000_000 {
            "MISSED: over"
        } else {
            "met: within"
        };
        println!(
            "{} sessions: target {verdict} 512 MiB per million\n",
            population.name()
        );
    }
}

struct Report {
    text: String,
    /// Resident-memory figures: meaningful only for a million sessions in a fresh process.
    memory_text: String,
    json: serde_json::Value,
    resident_bytes: u64,
}

async fn measure(
    url: &str,
    count: usize,
    population: Population,
) -> Result<Report, Box<dyn std::error::Error>> {
    let store = Arc::new(
        Store::connect(&DatabaseConfig {
            url: Secret::new(url),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
        })
        .await?,
    );
    let sessions = Arc::new(
        Sessions::new(
            store.clone(),
            &SessionConfig {
                ttl: Duration::from_secs(7 * 86_400),
                extend_interval: Duration::from_secs(3_600),
                cache_capacity: count as u64 + count as u64 / 10,
                cache_ttl: Duration::from_secs(3_600),
                negative_cache_ttl: Duration::from_secs(10),
                token_key: Some(Secret::new(TOKEN_KEY)),
                sync_interval: Duration::from_millis(500),
            },
            mpapi::observe::Metrics::new(),
        )
        .await?,
    );

    // Tokens live in one flat buffer, allocated before the baseline is read.
    let started = Instant::now();
    let tokens = Arc::new(issue_tokens(count));
    insert_users(url, &tokens, count, population).await?;
    let seeded = started.elapsed();

    let rss_before = resident_bytes();
    let started = Instant::now();
    authenticate_all(&sessions, &tokens, count).await;
    let cached_in = started.elapsed();
    // A second pass: every session must now be served from the cache, without a query.
    let queries = store.query_count();
    let started = Instant::now();
    authenticate_all(&sessions, &tokens, count).await;
    let hit_pass = started.elapsed();
    let queries_on_hits = store.query_count() - queries;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = resident_bytes();
    let cached = sessions.cached();

    assert_eq!(queries_on_hits, 0, "every session was cached");
    let delta = rss_after.saturating_sub(rss_before);
    let per_session = delta as f64 / count as f64;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} sessions: {count} (rows seeded in {seeded:.1?})",
        population.name()
    );
    let _ = writeln!(
        text,
        "cached through Sessions::authenticate in {cached_in:.1?}; a second pass served all from the cache in {hit_pass:.1?} with {queries_on_hits} store queries"
    );
    let _ = writeln!(text, "cache entry count: {cached}");
    let mut memory_text = String::new();
    let _ = writeln!(
        memory_text,
        "VmRSS before {:.1} MiB, after {:.1} MiB: {:.1} MiB for the cache, {per_session:.0} bytes per session",
        mib(rss_before),
        mib(rss_after),
        mib(delta)
    );
    let _ = writeln!(
        memory_text,
        "projected for 1,000,000 sessions: {:.1} MiB (budget 512 MiB)",
        per_session * 1_000_000.0 / 1_048_576.0
    );
    Ok(Report {
        json: json!({
            "population": population.name(),
            "sessions": count,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "cache_bytes": delta,
            "bytes_per_session": per_session.round(),
            "cache_entry_count": cached,
            "seconds_to_cache": cached_in.as_secs_f64(),
            "machine": machine(),
        }),
        text,
        memory_text,
        resident_bytes: delta,
    })
}

/// `count` tokens signed with the sessions' key, 43 bytes each, back to back.
fn issue_tokens(count: usize) -> Vec<u8> {
    let signer = TokenSigner::new(TOKEN_KEY);
    let mut tokens = Vec::with_capacity(count * TOKEN_LEN);
    for _ in 0..count {
        tokens.extend_from_slice(signer.issue().as_bytes());
    }
    tokens
}

fn token(tokens: &[u8], n: usize) -> &str {
    std::str::from_utf8(&tokens[n * TOKEN_LEN..(n + 1) * TOKEN_LEN]).unwrap()
}

/// One user per token, written in large transactions (logging a million users in one by one
/// would take minutes and measure nothing new).
async fn insert_users(
    url: &str,
    tokens: &[u8],
    count: usize,
    population: Population,
) -> Result<(), sqlx::Error> {
    const ROWS_PER_STATEMENT: usize = 1_000;
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let expires_at = mpapi::types::unix_now() + 7 * 86_400;
    let mut n = 0;
    while n < count {
        let mut tx = conn.begin().await?;
        for _ in 0..50 {
            if n >= count {
                break;
            }
            let mut sql = String::from(
                "INSERT INTO users (appid, openid, unionid, session_key, token_hash, expires_at, \
                 nickname, avatar_url, phone_number, pure_phone_number, country_code, \
                 created_at, updated_at) VALUES ",
            );
            let end = (n + ROWS_PER_STATEMENT).min(count);
            for i in n..end {
                let hash = hex::encode(token::hash(token(tokens, i)));
                let profile = match population {
                    Population::Typical => "NULL, NULL, NULL, NULL, NULL".to_string(),
                    Population::Full => format!(
                        "'微信用户 {i}', \
                         'https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4TwGTfTKbqNzXvBnWdJ8cX0Zicg9YmGhibtDA5ESYicJ0o5iaPfdLrh7jQ/132', \
                         '+86 138{i:0>8}', '138{i:0>8}', '86'"
                    ),
                };
                let _ = write!(
                    sql,
                    "{}('{APPID}', 'o{i:0>27}', 'u{i:0>28}', 'c2Vzc2lvbmtleXNlc3Npb24=', '{hash}', \
                     {expires_at}, {profile}, 0, 0)",
                    if i == n { "" } else { ", " }
                );
            }
            sqlx::query(&sql).execute(&mut *tx).await?;
            n = end;
        }
        tx.commit().await?;
    }
    conn.close().await
}

/// Authenticate every token, four at a time.
async fn authenticate_all(sessions: &Arc<Sessions>, tokens: &Arc<Vec<u8>>, count: usize) {
    const WORKERS: usize = 4;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let sessions = sessions.clone();
        let tokens = tokens.clone();
        tasks.spawn(async move {
            for n in (worker..count).step_by(WORKERS) {
                sessions
                    .authenticate(APPID, token(&tokens, n))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// This process's resident set, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
    })
}

fn write_json(population: Population, value: &serde_json::Value) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("mpapi-bench");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join(format!("memory-{}.json", population.name())),
            serde_json::to_string_pretty(value).unwrap_or_default(),
        )
    });
    if let Err(error) = written {
        eprintln!("could not write the memory report: {error}");
    }
}
