#!/usr/bin/env bash
# PostgreSQL 15 for tests, CI and the demo: a private, throw-away cluster made
# with Debian's binaries, run by the postgres OS user, listening on
# 127.0.0.1:${PGPORT:-5432}, with role "ktsink" (password "ktsink", scram over
# TCP) owning database "ktsink".
#
#   scripts/postgres.sh up     start a cluster, or reuse a server that already
#                              accepts the ktsink role on the port
#   scripts/postgres.sh down   stop and delete the cluster that `up` started;
#                              a reused server is left alone
#   scripts/postgres.sh env    print DATABASE_URL=…
#
# The cluster's data lives in a temporary folder under ${TMPDIR:-/tmp} (the
# postgres user must be able to reach it, which a checkout under /root does
# not allow); what `up` started is recorded in .cache/run/pg-<port>.
# TimescaleDB is preloaded when the server offers the extension; it is never
# required.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
port=${PGPORT:-5432}
pgversion=15
bin=${PG_BIN:-/usr/lib/postgresql/$pgversion/bin}
state="$root/.cache/run/pg-$port"
dsn="postgres://ktsink:ktsink@127.0.0.1:$port/ktsink?sslmode=disable"

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# accepts tells whether a server on the port takes the ktsink role.
accepts() { PGCONNECT_TIMEOUT=3 psql "$dsn" -Atqc 'select 1' >/dev/null 2>&1; }

listening() { (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; }

ensure_binaries() {
  [ -x "$bin/initdb" ] && command -v psql >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "PostgreSQL $pgversion not found: installing Debian's postgresql-$pgversion"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$pgversion" >&2
    # The package may start its own cluster 15/main on 5432; that one is ours
    # to stop, since we just installed it.
    if command -v pg_ctlcluster >/dev/null; then
      pg_ctlcluster "$pgversion" main stop 2>/dev/null || true
    fi
  fi
  [ -x "$bin/initdb" ] || die "PostgreSQL $pgversion binaries not found in $bin (install postgresql-$pgversion, or set PG_BIN)"
  command -v psql >/dev/null || die "psql not found (install postgresql-client-$pgversion)"
}

# psql_admin runs SQL as the cluster's superuser over its private socket.
psql_admin() {
  as_pg psql -h "$1" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "${@:2}"
}

# forget_stale removes what a previous `up` left behind when its server is
# no longer running (a killed session, a rebooted machine).
forget_stale() {
  [ -f "$state/datadir" ] || { rm -rf "$state"; return; }
  local dir
  dir=$(cat "$state/datadir")
  if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    say "stopping the cluster a previous 'up' left running in $dir (it does not accept $dsn)"
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir" "$state"
}

up() {
  if accepts; then
    say "reusing the server already on 127.0.0.1:$port: $(psql "$dsn" -Atqc 'show server_version')"
    return
  fi
  ensure_binaries
  forget_stale
  if listening; then
    die "something listens on 127.0.0.1:$port but does not accept $dsn (set PGPORT to use another port)"
  fi

  local dir data log
  dir=$(mktemp -d "${TMPDIR:-/tmp}/ktsink-pg-$port.XXXXXX")
  data="$dir/data"
  log="$dir/postgres.log"
  mkdir -p "$state"
  echo "$dir" >"$state/datadir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi

  as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { say "initdb failed ($dir/initdb.log):"; cat "$dir/initdb.log" >&2; exit 1; }
  # Tuned for tests: durable (fsync stays on), but cheap to start and to fill.
  cat >>"$data/postgresql.conf" <<CONF

# scripts/postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
wal_level = minimal
max_wal_senders = 0
max_wal_size = 2GB
checkpoint_timeout = 30min
log_min_messages = warning
log_min_error_statement = panic
CONF

  pgctl() {
    as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 "$@" >/dev/null ||
      { say "pg_ctl $* failed; last lines of $log:"; tail -20 "$log" >&2; exit 1; }
  }
  say "starting PostgreSQL $pgversion on 127.0.0.1:$port (data and log in $dir)"
  pgctl start
  echo yes >"$state/started"

  if [ "$(psql_admin "$dir" -c "select count(*) from pg_available_extensions where name = 'timescaledb'")" = 1 ]; then
    say "timescaledb is available: preloading it"
    psql_admin "$dir" -c "alter system set shared_preload_libraries = 'timescaledb'" >/dev/null
    pgctl restart
  else
    say "timescaledb is not available: plain PostgreSQL"
  fi

  psql_admin "$dir" >/dev/null <<'SQL'
CREATE ROLE ktsink LOGIN SUPERUSER PASSWORD 'ktsink';
CREATE DATABASE ktsink OWNER ktsink;
SQL
  accepts || die "PostgreSQL started but does not accept $dsn; see $log"
  say "ready: PostgreSQL $(psql "$dsn" -Atqc 'show server_version') at $dsn"
}

down() {
  if [ ! -f "$state/started" ]; then
    rm -rf "$state"
    return
  fi
  local dir
  dir=$(cat "$state/datadir")
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
      die "could not stop the PostgreSQL cluster in $dir"
    say "stopped PostgreSQL on 127.0.0.1:$port"
  fi
  rm -rf "$dir" "$state"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "DATABASE_URL=$dsn" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
