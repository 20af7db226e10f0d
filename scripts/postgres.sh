#!/usr/bin/env bash
# PostgreSQL 15 for tests, CI and the demo: a private, throw-away cluster made
# with Debian's binaries, run by the postgres OS user, listening on
# 127.0.0.1:${PGPORT:-5432}, with role "ktsink" (password "ktsink", scram over
# TCP) owning database "ktsink".
#
#   scripts/postgres.sh up     start the cluster, or use the server already on
#                              the port if it accepts the ktsink role
#   scripts/postgres.sh up-fresh  the same, but a stopped cluster's data is
#                              deleted first (scripts/with-services.sh does this)
#   scripts/postgres.sh down   give up this caller's use of it; the last user
#                              stops a cluster `up` started (a server `up` did
#                              not start is never stopped); its data stays, and
#                              the next `up` starts the same database again
#   scripts/postgres.sh purge  down, then delete the data if the cluster stopped
#                              (scripts/with-services.sh does this: every
#                              `make test` starts from an empty database,
#                              unless it shares a server already running)
#   scripts/postgres.sh env    print DATABASE_URL=…
#
# With PG_SSL_CERT and PG_SSL_KEY (PEM server certificate chain and key) a
# new cluster gets ssl = on with copies of them, and accepts TCP connections
# only over TLS (hostssl); the DSN above then says sslmode=require. A client
# that checks the certificate (sslmode=verify-full) needs the CA that signed
# it and a host name the certificate names.
#
# Data, log and socket live in /tmp/ktsink-run/pg-<port> (see scripts/lib.sh
# for the sharing rules; the postgres user could not reach a checkout under
# /root). TimescaleDB is preloaded when the server offers the extension; it
# is never required.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

port=${PGPORT:-5432}
pgversion=15
bin=${PG_BIN:-/usr/lib/postgresql/$pgversion/bin}
state="$run_dir/pg-$port"
pgdir="$state/pg" # owned by the postgres user: data/, postgres.log, socket
ssl=no
if [ -n "${PG_SSL_CERT:-}" ] || [ -n "${PG_SSL_KEY:-}" ]; then
  ssl=yes
fi
if [ $ssl = yes ]; then
  dsn="postgres://ktsink:ktsink@127.0.0.1:$port/ktsink?sslmode=require"
else
  dsn="postgres://ktsink:ktsink@127.0.0.1:$port/ktsink?sslmode=disable"
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# accepts tells whether a server on the port takes the ktsink role.
accepts() { PGCONNECT_TIMEOUT=3 psql "$dsn" -Atqc 'select 1' >/dev/null 2>&1; }

server_version() { psql "$dsn" -Atqc 'show server_version'; }

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

# pgctl runs pg_ctl; the server it starts must not inherit the lock (fd 9).
pgctl() {
  as_pg "$bin/pg_ctl" -D "$pgdir/data" "$@" >/dev/null 9>&-
}

# psql_admin runs SQL as the cluster's superuser over its private socket.
psql_admin() {
  as_pg psql -h "$pgdir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"
}

# stop_cluster stops the cluster in $pgdir if it runs.
stop_cluster() {
  if [ -f "$pgdir/data/postmaster.pid" ]; then
    pgctl -m fast -w -t 60 stop 2>/dev/null || pgctl -m immediate -w -t 30 stop 2>/dev/null ||
      die "could not stop the PostgreSQL cluster in $pgdir/data"
    say "stopped PostgreSQL on 127.0.0.1:$port"
  fi
}

# init_cluster makes a new cluster in $pgdir/data.
init_cluster() {
  rm -rf "$state"
  mkdir -p "$pgdir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pgdir"; fi
  as_pg "$bin/initdb" -D "$pgdir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 ||
    { say "initdb failed ($state/initdb.log):"; cat "$state/initdb.log" >&2; rm -rf "$state"; exit 1; }
  # Tuned for tests: durable (fsync stays on), but quick to start and to fill.
  cat >>"$pgdir/data/postgresql.conf" <<CONF

# scripts/postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$pgdir'
max_connections = 200
shared_buffers = 256MB
wal_level = minimal
max_wal_senders = 0
# checkpoints: a 1M-row upsert run writes ~240 MB of WAL; with 2GB a WAL-
# triggered checkpoint came every ~1.1 GB (every 4-5M rows), and after each
# one the first touch of every index page logs a full-page image. Spaced
# checkpoints and compressed page images are common production choices for
# write-heavy servers (durability is unchanged: fsync and
# synchronous_commit stay on).
max_wal_size = 8GB
checkpoint_timeout = 30min
wal_compression = lz4
log_min_messages = warning
CONF
  if [ $ssl = yes ]; then
    # the server reads its key only if the postgres user owns it, mode 0600
    as_pg install -m 600 /dev/null "$pgdir/data/server.key"
    as_pg install -m 644 /dev/null "$pgdir/data/server.crt"
    as_pg tee "$pgdir/data/server.key" <"$PG_SSL_KEY" >/dev/null
    as_pg tee "$pgdir/data/server.crt" <"$PG_SSL_CERT" >/dev/null
    as_pg tee -a "$pgdir/data/postgresql.conf" >/dev/null <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
    # TCP only over TLS
    as_pg sed -i 's/^host\([[:space:]]\)/hostssl\1/' "$pgdir/data/pg_hba.conf"
  fi
  : >"$state/started"
}

# up starts the cluster, or takes a lease on it when it runs. A stopped
# cluster starts again with its data, unless $1 is "fresh".
up() {
  local fresh=no
  [ "${1:-}" = fresh ] && fresh=yes
  lock_service "pg-$port"
  if accepts; then
    if [ -f "$state/started" ]; then
      hold "$state"
      say "using the PostgreSQL $(server_version) that scripts/postgres.sh started on 127.0.0.1:$port"
    else
      say "using the PostgreSQL $(server_version) already on 127.0.0.1:$port (not started here: never stopped here)"
    fi
    return
  fi
  if [ $ssl = yes ]; then
    [ -r "${PG_SSL_CERT:-}" ] || die "PG_SSL_CERT: cannot read '${PG_SSL_CERT:-}' (PG_SSL_CERT and PG_SSL_KEY go together)"
    [ -r "${PG_SSL_KEY:-}" ] || die "PG_SSL_KEY: cannot read '${PG_SSL_KEY:-}' (PG_SSL_CERT and PG_SSL_KEY go together)"
  fi
  ensure_binaries
  if [ -f "$state/started" ] && [ -f "$pgdir/data/PG_VERSION" ]; then
    stop_cluster # in case it runs but does not accept connections
    rm -rf "$state/holders" # nobody uses a server that is down
    if [ "$fresh" = yes ]; then rm -rf "$state"; fi
  elif [ -e "$state" ]; then
    rm -rf "$state" # an `up` that did not finish
  fi
  if listening "$port"; then
    die "something listens on 127.0.0.1:$port but does not accept $dsn (set PGPORT to use another port)"
  fi

  local log="$pgdir/postgres.log" new=no
  if [ ! -f "$state/started" ]; then
    init_cluster
    new=yes
  fi
  if [ $new = yes ]; then
    say "starting a new PostgreSQL $pgversion cluster on 127.0.0.1:$port (data and log in $pgdir)"
  else
    say "starting the PostgreSQL $pgversion cluster in $pgdir again on 127.0.0.1:$port"
  fi
  pgctl -l "$log" -w -t 60 start ||
    { say "pg_ctl start failed; last lines of $log:"; tail -n 20 "$log" >&2; stop_cluster; exit 1; }

  if [ $new = yes ]; then
    if [ "$(psql_admin -c "select count(*) from pg_available_extensions where name = 'timescaledb'")" = 1 ]; then
      say "timescaledb is available: preloading it"
      psql_admin -c "alter system set shared_preload_libraries = 'timescaledb'" >/dev/null
      pgctl -l "$log" -w -t 60 restart ||
        { say "restart with timescaledb failed; last lines of $log:"; tail -n 20 "$log" >&2; stop_cluster; exit 1; }
    else
      say "timescaledb is not available: plain PostgreSQL"
    fi
    psql_admin >/dev/null <<'SQL' || { stop_cluster; die "creating role and database ktsink failed"; }
CREATE ROLE ktsink LOGIN SUPERUSER PASSWORD 'ktsink';
CREATE DATABASE ktsink OWNER ktsink;
SQL
  fi
  accepts || { stop_cluster; die "PostgreSQL started but does not accept $dsn; see $log"; }
  hold "$state"
  say "ready: PostgreSQL $(server_version) at $dsn"
}

# down gives up the caller's lease and, when none is left, stops the
# cluster; with "purge" it also deletes the cluster's data.
down() {
  lock_service "pg-$port"
  [ -f "$state/started" ] || return 0
  local left
  left=$(release "$state")
  if [ -n "$left" ]; then
    say "leaving PostgreSQL on 127.0.0.1:$port running: still used by $left"
    return
  fi
  stop_cluster
  if [ "${1:-}" = purge ]; then
    rm -rf "$state"
  fi
}

case "${1:-}" in
  up) up ;;
  up-fresh) up fresh ;;
  down) down ;;
  purge) down purge ;;
  env) echo "DATABASE_URL=$dsn" ;;
  *) echo "usage: $0 up|up-fresh|down|purge|env" >&2; exit 2 ;;
esac
