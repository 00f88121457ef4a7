//! The shipped build: what makes `cargo build --release` get the profile in `pgo/`.
//!
//! The profile (`scripts/pgo.sh`, made by the load bench) gives LLVM counts by function name,
//! and Cargo names every compiled function after its crate's version, features and
//! dependencies. So the profile reaches the shipped binary only if `cargo build --release`
//! builds each crate exactly as `cargo bench` did, and only while the dependency graph is the one
//! the profile was made from; either way, a mismatch builds silently, just slower.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Each package of a `cargo tree` over `edges`, with the feature sets it is built with.
fn packages(edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree", "--locked", "--prefix", "none", "--format", "{p}|{f}",
        ])
        .args(["--edges", edges])
        .current_dir(ROOT)
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree --edges {edges}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut packages: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim_end_matches(" (*)");
        if let Some((package, features)) = line.split_once('|') {
            packages
                .entry(package.trim().to_string())
                .or_default()
                .insert(features.to_string());
        }
    }
    packages
}

#[test]
fn dev_dependencies_change_no_feature_of_the_shipped_build() {
    let shipped = packages("normal,build");
    let benched = packages("all");
    assert!(
        shipped
            .keys()
            .any(|package| package.starts_with("pingora-proxy "))
    );
    let differing: Vec<String> = shipped
        .iter()
        .filter(|(package, features)| benched.get(*package) != Some(*features))
        .map(|(package, features)| {
            format!(
                "{package}: shipped with {features:?}, benched with {:?}",
                benched.get(package)
            )
        })
        .collect();
    assert!(
        differing.is_empty(),
        "`cargo bench` builds these crates with other features than `cargo build --release`, so \
         the profile in pgo/ cannot match the shipped binary; turn the same features on in \
         Cargo.toml's [dependencies] (see the comment there):\n{}",
        differing.join("\n")
    );
}

/// The SHA-256 of a file as `scripts/pgo.sh` records it: `Cargo.toml` without blank lines,
/// comment lines or indentation (a comment does not change the build), `Cargo.lock` as it is.
fn digest(file: &str) -> String {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
    let text = if file == "Cargo.toml" {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .flat_map(|line| [line, "\n"])
            .collect()
    } else {
        text
    };
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[test]
fn the_release_profile_was_made_from_this_dependency_graph() {
    let made_from = std::fs::read_to_string(Path::new(ROOT).join("pgo/made-from")).unwrap();
    for file in ["Cargo.toml", "Cargo.lock"] {
        let recorded = made_from
            .lines()
            .find_map(|line| line.strip_prefix(file)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("pgo/made-from has no {file} line"));
        assert_eq!(
            recorded,
            digest(file),
            "{file} changed since pgo/mpapi.profdata was made: if a version, a dependency or a \
             feature changed, the shipped binary's functions no longer have the profile's names \
             and `cargo build --release` builds without it; run scripts/pgo.sh and commit pgo/"
        );
    }
}
