#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the bare Pingora pass-through, a
# cached-token request and an anonymous one through the gateway, each with one worker thread.
# Unlike requests/s on a shared host, the counts repeat, so a change of a few hundred
# nanoseconds of work shows. Each scenario runs twice (LOW and HIGH requests over one
# keep-alive connection); the proxy worker thread's instructions are differenced, so start-up
# cancels out. Needs valgrind (apt package valgrind); builds the load bench (release profile).
#
#   scripts/instructions.sh [LOW HIGH]     (default 300 900; seconds a run)
#
# MPAPI_LOAD_BINARY=path measures an already built load bench instead (e.g. two builds to
# compare: copy each `target/release/deps/load-*` binary aside and run this on both).
#
# When nginx is on PATH (apt package nginx), the same for nginx doing the same jobs in its one
# process (the load bench's nginx servers): proxying alone, mpapi's header work without
# authentication, and that behind `auth_request`; the two proxies' floors and what each adds
# to them can then be compared instruction for instruction.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
command -v valgrind >/dev/null || { echo "valgrind is not on PATH (apt package valgrind)" >&2; exit 1; }
low=${1:-300}
high=${2:-900}
bench=${MPAPI_LOAD_BINARY:-}
[ -n "$bench" ] || bench=$(cargo bench --bench load --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The proxy worker's instructions in one run: the thread whose profile holds the proxy's
# `ProxyHttp` implementation (callgrind writes one file per thread).
worker_instructions() {
  local scenario=$1 count=$2 dir="$out/$1-$2" marker
  mkdir -p "$dir"
  MPAPI_LOAD_INSTRUCTIONS=$scenario MPAPI_LOAD_REQUESTS=$count \
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/cg" \
    "$bench" >"$dir/log" 2>&1 || { cat "$dir/log" >&2; exit 1; }
  case $scenario in
    bare) marker='PassThrough as pingora_proxy' ;;
    *) marker='Gateway as pingora_proxy' ;;
  esac
  local total=0 ir
  for file in "$dir"/cg*; do
    grep -q "$marker" "$file" || continue
    ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$file")
    total=$((total + ir))
  done
  echo "$total"
}

# nginx's instructions in one run: the bench runs natively and starts nginx under callgrind.
nginx_instructions() {
  local scenario=$1 count=$2 dir="$out/$1-$2"
  mkdir -p "$dir"
  MPAPI_LOAD_INSTRUCTIONS=$scenario MPAPI_LOAD_REQUESTS=$count \
    MPAPI_LOAD_NGINX_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=$dir/nginx.cg" \
    "$bench" >"$dir/log" 2>&1 || { cat "$dir/log" >&2; exit 1; }
  sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dir/nginx.cg"
}

printf '| scenario | instructions per request (proxy worker) |\n|---|---:|\n'
for scenario in bare cached anonymous; do
  a=$(worker_instructions "$scenario" "$low")
  b=$(worker_instructions "$scenario" "$high")
  printf '| %s | %d |\n' "$scenario" $(((b - a) / (high - low)))
done
if ! command -v nginx >/dev/null; then
  echo "nginx rows: skipped, nginx is not on PATH (apt package nginx)"
  exit 0
fi
for scenario in nginx-proxying nginx-headers nginx-auth_request; do
  a=$(nginx_instructions "$scenario" "$low")
  b=$(nginx_instructions "$scenario" "$high")
  printf '| %s (its process) | %d |\n' "$scenario" $(((b - a) / (high - low)))
done
