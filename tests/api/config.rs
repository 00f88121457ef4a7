//! The configuration file: the shipped examples parse, and every mistake names its key.

use std::process::Command;

use mpapi::config::Config;

fn parse(yaml: &str) -> Result<Config, String> {
    Config::parse(yaml, &|name| {
        (name == "SET").then(|| "from-env".to_string())
    })
    .map_err(|e| e.to_string())
}

const VALID: &str = r#"
server: { listen: "127.0.0.1:0" }
database: { url: "sqlite://x.db?mode=rwc" }
wechat: { api_base: "https://api.weixin.qq.com" }
apps:
  - appid: "wx1"
    secret: "${SET}"
    upstreams: ["http://127.0.0.1:9000/api"]
"#;

#[test]
fn a_minimal_file_parses_with_defaults_and_expands_variables() {
    let config = parse(VALID).unwrap();
    assert_eq!(config.apps[0].secret.expose(), "from-env");
    assert_eq!(config.server.body_limit, 1 << 20);
    assert_eq!(config.session.ttl.as_secs(), 7 * 86_400);
    assert_eq!(config.apps[0].upstreams[0].path_prefix, "/api");
    assert_eq!(config.server.upstream_dns_refresh.as_secs(), 30);
    assert!(config.server.upstream_ca.is_none());
}

#[test]
fn an_https_upstream_is_tls_with_its_host_as_sni_and_its_port_only_when_not_443() {
    let config = parse(&VALID.replace(
        "\"http://127.0.0.1:9000/api\"",
        "\"https://127.0.0.1/api\", \"https://localhost:8443\"",
    ))
    .unwrap();
    let upstreams = &config.apps[0].upstreams;
    assert!(upstreams.iter().all(|u| u.tls));
    assert_eq!(upstreams[0].addr.port(), 443);
    assert_eq!(upstreams[0].sni, "127.0.0.1");
    assert_eq!(upstreams[0].host_header, "127.0.0.1");
    assert_eq!(upstreams[0].host_name, None);
    assert_eq!(upstreams[1].sni, "localhost");
    assert_eq!(upstreams[1].host_header, "localhost:8443");
    assert_eq!(upstreams[1].host_name.as_deref(), Some("localhost"));
}

#[test]
fn every_mistake_names_its_key() {
    let cases = [
        (
            VALID.replace("appid: \"wx1\"", "appid: \"wx1\"\n    colour: blue"),
            "apps[0]",
            "unknown field",
        ),
        (
            VALID.replace("${SET}", ""),
            "apps[0].secret",
            "missing secret",
        ),
        (
            VALID.replace("${SET}", "${UNSET}"),
            "apps[0].secret",
            "UNSET is not set",
        ),
        (
            VALID.replace("http://127.0.0.1:9000/api", "not a url"),
            "apps[0].upstreams[0]",
            "not a URL",
        ),
        (
            VALID.replace("sqlite://x.db?mode=rwc", "redis://x"),
            "database.url",
            "must start with",
        ),
        (
            VALID.replace("127.0.0.1:0", "nowhere"),
            "server.listen",
            "host:port",
        ),
        (
            VALID.replace(
                "listen: \"127.0.0.1:0\"",
                "listen: \"127.0.0.1:0\", trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
            ),
            "server.trusted_proxies[1]",
            "not a CIDR",
        ),
        (
            VALID.replace(
                "listen: \"127.0.0.1:0\"",
                "listen: \"127.0.0.1:0\", upstream_ca: \"/nonexistent/ca.pem\"",
            ),
            "server.upstream_ca",
            "cannot read /nonexistent/ca.pem",
        ),
        (
            VALID.replace(
                "listen: \"127.0.0.1:0\"",
                "listen: \"127.0.0.1:0\", upstream_ca: \"Cargo.toml\"",
            ),
            "server.upstream_ca",
            "holds no PEM certificate",
        ),
        (
            VALID.replace(
                "listen: \"127.0.0.1:0\"",
                "listen: \"127.0.0.1:0\", upstream_dns_refresh_seconds: 0",
            ),
            "server.upstream_dns_refresh_seconds",
            "",
        ),
        (
            VALID.replace("http://127.0.0.1:9000/api", "ftp://127.0.0.1/api"),
            "apps[0].upstreams[0]",
            "unsupported scheme ftp",
        ),
    ];
    for (yaml, key, problem) in cases {
        let error = parse(&yaml).unwrap_err();
        assert!(
            error.starts_with(key) && error.contains(problem),
            "expected {key}: {problem}, got {error}"
        );
    }
}

#[test]
fn the_shipped_configuration_files_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["conf/mpapi.yaml", "conf/dev.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        Config::parse(&text, &|_| Some("from-env".to_string()))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn dash_t_validates_and_refuses_a_bad_file_with_its_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ok = Command::new(env!("CARGO_BIN_EXE_mpapi"))
        .args(["-t", "-c", &format!("{root}/conf/dev.yaml")])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = std::env::temp_dir().join(format!("mpapi-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, VALID.replace("${SET}", "${MPAPI_SURELY_UNSET_VAR}")).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_mpapi"))
        .args(["-t", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("apps[0].secret") && stderr.contains("MPAPI_SURELY_UNSET_VAR"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_unset_variable_is_named_in_one_run() {
    let yaml = VALID.replace("${SET}", "${UNSET_A}").replace(
        "upstreams:",
        "host_token: \"${UNSET_B}-${UNSET_C}\"\n    upstreams:",
    );
    let error = parse(&yaml).unwrap_err();
    assert!(
        error.contains("apps[0].secret: environment variable UNSET_A is not set")
            && error
                .contains("apps[0].host_token: environment variables UNSET_B, UNSET_C are not set"),
        "{error}"
    );
}

#[test]
fn problems_of_the_whole_file_carry_no_made_up_key() {
    let error = parse(&format!("colour: blue\n{VALID}")).unwrap_err();
    assert!(error.starts_with("unknown field `colour`"), "{error}");

    let error = parse(&VALID.replace("server: {", "server: { threads: many,")).unwrap_err();
    assert!(
        error.starts_with("server.threads") && error.contains("a whole number"),
        "{error}"
    );
    assert!(!error.contains("usize"), "{error}");
}

#[test]
fn an_idle_timeout_of_zero_is_refused_and_no_request_limit_is_allowed() {
    let error = parse(&VALID.replace(
        "server: {",
        "server: { client_keepalive_timeout_seconds: 0,",
    ))
    .unwrap_err();
    assert!(
        error.starts_with("server.client_keepalive_timeout_seconds")
            && error.contains("greater than zero"),
        "{error}"
    );
    let unlimited =
        parse(&VALID.replace("server: {", "server: { client_keepalive_requests: 0,")).unwrap();
    assert_eq!(unlimited.server.client_keepalive_requests, None);
    assert_eq!(
        parse(VALID).unwrap().server.client_keepalive_requests,
        Some(1_000)
    );
}

#[test]
fn a_missing_file_is_named_once() {
    let missing = std::env::temp_dir().join("mpapi-no-such-config.yaml");
    let refused = Command::new(env!("CARGO_BIN_EXE_mpapi"))
        .args(["-t", "-c"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        stderr.matches("mpapi-no-such-config.yaml").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("cannot read"), "{stderr}");
}
