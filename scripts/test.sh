#!/usr/bin/env bash
# Run every test: unit tests, and the integration tests that drive real gateways over HTTP.
# SQLite always; PostgreSQL and MySQL too when MPAPI_TEST_POSTGRES_URL / MPAPI_TEST_MYSQL_URL
# are set. `cargo test --all-targets` also compiles every bench (dev profile) and smoke-runs it
# once, so the benches cannot rot; their optimised build (the shipped release profile, with
# link-time optimisation) is left to `cargo bench`, which is where its time is worth spending.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
mkdir -p target
cargo test --all-targets 2>&1 | tee target/test-output.log
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' target/test-output.log
