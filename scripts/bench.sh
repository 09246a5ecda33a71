#!/usr/bin/env bash
# The benchmarks: builds release binaries, installs wrk when missing (root,
# Debian), runs them side by side and writes docs/benchmarks.md. Takes a few
# minutes; not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing and not root; install them or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release --locked -p bg-gate -p bg-ctl -p bg-e2e --bins --examples
./target/release/bg-bench docs/benchmarks.md
