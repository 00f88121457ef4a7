# Sourced by run.sh and test.sh: install what the build needs on a fresh machine.
# Pingora's zlib-ng build needs cmake; the Rust toolchain comes with the machine.
if ! command -v cmake >/dev/null 2>&1; then
  echo "mpapi: installing cmake (needed by Pingora's zlib-ng build)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "mpapi: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
