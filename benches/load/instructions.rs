//! A fixed number of requests through one proxy, for counting the proxy's instructions per
//! request under callgrind (`scripts/instructions.sh`).
//!
//! Requests/s and CPU time on a shared two-core host move by ±20 % from round to round, too
//! much to see a change of a microsecond. Instructions do not: callgrind counts the same for
//! the same binary and inputs. The script runs this twice per scenario with different request
//! counts and divides the difference of the proxy thread's instructions by the difference of
//! the counts, so start-up, seeding and priming cancel out.
//!
//! The `nginx-*` scenarios count nginx instead, doing the same job in its own process (one
//! `master_process off` worker, see [`crate::nginx`]): the script runs this mode natively and
//! nginx under callgrind, through `MPAPI_LOAD_NGINX_WRAPPER` (a command line that nginx's own
//! is appended to).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::generator::{self, Load};
use crate::passthrough::RunningPassThrough;
use crate::{GENERATOR_THREADS, UPSTREAM_THREADS, runtime, scenarios, upstream, world};

/// Sessions seeded (and cached through the gateway before counting starts).
const SESSIONS: usize = 100;

/// The scenarios that count nginx, one for each of its servers: proxying alone, mpapi's header
/// work, and that behind `auth_request`.
pub const NGINX_SCENARIOS: [&str; 3] = ["nginx-proxying", "nginx-headers", "nginx-auth_request"];

/// Send `count` requests of `scenario` (`bare`, `cached` or `anonymous`, or one of
/// [`NGINX_SCENARIOS`]) over one keep-alive connection to a proxy with one worker thread, then
/// stop.
pub fn run(scenario: &str, count: u64) {
    let client = runtime(GENERATOR_THREADS, 1);
    let backends = runtime(UPSTREAM_THREADS, 1);
    let upstream = upstream::start(&backends);
    let sqlite = world::Database::sqlite();
    let with_sessions =
        matches!(scenario, "bare" | "cached") || NGINX_SCENARIOS.contains(&scenario);
    let tokens = match scenario {
        "anonymous" => Arc::new(Vec::new()),
        _ if with_sessions => Arc::new(client.block_on(world::seed(&sqlite.url, SESSIONS, 0)).live),
        other => panic!("unknown scenario {other}: bare, cached, anonymous or nginx-*"),
    };
    if scenario == "bare" {
        let bare = RunningPassThrough::start(1, upstream);
        client.block_on(send(bare.addr, &tokens, count));
        bare.stop();
        return;
    }
    let gateway = client.block_on(world::gateway(
        1,
        &sqlite.url,
        1_000_000,
        upstream,
        unreachable_simulator(),
    ));
    if scenario.starts_with("nginx-") {
        // The identity nginx injects is the one mpapi renders for these users.
        let identity = client.block_on(crate::prime(gateway.addr, &tokens, true));
        gateway.stop_blocking();
        let wrapper: Vec<String> = std::env::var("MPAPI_LOAD_NGINX_WRAPPER")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let nginx = crate::nginx::Nginx::start_wrapped(upstream, &identity, &wrapper)
            .unwrap_or_else(|error| panic!("nginx did not start: {error}"));
        let addr = match scenario {
            "nginx-proxying" => nginx.proxy,
            "nginx-headers" => nginx.headers_only,
            _ => nginx.auth_request,
        };
        client.block_on(send(addr, &tokens, count));
        nginx.stop_gracefully();
        return;
    }
    if scenario == "cached" {
        // Every token once, so the counted requests find their sessions cached.
        client.block_on(send(gateway.addr, &tokens, tokens.len() as u64));
    }
    client.block_on(send(gateway.addr, &tokens, count));
    gateway.stop_blocking();
}

/// `count` requests, one at a time, each expected to succeed.
async fn send(addr: SocketAddr, tokens: &Arc<Vec<String>>, count: u64) {
    let load = Load {
        addr,
        connections: 1,
        duration: Duration::from_secs(600),
        expect: StatusCode::OK,
        make: scenarios::app_get(addr, 1, tokens.clone()),
    };
    let outcome = generator::run_count(&load, count).await;
    assert_eq!(
        (outcome.answered, outcome.failed),
        (count, 0),
        "{:?}",
        outcome.failures
    );
}

/// The gateway needs a WeChat address; no request of these scenarios reaches it.
fn unreachable_simulator() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}
