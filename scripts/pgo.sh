#!/usr/bin/env bash
# Make the profile that optimised builds use (pgo/mpapi.profdata, see scripts/rustc-pgo):
# build the load bench instrumented, send it the hot paths' traffic (bare pass-through,
# cached-token and anonymous requests, then one short run of every scenario: logins, native
# endpoints, unknown tokens, TLS), and merge the counts. Run it after changes to the request
# path and commit the result; functions changed since the last profile build without counts.
# Run it, too, after any change to Cargo.toml's dependencies or to Cargo.lock (tests/build.rs
# says when): Cargo names every compiled function after its crate's dependency graph, so after
# such a change no function of the shipped binary has the profile's name any more.
# Ends by building the shipped binary with the new profile and counting how many of mpapi's
# functions in it the profile names (none, and the profile would do nothing for users).
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
# What the profile was made from; tests/build.rs compares the Cargo files' digests (Cargo.toml
# without blank lines, comment lines or indentation).
{
  echo "# What pgo/mpapi.profdata was made from (scripts/pgo.sh); tests/build.rs checks the digests."
  rustc -V
  echo "Cargo.toml $(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' -e '/^#/d' -e '/^$/d' Cargo.toml | sha256sum | cut -d' ' -f1)"
  echo "Cargo.lock $(sha256sum Cargo.lock | cut -d' ' -f1)"
} > pgo/made-from
echo "pgo/mpapi.profdata: $(du -h pgo/mpapi.profdata | cut -f1), for $(rustc -V)" >&2

# The shipped binary with the new profile: how many of mpapi's own functions in it the profile
# has counts for (function names as the linker keeps them; inlined ones are not counted).
env -u CARGO_TARGET_DIR MPAPI_PGO=on cargo build --release
mpapi_functions() { grep -o '_ZN[A-Za-z0-9_$.]*17h[0-9a-f]\{16\}E' | grep mpapi | sort -u; }
shipped=$(nm target/release/mpapi | mpapi_functions | wc -l)
covered=$(comm -12 <("$profdata" show --all-functions pgo/mpapi.profdata | mpapi_functions) \
  <(nm target/release/mpapi | mpapi_functions) | wc -l)
echo "target/release/mpapi: the profile names $covered of the $shipped mpapi functions in it" >&2
if [ $((covered * 4)) -lt "$shipped" ]; then
  echo "mpapi: the profile does not match the shipped binary's functions (see tests/build.rs)" >&2
  exit 1
fi
