#!/usr/bin/env bash
# Run every test: unit tests, and the integration tests that drive real gateways over HTTP
# (first, the code's documentation is built, private items included, and must have no broken link).
# SQLite always; PostgreSQL and MySQL too when MPAPI_TEST_POSTGRES_URL / MPAPI_TEST_MYSQL_URL
# are set (a case whose database is absent is counted as skipped, never as passed).
# `cargo test --all-targets` also compiles every bench (dev profile) and smoke-runs it once, so
# the benches cannot rot; their optimised build (the shipped release profile, with link-time
# optimisation) is left to `cargo bench`, which is where its time is worth spending.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

# A database URL that is set must answer: say so once, before anything is built.
check_database() {
  local var=$1 url=${!1:-}
  if [ -z "$url" ]; then
    echo "mpapi: $var is not set: its test cases will be skipped"
    return 0
  fi
  local rest=${url#*://}
  rest=${rest#*@}
  local hostport=${rest%%/*}
  local host=${hostport%:*} port=${hostport##*:}
  [ "$host" = "$hostport" ] && port=$2
  if ! timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
    echo "mpapi: $var=$url does not answer at $host:$port; start the database or unset $var" >&2
    exit 1
  fi
  echo "mpapi: $var answers at $host:$port: its test cases run"
}
check_database MPAPI_TEST_POSTGRES_URL 5432
check_database MPAPI_TEST_MYSQL_URL 3306

# The code's documentation, private items included, must build without a broken link.
echo "mpapi: checking the documentation (cargo doc)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet

mkdir -p target
export MPAPI_TEST_SKIP_LOG="$PWD/target/test-skipped.log"
: >"$MPAPI_TEST_SKIP_LOG"
set +e
cargo test --all-targets 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary; skipped cases (no
# database URL) are taken out of libtest's "passed".
skipped=$(wc -l <"$MPAPI_TEST_SKIP_LOG" | tr -d ' ')
awk -v skipped="$skipped" -v status="$status" '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { if (status != 0 && f == 0) f = 1
        printf "%d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' target/test-output.log
exit "$status"
