//! What an operator sees: metrics scraped from the admin listener and read with a Prometheus
//! text parser, the probes, the access log, and the Grafana dashboard's metric names.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value as Metric};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

pub(crate) const ADMIN: &str = "admin:\n  listen: \"127.0.0.1:0\"\n";

/// A gateway with the admin listener on, and more top-level `sections`.
pub(crate) async fn observed(db: Db, sections: &str, tweaks: Tweaks) -> TestApp {
    TestApp::spawn_with(
        db,
        Tweaks {
            sections: Some(format!("{ADMIN}{sections}")),
            ..tweaks
        },
    )
    .await
}

fn admin_addr(app: &TestApp) -> SocketAddr {
    admin_addr_of(app.gateway())
}

fn admin_addr_of(gateway: &mpapi::server::RunningGateway) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(addr) = gateway.state.admin_addr.get() {
            return *addr;
        }
        assert!(Instant::now() < deadline, "the admin listener never bound");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Scrape `/metrics` and parse it as Prometheus does.
pub(crate) async fn scrape(app: &TestApp) -> Scrape {
    scrape_gateway(app.gateway()).await
}

/// Scrape the `/metrics` of a gateway started with the admin listener on.
pub(crate) async fn scrape_gateway(gateway: &mpapi::server::RunningGateway) -> Scrape {
    let response = client()
        .get(format!("http://{}/metrics", admin_addr_of(gateway)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    matching
        .iter()
        .map(|s| match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Metric::Summary(_) => 0.0,
        })
        .sum()
}

/// Scrape until `mpapi_http_requests_total` has counted `total` requests: a request is counted
/// once its answer has gone out, so a scrape right after the last answer may precede it.
async fn scrape_after(app: &TestApp, total: f64) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = scrape(app).await;
        let counted = value(&scrape, "mpapi_http_requests_total", &[]);
        if counted >= total || Instant::now() > deadline {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn scraped_metrics_count_exactly_a_known_mix_of_requests() {
    let app = observed(Db::Sqlite, "", Tweaks::default()).await;
    let alice = app.login("alice").await;
    let bob = app.login("bob").await;
    for token in [&alice, &bob, &alice] {
        assert_eq!(app.get_app("/x", Some(token)).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(app.get_app("/anon", None).await.0, StatusCode::OK);
    }
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    for token in [forged.as_str(), "short"] {
        assert_eq!(
            app.get_app("/x", Some(token)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, _) = app
        .call(Method::GET, "/nowhere", &[("User-App", APPID)], None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(Method::GET, "/app/x", &[("User-App", "wxnobody")], None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // 2 logins + 3 authenticated + 2 anonymous + 2 forged + 1 unknown path + 1 unknown app.
    let m = scrape_after(&app, 11.0).await;
    let requests = |labels: &[(&str, &str)]| value(&m, "mpapi_http_requests_total", labels);
    assert_eq!(requests(&[]), 11.0);
    assert_eq!(
        requests(&[("app", APPID), ("route", "login"), ("status", "200")]),
        2.0
    );
    assert_eq!(
        requests(&[("app", APPID), ("route", "app"), ("status", "200")]),
        5.0
    );
    assert_eq!(
        requests(&[("app", APPID), ("route", "app"), ("status", "401")]),
        2.0
    );
    assert_eq!(
        requests(&[("app", ""), ("route", "unknown"), ("status", "404")]),
        1.0
    );
    assert_eq!(
        requests(&[("app", ""), ("route", "app"), ("status", "403")]),
        1.0
    );
    // The histogram counts the same requests.
    let durations =
        |labels: &[(&str, &str)]| value(&m, "mpapi_http_request_duration_seconds_count", labels);
    assert_eq!(durations(&[("app", APPID), ("route", "app")]), 7.0);
    assert_eq!(durations(&[("app", APPID), ("route", "login")]), 2.0);

    // Three lookups of issued tokens (cached at login), two forged ones.
    let lookups = |result| value(&m, "mpapi_session_lookups_total", &[("result", result)]);
    assert_eq!(lookups("hit") + lookups("miss"), 3.0);
    assert_eq!(lookups("forged"), 2.0);
    assert_eq!(lookups("unknown"), 0.0);
    assert_eq!(value(&m, "mpapi_sessions_cached", &[]), 2.0);

    let upstream = app.backends.upstream_addr.to_string();
    assert_eq!(
        value(
            &m,
            "mpapi_upstream_requests_total",
            &[("app", APPID), ("upstream", &upstream), ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "mpapi_wechat_requests_total",
            &[("api", "sns/jscode2session"), ("errcode", "0")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "mpapi_wechat_request_duration_seconds_count",
            &[("api", "sns/jscode2session")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "mpapi_upstream_healthy",
            &[("app", APPID), ("upstream", &upstream)]
        ),
        1.0
    );
    assert!(value(&m, "mpapi_store_queries_total", &[]) >= 2.0);
    assert_eq!(
        value(
            &m,
            "mpapi_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // No label value is a token, an openid or a path a client chose.
    for sample in &m.samples {
        for (name, label) in sample.labels.iter() {
            for secret in [
                alice.as_str(),
                bob.as_str(),
                "alice",
                "/x",
                "/anon",
                "wxnobody",
            ] {
                assert_ne!(label, secret, "{} {name}", sample.metric);
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_shows_as_unhealthy() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let app = observed(
        Db::Sqlite,
        "",
        Tweaks {
            upstreams: Some(vec![format!("http://{dead_addr}/api")]),
            ..Tweaks::default()
        },
    )
    .await;
    let labels = [("app", APPID), ("upstream", &dead_addr.to_string())];
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(&app).await, "mpapi_upstream_healthy", &labels) != 0.0 {
        assert!(Instant::now() < deadline, "still healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

async fn probe(app: &TestApp, path: &str) -> (StatusCode, String) {
    let response = client()
        .get(format!("http://{}{path}", admin_addr(app)))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

#[tokio::test]
async fn readyz_is_503_while_the_database_is_away_and_200_when_it_is_back() {
    if !Db::Postgres.available() {
        return;
    }
    let app = observed(Db::Postgres, "", Tweaks::default()).await;
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        probe(&app, "/readyz").await,
        (StatusCode::OK, "ready\n".into())
    );

    // The database goes away: no new connection, and the gateway's are cut.
    app.database.set_reachable(false).await;
    let (status, body) = probe(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.starts_with("not ready: store:"), "{body}");
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);

    app.database.set_reachable(true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(&app, "/readyz").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors = value(&scrape(&app).await, "mpapi_store_errors_total", &[]);
    assert!(errors >= 1.0, "{errors}");
    app.stop().await;
}

#[tokio::test]
async fn the_admin_listener_is_not_reachable_through_the_gateway() {
    let app = observed(Db::Sqlite, "", Tweaks::default()).await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, _) = app
            .call(Method::GET, path, &[("User-App", APPID)], None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_and_no_token() {
    let dir = std::env::temp_dir().join(format!("mpapi_access_{}", mpapi::sim::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let app = observed(
        Db::Sqlite,
        &format!("log:\n  access: \"{}\"\n", path.display()),
        Tweaks::default(),
    )
    .await;
    let token = app.login("alice").await;
    let (status, _) = app
        .call(
            Method::GET,
            "/app/items/7?secret=query",
            &[
                ("User-App", APPID),
                ("User-Token", &token),
                ("X-Request-Id", "trace-1"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.get_app("/anon", None).await.0, StatusCode::OK);
    let (status, _) = app.try_login(APPID, "bob").await;
    assert_eq!(status, StatusCode::OK);

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= 4 || Instant::now() > deadline {
            assert!(!text.contains(&token), "a token in the access log");
            assert!(
                !text.contains("secret=query"),
                "a query string in the access log"
            );
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fields = [
        "ts",
        "request_id",
        "client_ip",
        "method",
        "path",
        "status",
        "duration_ms",
        "bytes_sent",
        "app",
        "route",
        "user_id",
        "upstream",
        "upstream_ms",
    ];
    for record in &records {
        for field in fields {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
        let ts = record["ts"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }
    let proxied = records
        .iter()
        .find(|r| r["request_id"] == "trace-1")
        .unwrap();
    assert_eq!(proxied["path"], "/app/items/7");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["route"], "app");
    assert_eq!(proxied["app"], APPID);
    assert_eq!(proxied["client_ip"], "127.0.0.1");
    assert!(proxied["user_id"].as_i64().is_some());
    assert_eq!(proxied["upstream"], app.backends.upstream_addr.to_string());
    assert!(proxied["upstream_ms"].as_f64().is_some());
    assert!(proxied["bytes_sent"].as_u64().unwrap() > 0);
    let anonymous = records.iter().find(|r| r["path"] == "/app/anon").unwrap();
    assert_eq!(anonymous["user_id"], Value::Null);
    let logins: Vec<&Value> = records.iter().filter(|r| r["route"] == "login").collect();
    assert_eq!(logins.len(), 2);
    assert!(
        logins
            .iter()
            .all(|r| r["upstream"].is_null() && r["upstream_ms"].is_null())
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Metric names a PromQL expression uses: `mpapi_…`, with a histogram's series suffixes taken
/// back to the family name.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("mpapi_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|n| n.ends_with("_seconds"))
            })
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => expressions(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| expressions(item, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 6, "{exprs:?}");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    // Traffic that makes every labelled family show a series.
    let app = observed(Db::Sqlite, "", Tweaks::default()).await;
    let token = app.login("alice").await;
    assert_eq!(app.get_app("/x", Some(&token)).await.0, StatusCode::OK);
    let (status, body) = app
        .call(
            Method::GET,
            "/wxcode?scene=a%3D1",
            &[("User-App", APPID), ("User-Token", &token)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let scrape = scrape_after(&app, 3.0).await;
    let exported: BTreeSet<String> = scrape
        .samples
        .iter()
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    s.metric
                        .strip_suffix(suffix)
                        .filter(|n| n.ends_with("_seconds"))
                })
                .unwrap_or(&s.metric)
                .to_string()
        })
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not exported"
    );
    app.stop().await;
}
