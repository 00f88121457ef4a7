//! The real binary as a child process: upgrade (`-u` then SIGQUIT) under load, SIGHUP reload,
//! SIGTERM, and daemonizing (`-d`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;

/// A directory with a configuration file for the binary, on a port of its own.
struct Setup {
    dir: PathBuf,
    port: u16,
    backends: Backends,
    /// More top-level sections of the file (`{dir}` stands for the setup's directory).
    extra: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Setup {
    async fn new() -> Self {
        Self::with("").await
    }

    async fn with(extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mpapi_proc_{}", mpapi::sim::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let setup = Self {
            extra: extra.replace("{dir}", &dir.display().to_string()),
            dir,
            port,
            backends: Backends::start().await,
        };
        setup.write_config(&setup.apps(&[(APPID, "api")]));
        setup
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("mpapi.yaml")
    }

    /// The `apps:` list with one app per `(appid, upstream prefix)`.
    fn apps(&self, apps: &[(&str, &str)]) -> String {
        apps.iter()
            .map(|(appid, prefix)| {
                format!(
                    "  - appid: \"{appid}\"\n    secret: \"{SECRET}\"\n    upstreams: [\"http://{}/{prefix}\"]\n",
                    self.backends.upstream_addr
                )
            })
            .collect()
    }

    fn write_config(&self, apps: &str) {
        let yaml = format!(
            r#"
server:
  listen: "127.0.0.1:{port}"
  threads: 1
  upgrade_sock: "{dir}/upgrade.sock"
  pid_file: "{dir}/mpapi.pid"
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 2
  health_check_interval_seconds: 1
database:
  url: "sqlite://{dir}/mpapi.db?mode=rwc"
wechat:
  api_base: "http://{sim}"
apps:
{apps}
{extra}
"#,
            extra = self.extra,
            port = self.port,
            dir = self.dir.display(),
            sim = self.backends.sim_addr,
        );
        std::fs::write(self.conf(), yaml).unwrap();
    }

    /// Start the binary with `args`, its log in `log_name`.
    fn start(&self, args: &[&str], log_name: &str) -> Proc {
        let log = std::fs::File::create(self.dir.join(log_name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mpapi"))
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn log(&self, log_name: &str) -> String {
        std::fs::read_to_string(self.dir.join(log_name)).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `/app/x` as `appid`: the status, and the upstream path the echo saw.
    async fn get(&self, client: &reqwest::Client, appid: &str) -> Option<(StatusCode, String)> {
        let response = client
            .get(self.url("/app/x"))
            .header("User-App", appid)
            .send()
            .await
            .ok()?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.ok()?;
        Some((status, body["path"].as_str().unwrap_or("").to_string()))
    }

    /// Wait until the gateway answers, up to 30 s.
    async fn wait_ready(&self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((StatusCode::OK, _)) = self.get(&client, APPID).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway never answered: {}", self.log("old.log"));
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process, killed if the test ends (or fails) before it exits.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &Proc, name: &str) {
    signal_pid(child.0.id(), name);
}

fn signal_pid(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Wait for `child` to exit, up to `limit`; its exit code.
async fn exited(child: &mut Proc, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `-u` then SIGQUIT under continuous load from several clients: every request is answered,
/// the new process serves after the old one has gone, and SIGTERM then stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request() {
    let setup = Setup::new().await;
    let mut old = setup.start(&[], "old.log");
    setup.wait_ready().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = setup.url("/app/load");
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = client.get(&url).header("User-App", APPID).send().await;
                match answer {
                    Ok(response) if response.status() == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("status {}", response.status()));
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{error:?}"));
                    }
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = setup.start(&["-u"], "new.log");
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&old, "QUIT");
    let code = exited(&mut old, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "old process: {}", setup.log("old.log"));
    let served_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {failures:?}\nnew: {}",
        setup.log("new.log")
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "the new process served nothing after the old one left: {}",
        setup.log("new.log")
    );

    signal(&new, "TERM");
    assert_eq!(exited(&mut new, Duration::from_secs(20)).await, Some(0));
}

/// SIGHUP puts an edited file in force without a restart: an added app serves, a removed one
/// answers 403, a changed upstream takes the next request. A broken file changes nothing and
/// the log names the key, as `-t` would; keys that need a restart are named too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_apps_and_a_broken_file_keeps_the_last_good_config() {
    let setup = Setup::new().await;
    let mut child = setup.start(&[], "old.log");
    setup.wait_ready().await;
    let client = client();
    assert_eq!(
        setup.get(&client, OTHER_APPID).await.unwrap().0,
        StatusCode::FORBIDDEN
    );

    setup.write_config(&setup.apps(&[(OTHER_APPID, "other"), (APPID, "moved")]));
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = setup.get(&client, OTHER_APPID).await.unwrap();
        if answer == (StatusCode::OK, "/other/x".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reloaded: {}",
            setup.log("old.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        setup.get(&client, APPID).await.unwrap(),
        (StatusCode::OK, "/moved/x".to_string())
    );

    // Removed: 403 from the next request.
    setup.write_config(&setup.apps(&[(OTHER_APPID, "other")]));
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.get(&client, APPID).await.unwrap().0 != StatusCode::FORBIDDEN {
        assert!(
            Instant::now() < deadline,
            "not removed: {}",
            setup.log("old.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file: refused whole, named by key; the last good config serves on.
    let good = std::fs::read_to_string(setup.conf()).unwrap();
    std::fs::write(
        setup.conf(),
        good.replace("upstreams: [\"http://", "upstreams: [\"ftp://"),
    )
    .unwrap();
    signal(&child, "HUP");
    wait_for_log(&setup, "configuration refused").await;
    assert!(setup.log("old.log").contains("apps[0].upstreams[0]"));
    assert_eq!(
        setup.get(&client, OTHER_APPID).await.unwrap(),
        (StatusCode::OK, "/other/x".to_string())
    );

    // A key that cannot change in place is named, the rest applies.
    std::fs::write(setup.conf(), good.replace("threads: 1", "threads: 2")).unwrap();
    signal(&child, "HUP");
    wait_for_log(&setup, "server.threads").await;

    signal(&child, "TERM");
    assert_eq!(exited(&mut child, Duration::from_secs(20)).await, Some(0));
}

async fn wait_for_log(setup: &Setup, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.log("old.log").contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in: {}",
            setup.log("old.log")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `-u` with no process to take over from starts normally, after saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_no_old_process_starts_normally() {
    let setup = Setup::new().await;
    let mut child = setup.start(&["-u"], "old.log");
    setup.wait_ready().await;
    assert!(setup.log("old.log").contains("starting normally"));
    signal(&child, "INT");
    assert!(exited(&mut child, Duration::from_secs(20)).await.is_some());
}

/// `-d` returns at once, leaves a daemon serving, and writes its pid where configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_writes_its_pid_file_and_serves() {
    let setup = Setup::new().await;
    let mut launcher = setup.start(&["-d"], "old.log");
    assert!(
        exited(&mut launcher, Duration::from_secs(20))
            .await
            .is_some()
    );
    setup.wait_ready().await;
    let pid: u32 = read_pid(&setup.dir.join("mpapi.pid")).expect("a pid file");
    let _daemon = Daemon(pid);
    signal_pid(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon's pid, killed if the test ends before it has stopped.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.0)).exists() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `log.format: json` makes every line on stderr a JSON object; SIGHUP reopens the access log
/// (after logrotate moved it) and counts the reload, a refused one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_a_reopened_access_log_and_counted_reloads() {
    let admin = free_port();
    let setup = Setup::with(&format!(
        "log:\n  format: json\n  access: \"{{dir}}/access.log\"\nadmin:\n  listen: \"127.0.0.1:{admin}\"\n"
    ))
    .await;
    let mut child = setup.start(&[], "old.log");
    setup.wait_ready().await;
    let access = setup.dir.join("access.log");
    let rotated = setup.dir.join("access.log.1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&access)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::rename(&access, &rotated).unwrap();
    signal(&child, "HUP");
    wait_for_log(&setup, "configuration reloaded").await;
    let client = client();
    assert_eq!(setup.get(&client, APPID).await.unwrap().0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&access)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the access log was not reopened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let good = std::fs::read_to_string(setup.conf()).unwrap();
    std::fs::write(setup.conf(), good.replace("threads: 1", "threads: many")).unwrap();
    signal(&child, "HUP");
    wait_for_log(&setup, "configuration refused").await;

    let metrics = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string()))).unwrap();
    let reloads = |result: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "mpapi_config_reloads_total" && s.labels.get("result") == Some(result)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => -1.0,
            })
    };
    assert_eq!(reloads("ok"), Some(1.0));
    assert_eq!(reloads("refused"), Some(1.0));

    // The last request's line is in the file once the process has exited.
    let response = client
        .get(setup.url("/app/x"))
        .header("User-App", APPID)
        .header("X-Request-Id", "the-last-request")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    signal(&child, "TERM");
    assert_eq!(exited(&mut child, Duration::from_secs(20)).await, Some(0));
    let lines = std::fs::read_to_string(&access).unwrap();
    assert!(lines.contains("\"the-last-request\""), "{lines}");
    let log = setup.log("old.log");
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "fields"] {
            assert!(value.get(field).is_some(), "{field} missing: {line}");
        }
    }
}
