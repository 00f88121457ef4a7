#!/usr/bin/env bash
# Run the gateway on SQLite with the built-in WeChat simulator and an echo upstream
# (conf/dev.yaml): gateway on 127.0.0.1:8080, simulator on :9100, echo upstream on :9200.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec cargo run --bin mpapi -- -c conf/dev.yaml "$@"
