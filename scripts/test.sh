#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check.
# Run as root on Debian (it uses apt-get when redis-server, haproxy, caddy, nginx, rsync, openssl,
# chromium or chromium-driver is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
# gitlab-ci-local copies the project with rsync to run a job in shell mode.
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The status page's browser test drives a headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${missing[*]} missing and not root; install them or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages may start a system redis-server on 6379, and an nginx
# or a caddy on port 80 (caddy's admin endpoint on localhost:2019); the tests
# never use them (each starts its own on free ports, caddy with directories of
# its own), so they are left as they are.

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> bg-gate embedded (no default features)"
# What a service embedding the gate builds: no clap, no tracing-subscriber.
cargo clippy -p bg-gate --no-default-features --lib --locked -- -D warnings
embedded_deps=$(cargo tree -p bg-gate --no-default-features -e normal --prefix none --locked)
for dep in clap tracing-subscriber; do
  if grep -q "^$dep " <<<"$embedded_deps"; then
    echo "error: bg-gate without default features still depends on $dep" >&2
    exit 1
  fi
done

echo "==> cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --all-features --locked

echo "==> gitlab-ci-local --list"
# GitLab reads .gitlab-ci.yml only once it is pushed; listing its jobs here
# checks it against GitLab's schema first (and the end-to-end tests run its
# release job with this gitlab-ci-local). 4.60.1 is the pinned version:
# later releases need Node.js 22. It lives under target/ so that later runs,
# and CI's cache of target/, reuse it instead of rebuilding its native part.
if ! command -v npm >/dev/null 2>&1; then
  echo "==> installing nodejs npm"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: npm missing and not root; install Node.js 20 with npm or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# Debian bookworm's own Node.js is 18, older than the native build's node-gyp
# accepts: a Node.js 20 from the npm registry runs it instead.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  node20=$PWD/target/tools/node-20
  node20_pkg=node-linux-$(node -p process.arch)
  if [ ! -x "$node20/node_modules/$node20_pkg/bin/node" ]; then
    npm install --prefix "$node20" --no-audit --no-fund --loglevel=error "$node20_pkg@20" >/dev/null
  fi
  PATH=$node20/node_modules/$node20_pkg/bin:$PATH
fi
# The Node.js example service the sidecar end-to-end test runs
# (docs/examples/node-ws), with the exact packages of its lockfile.
echo "==> npm ci (docs/examples/node-ws)"
npm ci --prefix docs/examples/node-ws --no-audit --no-fund --loglevel=error >/dev/null
glci_dir=target/tools/gitlab-ci-local-4.60.1
if [ ! -e "$glci_dir/.installed" ]; then
  rm -rf "$glci_dir"
  # Build re2 against the headers of the Node.js that will load it, which
  # every Node.js install carries, rather than headers downloaded at build time.
  node_prefix=$(node -p 'require("path").resolve(process.execPath, "../..")')
  nodedir_env=()
  if [ -e "$node_prefix/include/node/node_version.h" ]; then
    nodedir_env=("npm_config_nodedir=$node_prefix")
  fi
  env "${nodedir_env[@]}" npm install --prefix "$glci_dir" --no-audit --no-fund --loglevel=error gitlab-ci-local@4.60.1 >/dev/null
  touch "$glci_dir/.installed"
fi
glci_log=$(mktemp)
# The release jobs only run in tag pipelines that have gates configured;
# these two variables make them list. --home keeps a developer's own
# ~/.gitlab-ci-local variables out of the check.
if ! glci_jobs=$("$glci_dir/node_modules/.bin/gitlab-ci-local" --list --no-color --home "$glci_dir" \
  --variable CI_COMMIT_TAG=v0.0.0 --variable BG_GATE_BLUE=http://gate.invalid:9090 2>"$glci_log"); then
  cat "$glci_log" >&2
  rm -f "$glci_log"
  echo "error: gitlab-ci-local could not list .gitlab-ci.yml" >&2
  exit 1
fi
rm -f "$glci_log"
echo "$glci_jobs"
for job in test build-image release; do
  if ! grep -q "^$job " <<<"$glci_jobs"; then
    echo "error: .gitlab-ci.yml has no job $job" >&2
    exit 1
  fi
done

echo "==> checking docs/examples"
# The load balancer configurations docs/operations.md tells users to copy.
for cfg in docs/examples/haproxy*.cfg; do
  haproxy -c -f "$cfg"
done
caddy validate --config docs/examples/Caddyfile --adapter caddyfile
# nginx checks its example under a prefix of its own, with the upstream file
# written by the example on-change script (NGINX_BIN=true: write, do not reload).
nginx_check=$(mktemp -d)
trap 'rm -rf "$nginx_check"' EXIT
mkdir "$nginx_check/conf" "$nginx_check/logs"
cp docs/examples/nginx.conf "$nginx_check/conf/"
BG_ACTIVE=blue BG_GENERATION=1 NGINX_BIN=true NGINX_CONF="$nginx_check/conf/nginx.conf" \
  NGINX_BLUE=127.0.0.1:8081 NGINX_GREEN=127.0.0.1:8082 sh docs/examples/nginx-on-change.sh
nginx -t -p "$nginx_check/" -c "$nginx_check/conf/nginx.conf" -e "$nginx_check/logs/error.log"
rm -rf "$nginx_check"
trap - EXIT

echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-features --locked 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
