#!/bin/sh
# Points nginx at the live colour: run by `bg-gate --on-change`, which sets
# BG_ACTIVE (blue or green), BG_GENERATION, BG_APP and BG_COLOUR.
#
#   NGINX_BLUE, NGINX_GREEN  the two colours' addresses, host:port (required)
#   NGINX_CONF       nginx's configuration file (default /etc/nginx/nginx.conf)
#   NGINX_PREFIX     nginx's prefix (-p), if it runs with one
#   NGINX_LIVE_FILE  the upstream file it includes (default bg-live.conf beside NGINX_CONF)
#   NGINX_UPSTREAM   the upstream's name (default bg_live)
#   NGINX_BIN        how to run nginx (default nginx; e.g. "sudo -n /usr/sbin/nginx")
#
# A non-zero exit makes the gate retry, so nginx that is down or a
# configuration that does not load is tried again until it works.
set -eu

conf=${NGINX_CONF:-/etc/nginx/nginx.conf}
live_file=${NGINX_LIVE_FILE:-$(dirname "$conf")/bg-live.conf}
upstream=${NGINX_UPSTREAM:-bg_live}
nginx=${NGINX_BIN:-nginx}

case ${BG_ACTIVE:-} in
  blue) server=${NGINX_BLUE:?NGINX_BLUE: blue address, host:port} ;;
  green) server=${NGINX_GREEN:?NGINX_GREEN: green address, host:port} ;;
  *) echo "nginx-on-change: BG_ACTIVE is '${BG_ACTIVE:-}', not blue or green" >&2; exit 2 ;;
esac

# Written beside the target and renamed over it, so nginx never reads half a file.
tmp=$live_file.tmp.$$
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<CONF
# Written by nginx-on-change.sh: $BG_ACTIVE is live (generation ${BG_GENERATION:-?}).
upstream $upstream {
    server $server;
}
CONF
mv -f "$tmp" "$live_file"

set -- -c "$conf"
if [ -n "${NGINX_PREFIX:-}" ]; then
  set -- -p "$NGINX_PREFIX" "$@"
fi
# nginx refuses to reload a configuration that does not load, yet the reload
# signal itself succeeds: test first, so such a failure is seen (and retried).
# NGINX_BIN may be a command with arguments ("sudo -n nginx"): split on purpose.
# shellcheck disable=SC2086
$nginx "$@" -t -q
# shellcheck disable=SC2086
$nginx "$@" -s reload
