//! The load bench: what mpapi adds to a proxied request, measured end to end.
//!
//! `cargo bench --bench load` starts, in this one process, a minimal upstream, the WeChat
//! simulator, the real gateway (release build; one worker thread, then two) and a bare Pingora
//! pass-through (the floor of our architecture), drives each with many keep-alive connections
//! from the generator in [`generator`], and prints one table; the same figures go to
//! `target/mpapi-bench/load.json`. Scenarios are measured in alternating rounds so machine
//! noise hits all of them alike; each figure is the median over the rounds, and each ratio to
//! the bare pass-through the median of the rounds' ratios. Everything listens on 127.0.0.1.
//!
//! Rows users compare with: when `nginx` is on PATH, nginx proxying the same upstream, nginx
//! with `auth_request`, and nginx doing mpapi's header work alone, whose ratio is to nginx
//! proxying ([`nginx`]); when `wrk` is, the bare pass-through, the cached-token scenario and
//! nginx driven by wrk as well ([`wrk`]). Each is skipped with a note otherwise.
//! Every row shows the load generator's own CPU per request next to the proxy's.
//!
//! Knobs (environment): `MPAPI_LOAD_SECONDS` per measured run (1), `MPAPI_LOAD_ROUNDS` (7),
//! `MPAPI_LOAD_CONNECTIONS` (32), `MPAPI_LOAD_SESSIONS` (1,000 live sessions the cached-token
//! rows rotate over), `MPAPI_TEST_POSTGRES_URL` to add PostgreSQL logins. Words
//! after `--` keep only the scenarios whose name contains one of them; a word that starts with
//! `=` keeps the scenario of exactly that name (`-- "=bare pass-through" "=cached token"`: the
//! pair a long run of many rounds needs, without the rows whose names contain it).
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it is a test, not a bench: a
//! short smoke run of every scenario, plus a check that the generator counts non-2xx answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cpu;
mod dispatch;
mod edge;
mod generator;
mod instructions;
mod nginx;
mod passthrough;
mod report;
mod scenarios;
mod upstream;
mod world;
mod wrk;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use generator::{Load, MakeRequest, Outcome};
use http::StatusCode;
use mpapi::server::RunningGateway;
use mpapi::store::Store;
use passthrough::RunningPassThrough;
use report::Row;
use serde_json::json;

/// How big and how long a run is.
#[derive(Debug, Clone)]
struct Plan {
    connections: usize,
    run: Duration,
    rounds: usize,
    warmup: Duration,
    /// Live sessions with all five identity headers (and as many retired tokens).
    live: usize,
    /// Live sessions for the small-cache gateway, more than its cache holds.
    overflow: usize,
    small_cache: u64,
    /// Distinct users in a login storm.
    login_users: u64,
    /// Notifications the dispatcher sends in its run, and the users they are addressed to.
    dispatch_count: u64,
    dispatch_users: usize,
    filter: Vec<String>,
}

impl Plan {
    fn bench() -> Self {
        Self {
            connections: env_number("MPAPI_LOAD_CONNECTIONS", 32),
            run: Duration::from_secs_f64(env_number("MPAPI_LOAD_SECONDS", 1) as f64),
            rounds: env_number("MPAPI_LOAD_ROUNDS", 7),
            warmup: Duration::from_secs(1),
            live: env_number("MPAPI_LOAD_SESSIONS", 1_000),
            overflow: 20_000,
            small_cache: 1_000,
            login_users: 50_000,
            dispatch_count: 2_000,
            dispatch_users: 100,
            filter: std::env::args()
                .skip(1)
                .filter(|arg| !arg.starts_with("--"))
                .collect(),
        }
    }

    fn smoke() -> Self {
        Self {
            connections: 4,
            run: Duration::from_millis(200),
            rounds: 1,
            warmup: Duration::from_millis(100),
            live: 20,
            overflow: 200,
            small_cache: 20,
            login_users: 100,
            dispatch_count: 20,
            dispatch_users: 5,
            filter: Vec::new(),
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.filter.is_empty()
            || self.filter.iter().any(|word| match word.strip_prefix('=') {
                Some(exact) => name == exact,
                None => name.contains(word.as_str()),
            })
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One scenario against one server, accumulated over rounds.
struct Scenario {
    name: &'static str,
    threads: usize,
    load: Load,
    /// What sends the requests.
    driver: Driver,
    /// The row this one's ratios are taken against (the bare pass-through under the same
    /// generator).
    baseline: &'static str,
    /// The gateway's store, to count the statements a scenario costs.
    store: Option<Arc<Store>>,
    /// Whose CPU time is the proxy's.
    proxy_cpu: cpu::Source,
    /// Counts and failures over every round (latencies are not kept here).
    outcome: Outcome,
    /// Each measured round's figures.
    rounds: Vec<Round>,
    warmup_failed: u64,
    queries: u64,
}

/// One measured run of one scenario.
#[derive(Debug, Clone, Copy)]
struct Round {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time the proxy's worker threads spent per answered request, in microseconds.
    cpu_us: f64,
    /// The part of `cpu_us` spent in the kernel.
    kernel_cpu_us: f64,
    /// CPU time the load generator spent per answered request, in microseconds.
    generator_cpu_us: f64,
    /// CPU time the upstream (and the simulator, which shares its threads) spent per answered
    /// request, in microseconds.
    upstream_cpu_us: f64,
}

/// What sends a scenario's requests.
#[derive(Clone)]
enum Driver {
    /// The bench's own generator ([`generator`]), on the `load-client` threads.
    Hyper,
    /// wrk, as a child process, with the script that sends the scenario's requests.
    Wrk(Arc<wrk::Script>),
    /// wrk over TLS.
    WrkTls(Arc<wrk::Script>),
}

/// Name prefix of the bench's own generator threads.
const GENERATOR_THREADS: &str = "load-client";
/// Name prefix of the threads of the upstream and the WeChat simulator.
const UPSTREAM_THREADS: &str = "backends";
const BARE: &str = "bare pass-through";
const BARE_WRK: &str = "bare pass-through, wrk";
const NGINX: &str = "nginx proxying";
/// nginx doing mpapi's header work with no auth subrequest; its ratio is to [`NGINX`].
const NGINX_HEADERS: &str = "nginx headers only (× nginx proxying)";
const NGINX_ROWS: [&str; 3] = [NGINX, "nginx auth_request", NGINX_HEADERS];
const BARE_TLS: &str = "bare pass-through, TLS, wrk";
const BARE_HANDSHAKES: &str = "bare pass-through, TLS handshakes, wrk";
/// The cached-token scenario with metrics counted and the access log written.
const OBSERVED: &str = "cached token, metrics + access log";

/// Thread counts every server is measured with.
const THREADS: [usize; 2] = [1, 2];

fn main() {
    // `scripts/instructions.sh`: a fixed number of requests through one proxy, under callgrind.
    if let Ok(scenario) = std::env::var("MPAPI_LOAD_INSTRUCTIONS") {
        let count = env_number("MPAPI_LOAD_REQUESTS", 1_000) as u64;
        instructions::run(&scenario, count);
        return;
    }
    let bench = std::env::args().any(|arg| arg == "--bench");
    if !bench {
        // The smoke run drives the instruction-count mode too, so that it cannot rot.
        for scenario in ["bare", "cached", "anonymous"] {
            instructions::run(scenario, 5);
        }
        if on_path("nginx") {
            for scenario in instructions::NGINX_SCENARIOS {
                instructions::run(scenario, 5);
            }
        }
    }
    let plan = if bench { Plan::bench() } else { Plan::smoke() };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let machine = report::machine();
    println!("machine: {machine}");
    println!("plan: {plan:?}");

    // The generator and everything the bench itself awaits run here; the upstream and the
    // simulator have a runtime of their own; each proxy starts its own.
    let client = runtime(GENERATOR_THREADS, 2);
    let backends = runtime(UPSTREAM_THREADS, 2);
    let upstream = upstream::start(&backends);
    let simulator = world::simulator();
    let sim_addr = backends.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(mpapi::sim::serve(
            listener,
            simulator.clone(),
            std::future::pending(),
        ));
        addr
    });

    let sqlite = world::Database::sqlite();
    let postgres_url = std::env::var("MPAPI_TEST_POSTGRES_URL").ok();
    let postgres = postgres_url
        .as_deref()
        .map(|url| client.block_on(world::Database::postgres(url)));
    let started = Instant::now();
    let seeded = client.block_on(world::seed(&sqlite.url, plan.live, plan.overflow));
    println!(
        "seeded {} live, {} retired and {} overflow sessions in {:.1}s",
        seeded.live.len(),
        seeded.retired.len(),
        seeded.overflow.len(),
        started.elapsed().as_secs_f64()
    );
    let live = Arc::new(seeded.live);
    let retired = Arc::new(seeded.retired);
    let overflow = Arc::new(seeded.overflow);
    let plain = Arc::new(seeded.plain);
    let guessed = scenarios::guessed_tokens(4_096);

    let mut bares = Vec::new();
    let mut gateways: Vec<RunningGateway> = Vec::new();
    let mut list = Vec::new();
    let c = plan.connections;
    let wrk_script = if !on_path("wrk") {
        println!("wrk rows: skipped, wrk is not on PATH (apt package wrk)");
        None
    } else if !bench {
        println!("wrk rows: skipped in the smoke run");
        None
    } else {
        Some(Arc::new(wrk::Script::write(
            scenarios::APP_PATH,
            &wrk_headers(upstream),
            &live,
        )))
    };
    // TLS rows: wrk over TLS against the bare pass-through and the gateway, both with TLS.
    let tls = match &wrk_script {
        Some(_) => {
            let certificate = edge::Certificate::make();
            if certificate.is_none() {
                println!("TLS rows: skipped, no openssl command to make a certificate");
            }
            certificate
        }
        None => None,
    };
    let handshake_script = tls.as_ref().map(|_| {
        let mut headers = wrk_headers(upstream);
        headers.push(("Connection".to_string(), "close".to_string()));
        Arc::new(wrk::Script::write(scenarios::APP_PATH, &headers, &live))
    });
    let mut nginx = None;
    for threads in THREADS {
        let bare = RunningPassThrough::start(threads, upstream);
        let (main, (counted, observed), small, pg) = client.block_on(async {
            let main = world::gateway(threads, &sqlite.url, 1_000_000, upstream, sim_addr).await;
            let counted =
                world::observed_gateway(threads, &sqlite.url, upstream, sim_addr, false).await;
            let observed =
                world::observed_gateway(threads, &sqlite.url, upstream, sim_addr, true).await;
            let small =
                world::gateway(threads, &sqlite.url, plan.small_cache, upstream, sim_addr).await;
            let pg = match &postgres {
                Some(db) => {
                    Some(world::gateway(threads, &db.url, 1_000_000, upstream, sim_addr).await)
                }
                None => None,
            };
            (main, (counted, observed), small, pg)
        });
        let identity = client.block_on(prime(main.addr, &live, true));
        client.block_on(prime(main.addr, &plain, false));
        let _ = client.block_on(prime(counted.addr, &live, true));
        let _ = client.block_on(prime(observed.addr, &live, true));
        let scenario =
            |name, addr, store: Option<&RunningGateway>, expect, make: MakeRequest| Scenario {
                name,
                threads,
                load: Load {
                    addr,
                    connections: c,
                    duration: plan.run,
                    expect,
                    make,
                },
                driver: Driver::Hyper,
                baseline: BARE,
                proxy_cpu: cpu::Source::Threads(if store.is_some() {
                    "mpapi-worker"
                } else {
                    "bare-worker"
                }),
                store: store.map(|gateway| gateway.state.store.clone()),
                outcome: Outcome::default(),
                rounds: Vec::new(),
                warmup_failed: 0,
                queries: 0,
            };
        let ok = StatusCode::OK;
        let refused = StatusCode::UNAUTHORIZED;
        list.push(scenario(
            BARE,
            bare.addr,
            None,
            ok,
            scenarios::app_get(bare.addr, c, live.clone()),
        ));
        list.push(scenario(
            "cached token",
            main.addr,
            Some(&main),
            ok,
            scenarios::app_get(main.addr, c, live.clone()),
        ));
        list.push(scenario(
            "cached token, metrics",
            counted.addr,
            Some(&counted),
            ok,
            scenarios::app_get(counted.addr, c, live.clone()),
        ));
        list.push(scenario(
            OBSERVED,
            observed.addr,
            Some(&observed),
            ok,
            scenarios::app_get(observed.addr, c, live.clone()),
        ));
        list.push(scenario(
            "cached token, no profile",
            main.addr,
            Some(&main),
            ok,
            scenarios::app_get(main.addr, c, plain.clone()),
        ));
        list.push(scenario(
            "anonymous",
            main.addr,
            Some(&main),
            ok,
            scenarios::app_get(main.addr, c, Arc::new(Vec::new())),
        ));
        list.push(scenario(
            "guessed tokens (401)",
            main.addr,
            Some(&main),
            refused,
            scenarios::app_get(main.addr, c, guessed.clone()),
        ));
        list.push(scenario(
            "retired tokens (401)",
            main.addr,
            Some(&main),
            refused,
            scenarios::app_get(main.addr, c, retired.clone()),
        ));
        list.push(scenario(
            "cache misses",
            small.addr,
            Some(&small),
            ok,
            scenarios::app_get(small.addr, c, overflow.clone()),
        ));
        list.push(scenario(
            "login (SQLite)",
            main.addr,
            Some(&main),
            ok,
            scenarios::login(main.addr, simulator.clone(), "sqlt", plan.login_users),
        ));
        list.push(scenario(
            "/credentials",
            main.addr,
            Some(&main),
            ok,
            scenarios::credentials(main.addr, c, live.clone()),
        ));
        list.push(scenario(
            "/notify enqueue",
            main.addr,
            Some(&main),
            ok,
            scenarios::notify_enqueue(main.addr, c, live.clone()),
        ));
        if let Some(pg) = &pg {
            list.push(scenario(
                "login (PostgreSQL)",
                pg.addr,
                Some(pg),
                ok,
                scenarios::login(pg.addr, simulator.clone(), "pgsql", plan.login_users),
            ));
        }
        // What users compare mpapi with: one nginx process against one proxy thread.
        if threads == 1 && NGINX_ROWS.iter().any(|name| plan.wants(name)) {
            nginx = start_nginx(upstream, &identity);
        }
        if let Some(nginx) = nginx.as_ref().filter(|_| threads == 1) {
            for (name, baseline, addr) in [
                (NGINX, BARE, nginx.proxy),
                ("nginx auth_request", BARE, nginx.auth_request),
                // Against nginx's own floor: what mpapi's header work costs nginx.
                (NGINX_HEADERS, NGINX, nginx.headers_only),
            ] {
                list.push(Scenario {
                    baseline,
                    proxy_cpu: cpu::Source::Process(nginx.pid()),
                    ..scenario(
                        name,
                        addr,
                        None,
                        ok,
                        scenarios::app_get(addr, c, live.clone()),
                    )
                });
            }
        }
        if let Some(script) = wrk_script.as_ref().filter(|_| threads == 1) {
            let mut targets = vec![
                (BARE_WRK, bare.addr, cpu::Source::Threads("bare-worker")),
                (
                    "cached token, wrk",
                    main.addr,
                    cpu::Source::Threads("mpapi-worker"),
                ),
            ];
            if let Some(nginx) = &nginx {
                let pid = cpu::Source::Process(nginx.pid());
                targets.push(("nginx proxying, wrk", nginx.proxy, pid));
                targets.push(("nginx auth_request, wrk", nginx.auth_request, pid));
            }
            for (name, addr, proxy_cpu) in targets {
                list.push(Scenario {
                    driver: Driver::Wrk(script.clone()),
                    baseline: BARE_WRK,
                    proxy_cpu,
                    ..scenario(
                        name,
                        addr,
                        None,
                        ok,
                        scenarios::app_get(addr, c, live.clone()),
                    )
                });
            }
        }
        if let (Some(certificate), Some(script), Some(handshakes)) = (
            tls.as_ref().filter(|_| threads == 1),
            wrk_script.as_ref(),
            handshake_script.as_ref(),
        ) {
            let files = Some((
                certificate.cert().to_path_buf(),
                certificate.key().to_path_buf(),
            ));
            let bare_tls = RunningPassThrough::start_with(threads, upstream, files);
            let yaml = world::config_yaml(threads, &sqlite.url, 1_000_000, upstream, sim_addr, "");
            let (gateway_tls, gateway_tls_addr) =
                client.block_on(edge::tls_gateway(&yaml, certificate));
            for (name, baseline, addr, proxy_cpu, script) in [
                (BARE_TLS, BARE_TLS, bare_tls.addr, "bare-worker", script),
                (
                    "cached token, TLS, wrk",
                    BARE_TLS,
                    gateway_tls_addr,
                    "mpapi-worker",
                    script,
                ),
                (
                    BARE_HANDSHAKES,
                    BARE_HANDSHAKES,
                    bare_tls.addr,
                    "bare-worker",
                    handshakes,
                ),
                (
                    "cached token, TLS handshakes, wrk",
                    BARE_HANDSHAKES,
                    gateway_tls_addr,
                    "mpapi-worker",
                    handshakes,
                ),
            ] {
                list.push(Scenario {
                    driver: Driver::WrkTls(script.clone()),
                    baseline,
                    proxy_cpu: cpu::Source::Threads(proxy_cpu),
                    ..scenario(
                        name,
                        addr,
                        None,
                        ok,
                        scenarios::app_get(addr, c, live.clone()),
                    )
                });
            }
            bares.push(bare_tls);
            gateways.push(gateway_tls);
        }
        bares.push(bare);
        gateways.extend([main, counted, observed, small]);
        gateways.extend(pg);
    }
    if postgres.is_none() {
        println!("login (PostgreSQL): skipped, MPAPI_TEST_POSTGRES_URL is not set");
    }
    if !bench {
        wrk::self_test();
    }
    list.retain(|scenario| plan.wants(scenario.name));

    for scenario in &mut list {
        // The generator speaks plain HTTP only; TLS rows warm up in their first round.
        if matches!(scenario.driver, Driver::WrkTls(_)) {
            continue;
        }
        let warmup = Load {
            duration: plan.warmup,
            ..scenario.load.clone()
        };
        let before = scenario.store.as_ref().map_or(0, |s| s.query_count());
        let outcome = client.block_on(generator::run(&warmup));
        scenario.queries += scenario.store.as_ref().map_or(0, |s| s.query_count()) - before;
        scenario.warmup_failed += outcome.failed;
        scenario.outcome.failures.extend(outcome.failures);
    }
    for round in 0..plan.rounds {
        for scenario in &mut list {
            let before = scenario.store.as_ref().map_or(0, |s| s.query_count());
            let (outcome, round_figures) = measure(&client, scenario);
            scenario.queries += scenario.store.as_ref().map_or(0, |s| s.query_count()) - before;
            println!(
                "round {}/{}: {:<24} {} thread(s): {:>8.0} req/s, {:>5.1} µs CPU/req (kernel {:>4.1}; generator {:>4.1}, upstream {:>4.1}), {} failed",
                round + 1,
                plan.rounds,
                scenario.name,
                scenario.threads,
                round_figures.per_second,
                round_figures.cpu_us,
                round_figures.kernel_cpu_us,
                round_figures.generator_cpu_us,
                round_figures.upstream_cpu_us,
                outcome.failed
            );
            scenario.rounds.push(round_figures);
            scenario.outcome.merge(outcome);
        }
    }

    let mut rows = rows(&list);
    if plan.wants("reload") {
        let threads = 2;
        let yaml = world::config_yaml(threads, &sqlite.url, 1_000_000, upstream, sim_addr, "");
        let gateway = client.block_on(world::start(&yaml));
        let _ = client.block_on(prime(gateway.addr, &live, true));
        let load = Load {
            addr: gateway.addr,
            connections: c,
            duration: plan.run,
            expect: StatusCode::OK,
            make: scenarios::app_get(gateway.addr, c, live.clone()),
        };
        rows.extend(edge::reload_rows(
            &client, &gateway, &yaml, upstream, load, threads, !bench,
        ));
        gateways.push(gateway);
    }
    let mut cross_nodes = Vec::new();
    if plan.wants("cross-node") {
        let (changes, idle) = if bench {
            (100, Duration::from_secs(10))
        } else {
            (3, Duration::from_millis(600))
        };
        let servers = [
            ("PostgreSQL", "MPAPI_TEST_POSTGRES_URL"),
            ("MySQL", "MPAPI_TEST_MYSQL_URL"),
        ];
        for (name, variable) in servers {
            let Ok(admin_url) = std::env::var(variable) else {
                println!("cross-node delay ({name}): skipped, {variable} is not set");
                continue;
            };
            let db = client.block_on(world::Database::server(&admin_url));
            let found = client.block_on(edge::cross_node(
                name, &db.url, upstream, sim_addr, &simulator, changes, idle,
            ));
            println!(
                "cross-node delay ({}): median {:.1} ms, max {:.1} ms over {} re-logins; idle store load {:.2} queries/s per node",
                found.database,
                found.median_ms,
                found.max_ms,
                found.changes,
                found.idle_queries_per_second
            );
            cross_nodes.push(json!({
                "database": found.database,
                "median_ms": found.median_ms,
                "max_ms": found.max_ms,
                "changes": found.changes,
                "idle_queries_per_second": found.idle_queries_per_second,
            }));
            drop(db);
        }
    }
    rows.extend(dispatcher_rows(
        &plan,
        &client,
        postgres_url.as_deref(),
        upstream,
        sim_addr,
        &simulator,
    ));
    println!("\n{}", report::table(&rows));
    let context = json!({
        "machine": machine,
        "connections": plan.connections,
        "seconds_per_run": plan.run.as_secs_f64(),
        "rounds": plan.rounds,
        "live_sessions": plan.live,
        "overflow_sessions": plan.overflow,
        "small_cache_capacity": plan.small_cache,
        "postgres": postgres.is_some(),
        "cross_node": cross_nodes,
    });
    // A smoke run's figures (debug build, tiny) must not overwrite a real run's.
    if bench {
        // A run of some scenarios only must not overwrite the figures of a whole one.
        let file = if plan.filter.is_empty() {
            "load.json"
        } else {
            "load-partial.json"
        };
        match report::write_json(&rows, context, file) {
            Ok(path) => println!("written to {}", path.display()),
            Err(error) => eprintln!("could not write the JSON report: {error}"),
        }
        print_targets(&rows);
    }

    for gateway in gateways {
        client.block_on(gateway.stop());
    }
    for bare in bares {
        bare.stop();
    }
    if let Some(nginx) = nginx {
        nginx.stop();
    }
    // The wrk script's temp file goes with its last holder, before any `exit` below.
    drop(list);
    drop(wrk_script);
    drop(handshake_script);
    drop(tls);
    drop(postgres);
    drop(sqlite);

    let verdict = verdict(&rows);
    if !bench {
        client.block_on(self_test(upstream, sim_addr));
    }
    backends.shutdown_timeout(Duration::from_secs(1));
    if let Err(message) = verdict {
        eprintln!("\nLOAD BENCH FAILED: {message}");
        std::process::exit(1);
    }
}

/// One measured run of `scenario`, with the CPU time its proxy, its generator and the
/// upstream spent.
fn measure(client: &tokio::runtime::Runtime, scenario: &Scenario) -> (Outcome, Round) {
    let load = &scenario.load;
    let proxy_before = scenario.proxy_cpu.used();
    let upstream_before = cpu::threads_us(UPSTREAM_THREADS);
    let (mut outcome, p50_ms, p99_ms, generator_us) = match &scenario.driver {
        Driver::Hyper => {
            let generator_before = cpu::threads_us(GENERATOR_THREADS);
            let mut outcome = client.block_on(generator::run(load));
            let generator_us = cpu::threads_us(GENERATOR_THREADS) - generator_before;
            let (p50, p99) = (outcome.percentile_ms(50), outcome.percentile_ms(99));
            (outcome, p50, p99, generator_us as f64)
        }
        Driver::Wrk(script) | Driver::WrkTls(script) => {
            let transport = match &scenario.driver {
                Driver::WrkTls(_) => wrk::Transport::Tls,
                _ => wrk::Transport::Plain,
            };
            let run = wrk::run_over(
                transport,
                load.addr,
                scenarios::APP_PATH,
                load.connections,
                load.duration,
                script,
            );
            let generator_us = run.cpu_us * run.outcome.answered as f64;
            (run.outcome, run.p50_ms, run.p99_ms, generator_us)
        }
    };
    let proxy = scenario.proxy_cpu.used().since(proxy_before);
    let upstream_us = cpu::threads_us(UPSTREAM_THREADS) - upstream_before;
    outcome.latencies_us = Vec::new();
    let answered = outcome.answered.max(1) as f64;
    let round = Round {
        per_second: outcome.per_second(),
        p50_ms,
        p99_ms,
        cpu_us: proxy.total_us() as f64 / answered,
        kernel_cpu_us: proxy.system_us as f64 / answered,
        generator_cpu_us: generator_us / answered,
        upstream_cpu_us: upstream_us as f64 / answered,
    };
    (outcome, round)
}

/// The headers a mini program sends, as wrk's script sets them (wrk sets `Host` itself).
fn wrk_headers(upstream: SocketAddr) -> Vec<(String, String)> {
    scenarios::client_headers(upstream)
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// Whether `program` is an executable file on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// Request every live token once through `gateway`, so the measured runs find them cached,
/// then check that the upstream receives the identity headers (all five when `full`); returns
/// the headers one request carried upstream.
async fn prime(
    gateway: SocketAddr,
    live: &Arc<Vec<String>>,
    full: bool,
) -> Vec<(&'static str, String)> {
    let load = Load {
        addr: gateway,
        connections: 1,
        duration: Duration::from_secs(60),
        expect: StatusCode::OK,
        make: scenarios::app_get(gateway, 1, live.clone()),
    };
    let outcome = generator::run_count(&load, live.len() as u64).await;
    assert_eq!(outcome.failed, 0, "priming failed: {:?}", outcome.failures);
    let mut request = (load.make)(0, 0);
    request
        .headers_mut()
        .insert("x-bench-check", http::HeaderValue::from_static("1"));
    let (status, body) = generator::fetch(gateway, request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut injected = Vec::new();
    for (i, name) in mpapi::gateway::identity::INJECTED.into_iter().enumerate() {
        let value = seen[name].as_str();
        assert!(value.is_some(), "{name} was not injected: {seen}");
        if full || i < 3 {
            assert!(
                value.is_some_and(|v| !v.is_empty()),
                "{name} is empty: {seen}"
            );
        }
        injected.push((name, value.unwrap_or_default().to_string()));
    }
    injected
}

/// nginx in front of `upstream`, injecting `identity`; `None`, with a note, when it is not
/// installed or does not start.
fn start_nginx(upstream: SocketAddr, identity: &[(&str, String)]) -> Option<nginx::Nginx> {
    if !on_path("nginx") {
        println!("nginx rows: skipped, nginx is not on PATH (apt package nginx)");
        return None;
    }
    match nginx::Nginx::start(upstream, identity) {
        Ok(nginx) => Some(nginx),
        Err(error) => {
            println!("nginx rows: skipped, {error}");
            None
        }
    }
}

/// The dispatcher's runs, one per database and thread count, each on a gateway and database of
/// its own (every gateway's dispatcher sends what is due in its database), after the rounds so
/// that no send competes with a measured scenario.
fn dispatcher_rows(
    plan: &Plan,
    client: &tokio::runtime::Runtime,
    postgres_url: Option<&str>,
    upstream: SocketAddr,
    sim_addr: SocketAddr,
    simulator: &Arc<mpapi::sim::Simulator>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for threads in THREADS {
        let databases = std::iter::once(("dispatcher sends (SQLite)", None))
            .chain(postgres_url.map(|url| ("dispatcher sends (PostgreSQL)", Some(url))));
        for (name, admin_url) in databases {
            if !plan.wants(name) {
                continue;
            }
            let run = client.block_on(async {
                let database = match admin_url {
                    Some(url) => world::Database::postgres(url).await,
                    None => world::Database::sqlite(),
                };
                let gateway =
                    world::gateway(threads, &database.url, 1_000_000, upstream, sim_addr).await;
                let prefix = if admin_url.is_some() { "dpg" } else { "dsq" };
                let run = dispatch::measure(
                    &gateway,
                    simulator,
                    prefix,
                    plan.dispatch_users,
                    plan.dispatch_count,
                    || cpu::threads_us("mpapi-worker"),
                )
                .await;
                gateway.stop().await;
                drop(database);
                run
            });
            rows.push(dispatch_row(name, threads, run));
        }
    }
    rows
}

/// The row of one dispatcher run: sends per second, no latency percentiles (sends are not
/// answers to the bench's requests).
fn dispatch_row(name: &str, threads: usize, run: dispatch::Dispatched) -> Row {
    println!(
        "dispatch: {name:<30} {threads} thread(s): {:>8.0} sends/s, {} sent",
        run.per_second, run.sent
    );
    Row {
        scenario: name.to_string(),
        threads,
        per_second: run.per_second,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        ratio: None,
        ratio_quartiles: None,
        p99_over_bare_ms: None,
        answered: run.sent,
        failed: run.failures.len() as u64,
        failures: run.failures,
        store_queries: Some(run.queries),
        cpu_us: Some(run.cpu_us),
        kernel_cpu_us: None,
        generator_cpu_us: None,
        upstream_cpu_us: None,
        rounds_per_second: vec![run.per_second.round()],
    }
}

/// Each scenario's row: medians over its rounds, and its ratios to the bare pass-through
/// taken round by round (the two ran seconds apart, under the same machine noise) before the
/// median is taken.
fn rows(list: &[Scenario]) -> Vec<Row> {
    let bare = |baseline: &str, threads: usize| {
        list.iter()
            .find(|s| s.name == baseline && s.threads == threads)
            .map(|s| &s.rounds)
    };
    list.iter()
        .map(|scenario| {
            let rounds = &scenario.rounds;
            let paired =
                bare(scenario.baseline, scenario.threads).filter(|b| b.len() == rounds.len());
            Row {
                scenario: scenario.name.to_string(),
                threads: scenario.threads,
                per_second: median(rounds.iter().map(|r| r.per_second)),
                p50_ms: median(rounds.iter().map(|r| r.p50_ms)),
                p99_ms: median(rounds.iter().map(|r| r.p99_ms)),
                cpu_us: Some(median(rounds.iter().map(|r| r.cpu_us))),
                kernel_cpu_us: Some(median(rounds.iter().map(|r| r.kernel_cpu_us))),
                generator_cpu_us: Some(median(rounds.iter().map(|r| r.generator_cpu_us))),
                upstream_cpu_us: Some(median(rounds.iter().map(|r| r.upstream_cpu_us))),
                ratio: paired.map(|bare| median(round_ratios(rounds, bare))),
                ratio_quartiles: paired.map(|bare| quartiles(round_ratios(rounds, bare))),
                p99_over_bare_ms: paired
                    .map(|bare| median(rounds.iter().zip(bare).map(|(r, b)| r.p99_ms - b.p99_ms))),
                answered: scenario.outcome.answered,
                failed: scenario.outcome.failed + scenario.warmup_failed,
                failures: scenario.outcome.failures.clone(),
                store_queries: scenario.store.as_ref().map(|_| scenario.queries),
                rounds_per_second: rounds.iter().map(|r| r.per_second.round()).collect(),
            }
        })
        .collect()
}

/// Each round's requests/s over the bare pass-through's in the same round.
fn round_ratios<'a>(rounds: &'a [Round], bare: &'a [Round]) -> impl Iterator<Item = f64> + 'a {
    rounds
        .iter()
        .zip(bare)
        .map(|(r, b)| r.per_second / b.per_second)
}

/// The first and third quartile (nearest rank).
fn quartiles(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    (values[last / 4], values[(3 * last).div_ceil(4)])
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The targets, each said to be met or missed (a miss is reported, not fatal).
fn print_targets(rows: &[Row]) {
    println!("targets:");
    for row in rows {
        let verdict = match row.scenario.as_str() {
            "cached token" | "cached token, no profile" => {
                match (row.ratio, row.p99_over_bare_ms) {
                    (Some(ratio), Some(over)) => Some((
                        ratio >= 0.95 && over <= 0.2,
                        format!(
                            "≥ 0.95 × bare and p99 ≤ bare + 0.2 ms: {ratio:.3} ×{}, {over:+.3} ms",
                            spread(row)
                        ),
                    )),
                    _ => None,
                }
            }
            "anonymous" => row.ratio.map(|ratio| {
                (
                    ratio >= 0.97,
                    format!("≥ 0.97 × bare: {ratio:.3} ×{}", spread(row)),
                )
            }),
            "guessed tokens (401)" | "retired tokens (401)" => row.ratio.map(|ratio| {
                (
                    ratio >= 0.8,
                    format!(
                        "≥ 0.8 × bare: {ratio:.3} ×, {} store queries for {} requests",
                        row.store_queries.unwrap_or(0),
                        row.answered
                    ),
                )
            }),
            name if name.starts_with("login") => Some((
                row.per_second >= 2_000.0,
                format!("≥ 2,000 logins/s: {:.0}/s", row.per_second),
            )),
            _ => None,
        };
        if let Some((met, text)) = verdict {
            let mark = if met { "met   " } else { "MISSED" };
            println!(
                "  {mark} {} ({} thread(s)): {text}",
                row.scenario, row.threads
            );
        }
    }
}

/// The middle half of a row's round ratios, for a verdict's text.
fn spread(row: &Row) -> String {
    row.ratio_quartiles.map_or(String::new(), |(q1, q3)| {
        format!(" (middle half of rounds {q1:.3}–{q3:.3})")
    })
}

/// Any failed request fails the run.
fn verdict(rows: &[Row]) -> Result<(), String> {
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| row.failed > 0)
        .map(|row| {
            format!(
                "{} ({} thread(s)): {} failed, e.g. {:?}",
                row.scenario, row.threads, row.failed, row.failures
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Not a timing: the generator counts every answer that is not the expected status, and a run
/// with any such answer fails.
async fn self_test(upstream: SocketAddr, sim_addr: SocketAddr) {
    let sqlite = world::Database::sqlite();
    let gateway = world::gateway(1, &sqlite.url, 100, upstream, sim_addr).await;
    let load = Load {
        addr: gateway.addr,
        connections: 2,
        duration: Duration::from_millis(200),
        expect: StatusCode::OK,
        make: scenarios::unknown_app(gateway.addr),
    };
    let mut outcome = generator::run(&load).await;
    assert!(outcome.failed > 0, "403 answers must count as failures");
    assert_eq!(outcome.answered, 0);
    assert!(
        outcome.failures[0].contains("403"),
        "{:?}",
        outcome.failures
    );
    let row = Row {
        scenario: "unknown app".into(),
        threads: 1,
        per_second: outcome.per_second(),
        p50_ms: outcome.percentile_ms(50),
        p99_ms: outcome.percentile_ms(99),
        ratio: None,
        ratio_quartiles: None,
        p99_over_bare_ms: None,
        answered: outcome.answered,
        failed: outcome.failed,
        failures: outcome.failures.clone(),
        store_queries: None,
        cpu_us: None,
        kernel_cpu_us: None,
        generator_cpu_us: None,
        upstream_cpu_us: None,
        rounds_per_second: Vec::new(),
    };
    assert!(verdict(&[row]).is_err(), "a run with failures must fail");
    gateway.stop().await;
    println!("self-test passed: non-2xx answers are counted and fail the run");
}
