#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 60) with cargo-fuzz on
# the nightly toolchain; fail on the first crash. Each target starts from its seeds
# (fuzz/seeds/<target>, real inputs) and the corpus earlier runs grew (fuzz/corpus/<target>,
# not committed). A crash leaves its input in fuzz/artifacts/<target>/ — reproduce it with
# `cargo +nightly fuzz run <target> <file>` (in fuzz/), then add it to the normal test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
. scripts/setup.sh
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "mpapi: installing the nightly toolchain (cargo-fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "mpapi: installing cargo-fuzz" >&2
  cargo install cargo-fuzz
fi
# Fuzz builds are instrumented for coverage; the hot-path profile is for what ships.
export MPAPI_PGO=off
cd fuzz
mkdir -p ../target/fuzz-logs
summary=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  log="../target/fuzz-logs/$target.log"
  echo "== $target: ${seconds}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "mpapi: fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  summary+=("$target: ${runs:-?} executions in ${seconds}s, no crash")
done
printf '%s\n' "${summary[@]}"
