# shellcheck shell=bash
# Shared by scripts/postgres.sh and scripts/kafka.sh (sourced, not run).
#
# A service these scripts start is shared by whoever asks for it while it
# runs: several `make test` runs on one machine, in one checkout or several,
# use one PostgreSQL and one Kafka per port. Each user holds a lease, a file
# in the service's state folder named after its holder: the pid of
# scripts/with-services.sh (KTSINK_HOLDER), or "manual" for a bare `up`.
# `down` gives up the caller's lease and stops the service only when no
# lease is left (leases of processes that are gone do not count). A service
# these scripts did not start is used and never stopped. Up and down of one
# service take a lock, so two runs never start it twice.
#
# State lives on the machine, not in the checkout:
#   ${KTSINK_RUN_DIR:-/tmp/ktsink-run}/<service>-<port>/   started, holders/, data, logs

run_dir=${KTSINK_RUN_DIR:-${TMPDIR:-/tmp}/ktsink-run}
holder=${KTSINK_HOLDER:-manual}

say() { echo "$(basename "$0"): $*" >&2; }
die() { say "$*"; exit 1; }

# lock_service takes the lock of service $1 for the rest of the script,
# waiting up to 10 minutes for another up or down to finish. The lock is fd
# 9: a server the script starts must not inherit it (start it with 9>&-),
# or the lock would live as long as the server.
lock_service() {
  mkdir -p "$run_dir"
  exec 9>"$run_dir/$1.lock"
  flock -w 600 9 || die "waited 10 minutes for the lock $run_dir/$1.lock"
}

# hold records the caller's lease on the service whose state folder is $1.
hold() {
  mkdir -p "$1/holders"
  : >"$1/holders/$holder"
}

# release gives up the caller's lease on $1 and forgets leases of processes
# that are gone; it prints the leases left.
release() {
  local f name
  rm -f "$1/holders/$holder"
  for f in "$1"/holders/*; do
    [ -e "$f" ] || continue
    name=${f##*/}
    case $name in
      *[!0-9]*) ;; # "manual": held until a bare down
      *) kill -0 "$name" 2>/dev/null || rm -f "$f" ;;
    esac
  done
  (cd "$1/holders" 2>/dev/null && ls) | tr '\n' ' '
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
