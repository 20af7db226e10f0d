#!/usr/bin/env bash
# Runs a command with PostgreSQL and Kafka up, then takes down what it
# started (also when the command fails or is interrupted) and exits with the
# command's status.
#
#   scripts/with-services.sh go test ./...
#
# The command sees DATABASE_URL, KAFKA_BROKERS, TIMESCALE_URL (a TimescaleDB
# for the TimescaleDB tests: scripts/timescale.sh) and KTSINK_INTEGRATION=1
# (so integration tests must run, never skip), and KAFKA_VERSION when the
# broker is one that scripts/kafka.sh started. PGPORT, KAFKA_PORT and TSPORT
# choose the ports; DATABASE_URL, KAFKA_BROKERS and TIMESCALE_URL already
# set are passed on unchanged.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Our lease on the services (scripts/lib.sh): other runs that use them
# meanwhile keep them up until they are done too.
export KTSINK_HOLDER=$$

cleanup() {
  "$root/scripts/timescale.sh" down || true
  "$root/scripts/kafka.sh" down || true
  "$root/scripts/postgres.sh" purge || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$root/scripts/postgres.sh" up-fresh || exit 1
"$root/scripts/kafka.sh" up || exit 1
"$root/scripts/prometheus.sh" ensure || exit 1
if [ -z "${TIMESCALE_URL:-}" ]; then
  "$root/scripts/timescale.sh" up || exit 1
  eval "export $("$root/scripts/timescale.sh" env)"
fi

database_url=${DATABASE_URL:-}
kafka_brokers=${KAFKA_BROKERS:-}
set -a
eval "$("$root/scripts/postgres.sh" env)"
eval "$("$root/scripts/kafka.sh" env)"
set +a
export DATABASE_URL=${database_url:-$DATABASE_URL}
export KAFKA_BROKERS=${kafka_brokers:-$KAFKA_BROKERS}
export KTSINK_INTEGRATION=1

"$@"
