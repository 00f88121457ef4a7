#!/usr/bin/env bash
# Make the profile that optimised builds use (pgo/mpapi.profdata, see scripts/rustc-pgo):
# build the load bench instrumented, send it the hot paths' traffic (bare pass-through,
# cached-token and anonymous requests, then one short run of every scenario: logins, native
# endpoints, unknown tokens, TLS), and merge the counts. Run it after changes to the request
# path and commit the result; functions changed since the last profile build without counts.
# Needs llvm-profdata of rustc's LLVM version (apt package llvm-N; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$llvm" || true)
if [ -z "$profdata" ] && [ -x "/usr/lib/llvm-$llvm/bin/llvm-profdata" ]; then
  profdata=/usr/lib/llvm-$llvm/bin/llvm-profdata
fi
if [ -z "$profdata" ]; then
  echo "mpapi: installing llvm-$llvm (llvm-profdata for rustc's LLVM $llvm)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "llvm-$llvm" >/dev/null
  profdata=$(command -v "llvm-profdata-$llvm")
fi

raw=$PWD/target/pgo-generate/raw
export MPAPI_PGO=off CARGO_TARGET_DIR=$PWD/target/pgo-generate
bench=$(RUSTFLAGS="-Cprofile-generate=$raw" cargo bench --bench load --no-run --message-format=json |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])')
# Build scripts ran instrumented too: keep only the bench's counts.
rm -rf "$raw"
for scenario in bare cached anonymous; do
  MPAPI_LOAD_INSTRUCTIONS=$scenario MPAPI_LOAD_REQUESTS=20000 "$bench" >/dev/null
done
"$bench" >/dev/null
mkdir -p pgo
"$profdata" merge --sparse -o pgo/mpapi.profdata "$raw"
echo "$llvm" > pgo/llvm-major
echo "pgo/mpapi.profdata: $(du -h pgo/mpapi.profdata | cut -f1), for LLVM $llvm and newer" >&2
