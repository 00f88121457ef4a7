//! The shipped systemd unit: systemd itself accepts every line of it, and it keeps the
//! hardening an edge process needs.

use std::path::PathBuf;
use std::process::Command;

const UNIT: &str = include_str!("../../conf/mpapi.service");

/// The unit's directive values for `key`, in order.
fn directives<'a>(key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        crate::helpers::record_skip("systemd-analyze is not installed: the unit was not verified");
        return;
    }
    // `verify` checks that ExecStart names an executable: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("mpapi_unit_{}", mpapi::sim::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("mpapi.service");
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/mpapi", env!("CARGO_BIN_EXE_mpapi")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // systemd ignores a line it cannot parse with a warning and still exits 0: any line about
    // the unit file is a mistake in it.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("mpapi.service"))
        .collect();
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(complaints.is_empty(), "unit problems: {complaints:#?}");
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_keeps_only_the_bind_capability() {
    assert_eq!(directives("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(directives("KillSignal"), ["SIGTERM"]);
    assert_eq!(
        directives("CapabilityBoundingSet"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(directives("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(directives("NoNewPrivileges"), ["yes"]);
    assert_eq!(directives("ProtectSystem"), ["strict"]);
    assert!(
        directives("ExecStartPre")
            .iter()
            .any(|line| line.contains(" -t ")),
        "the configuration is checked before each start"
    );
    let state = PathBuf::from("/var/lib").join(directives("StateDirectory")[0]);
    assert_eq!(directives("WorkingDirectory"), [state.to_str().unwrap()]);
}
