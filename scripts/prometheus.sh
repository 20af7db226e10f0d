#!/usr/bin/env bash
# Makes sure Debian's prometheus package (prometheus and promtool) is
# installed: the metrics tests run promtool on a scrape and a real
# Prometheus server against the connector. Installs it when missing and we
# are root; the tests start and stop their own server.
#
#   scripts/prometheus.sh ensure
set -euo pipefail

say() { echo "prometheus.sh: $*" >&2; }

ensure() {
  if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    say "using $(prometheus --version 2>&1 | head -1)"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    say "promtool and prometheus missing: install Debian's prometheus package"
    exit 1
  fi
  say "installing Debian's prometheus package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends prometheus >&2
  # the package may start a server of its own where an init system runs
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus || true
  fi
  say "installed $(prometheus --version 2>&1 | head -1)"
}

case "${1:-}" in
  ensure) ensure ;;
  *) echo "usage: $0 ensure" >&2; exit 2 ;;
esac
