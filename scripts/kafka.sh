#!/usr/bin/env bash
# A real Apache Kafka for tests, CI and the demo: the official server jars,
# pinned in scripts/kafka/pom.xml and fetched once with Maven into
# .cache/kafka/<version>/libs, run in KRaft combined mode (each node is broker
# and controller). No Docker, no ZooKeeper.
#
#   scripts/kafka.sh up      one broker on 127.0.0.1:${KAFKA_PORT:-9092}
#                            (controller on the next port), or reuse a broker
#                            that already answers there
#   scripts/kafka.sh up3     three brokers on 127.0.0.1:${KAFKA3_PORT:-9192} and
#                            the two ports after it (controllers on the three
#                            ports after those); replication factor 3 possible
#   scripts/kafka.sh down    give up this caller's use of what `up` and `up3`
#                            started; the last user stops it and deletes its
#                            data; a broker `up` did not start is never stopped
#   scripts/kafka.sh env     print KAFKA_BROKERS=… (and KAFKA_VERSION=… when
#                            this script started the broker)
#   scripts/kafka.sh env3    the same for the three-broker cluster
#   scripts/kafka.sh fetch   only fetch the jars
#   scripts/kafka.sh up-sasl one broker whose client listener is SASL_SSL on
#                            127.0.0.1:${KAFKA_SASL_PORT:-9094} (PLAIN,
#                            SCRAM-SHA-256 and SCRAM-SHA-512), with a
#                            PLAINTEXT inter-broker listener on the next port
#                            and the controller on the one after; needs
#                            KAFKA_SSL_CERT and KAFKA_SSL_KEY (PEM server
#                            certificate chain and unencrypted PKCS#8 key)
#                            and KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD (the
#                            one user, for every mechanism: the variables the
#                            connector reads, so one environment serves both)
#   scripts/kafka.sh down-sasl   give up this caller's use of it (as down)
#   scripts/kafka.sh env-sasl    print KAFKA_BROKERS=… of the SASL_SSL listener
#   scripts/kafka.sh stop    stop the broker `up` started (kill: with SIGKILL)
#                            and keep its data and leases; `start` brings it
#                            back on the same port and data (for tests of a
#                            broker restart: run `up` on a port of their own)
#   scripts/kafka.sh stop3 N the same for node N (1-3) of the cluster;
#                            kill3 N, start3 N
#
# Topics are not created automatically (auto.create.topics.enable=false): a
# test or the connector that needs a topic creates it, so a misspelt topic
# name fails loudly instead of producing into a new empty topic. Each node's
# data, configuration and log (WARN and up, plus start-up) live in
# /tmp/ktsink-run/kafka-<port> (see scripts/lib.sh for the sharing rules).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pom="$root/scripts/kafka/pom.xml"
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
libs="$root/.cache/kafka/$version/libs"
port=${KAFKA_PORT:-9092}
port3=${KAFKA3_PORT:-9192}
sasl_port=${KAFKA_SASL_PORT:-9094}
heap=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
wait_s=${KAFKA_START_TIMEOUT:-120}
ready_bin="$root/.cache/bin/kafkaready"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

ensure_tools() {
  command -v java >/dev/null && command -v mvn >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "java or mvn not found: installing Debian's openjdk-17-jre-headless and maven"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >&2
  fi
  command -v java >/dev/null || die "java not found (install a JRE 17 or later)"
  command -v mvn >/dev/null || die "mvn not found (install maven)"
}

# fetch copies the pinned server jars and their runtime dependencies into
# $libs once; the marker file makes later runs download nothing.
fetch() {
  if [ -f "$libs/.complete" ]; then
    return
  fi
  mkdir -p "${libs%/*}"
  exec 8>"${libs%/*}/fetch.lock"
  flock -w 600 8 || die "waited 10 minutes for ${libs%/*}/fetch.lock"
  if [ -f "$libs/.complete" ]; then
    return # another run fetched them meanwhile
  fi
  ensure_tools
  say "fetching Apache Kafka $version jars from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  # (mvn -q still prints colour resets; sed drops them)
  mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
  [ "${PIPESTATUS[0]}" = 0 ] || die "mvn could not fetch the Kafka $version jars (see the output above)"
  [ -f "$libs/kafka_2.13-$version.jar" ] || die "kafka_2.13-$version.jar missing from $libs after mvn"
  touch "$libs/.complete"
}

# ready waits (up to $2) until $1 (comma-separated brokers) answers a
# metadata request listing $3 brokers, and prints what it found.
ready() {
  if [ ! -x "$ready_bin" ] || [ -n "$(find "$root/internal/cmd/kafkaready" -newer "$ready_bin" -name '*.go')" ]; then
    (cd "$root" && go build -o "$ready_bin" ./internal/cmd/kafkaready) || die "building internal/cmd/kafkaready failed"
  fi
  "$ready_bin" -brokers "$1" -timeout "$2" -count "${3:-1}"
}

# ours_running tells whether the pid in $1/pid is alive and is the broker
# started with $1/server.properties (and not a recycled pid).
ours_running() {
  local pid
  [ -f "$1/pid" ] || return 1
  pid=$(cat "$1/pid")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$1/server.properties"
}

# stop_nodes terminates the brokers of the given state folders together
# (a cluster shut down one node at a time may wait for a quorum that is
# leaving), waits up to 30 s, then kills, and removes the folders.
stop_nodes() {
  local dir pids=()
  for dir in "$@"; do
    if ours_running "$dir"; then
      pids+=("$(cat "$dir/pid")")
    fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 150); do
      local alive=0 pid
      for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; then alive=1; fi
      done
      [ "$alive" = 0 ] && break
      sleep 0.2
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    say "stopped Apache Kafka (pid ${pids[*]})"
  fi
  for dir in "$@"; do rm -rf "$dir"; done
}

# start_node writes the configuration of one KRaft combined node into its
# state folder $1, formats its storage and starts it in the background.
#   start_node DIR NODE_ID PORT CONTROLLER_PORT VOTERS CLUSTER_ID REPLICATION
start_node() {
  local dir=$1 id=$2 p=$3 cp=$4 voters=$5 cluster=$6 rf=$7
  rm -rf "$dir"
  mkdir -p "$dir/data"
  {
    echo "# written by scripts/kafka.sh"
    echo "listeners=PLAINTEXT://127.0.0.1:$p,CONTROLLER://127.0.0.1:$cp"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$p"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    common_props "$dir" "$id" "$voters" "$rf"
  } >"$dir/server.properties"
  format_node "$dir" "$id" "$cluster"
}

# common_props prints the settings every node shares.
#   common_props DIR NODE_ID VOTERS REPLICATION
common_props() {
  local dir=$1 id=$2 voters=$3 rf=$4
  local minisr=1
  [ "$rf" -ge 3 ] && minisr=2
  cat <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$minisr
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
PROPS
}

# format_node writes the logging configuration into the state folder $1,
# formats the node's storage (further arguments go to the storage tool) and
# starts the node in the background (launch_node).
#   format_node DIR NODE_ID CLUSTER_ID [FORMAT_ARGS...]
format_node() {
  local dir=$1 id=$2 cluster=$3
  shift 3
  cat >"$dir/log4j2.yaml" <<LOG
Configuration:
  Appenders:
    File:
      name: file
      fileName: "$dir/broker.log"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
      - name: kafka.server.BrokerServer
        level: INFO
LOG
  java -Dlog4j2.configurationFile="$dir/log4j2.yaml" -cp "$libs/*" kafka.tools.StorageTool format \
    -t "$cluster" -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 ||
    { say "formatting storage for node $id failed:"; cat "$dir/format.log" >&2; return 1; }
  launch_node "$dir"
  echo "$version" >"$dir/version"
}

# launch_node starts the broker configured in state folder $1 in the
# background, on the data already there, and records its pid.
launch_node() {
  local dir=$1
  # The broker must not inherit the locks (fds 8 and 9).
  # shellcheck disable=SC2086 # $heap is a list of JVM options
  nohup java $heap -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/stdout.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$dir/pid"
}

# fail_start reports a broker that did not become ready, with the end of
# its logs, stops what was started and exits.
fail_start() {
  local msg=$1 dir
  shift
  say "$msg"
  for dir in "$@"; do
    say "last lines of $dir/broker.log:"
    tail -n 30 "$dir/broker.log" >&2 2>/dev/null || true
    if [ -s "$dir/stdout.log" ]; then
      say "last lines of $dir/stdout.log:"
      tail -n 15 "$dir/stdout.log" >&2
    fi
  done
  stop_nodes "$@"
  exit 1
}

cluster_id() { java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1; }

up() {
  local state="$run_dir/kafka-$port" out
  lock_service "kafka-$port"
  if listening "$port"; then
    out=$(ready "127.0.0.1:$port" 15s) ||
      die "something listens on 127.0.0.1:$port but does not answer Kafka metadata requests (set KAFKA_PORT to use another port)"
    if ours_running "$state"; then
      hold "$state"
      say "using the broker scripts/kafka.sh started on 127.0.0.1:$port: $out"
    else
      say "using the broker already on 127.0.0.1:$port (not started here: never stopped here): $out"
    fi
    return
  fi
  stop_nodes "$state" # whatever an earlier up left behind
  listening $((port + 1)) && die "the controller port 127.0.0.1:$((port + 1)) is taken (set KAFKA_PORT to use another port)"
  fetch
  say "starting Apache Kafka $version on 127.0.0.1:$port (log $state/broker.log)"
  start_node "$state" 1 "$port" $((port + 1)) "1@127.0.0.1:$((port + 1))" "$(cluster_id)" 1 ||
    fail_start "Apache Kafka could not be started" "$state"
  out=$(ready "127.0.0.1:$port" "${wait_s}s") ||
    fail_start "Apache Kafka on 127.0.0.1:$port was not ready within ${wait_s}s (log $state/broker.log)" "$state"
  hold "$state"
  say "ready: $out"
}

cluster3="$run_dir/kafka3-$port3"
nodes3() { for i in 1 2 3; do echo "$cluster3/node-$i"; done; }
brokers3() { echo "127.0.0.1:$port3,127.0.0.1:$((port3 + 1)),127.0.0.1:$((port3 + 2))"; }

up3() {
  local out i voters cluster dirs
  lock_service "kafka3-$port3"
  mapfile -t dirs < <(nodes3)
  if listening "$port3"; then
    out=$(ready "$(brokers3)" 15s 3) ||
      die "something listens on 127.0.0.1:$port3 but is not a three-broker Kafka cluster (set KAFKA3_PORT to use other ports)"
    if ours_running "${dirs[0]}"; then
      hold "$cluster3"
      say "using the cluster scripts/kafka.sh started on $(brokers3): $out"
    else
      say "using the cluster already on $(brokers3) (not started here: never stopped here): $out"
    fi
    return
  fi
  stop_nodes "${dirs[@]}"
  rm -rf "$cluster3"
  fetch
  cluster=$(cluster_id)
  voters="1@127.0.0.1:$((port3 + 3)),2@127.0.0.1:$((port3 + 4)),3@127.0.0.1:$((port3 + 5))"
  say "starting a three-node Apache Kafka $version cluster on $(brokers3) (logs $cluster3/node-*/broker.log)"
  for i in 1 2 3; do
    start_node "${dirs[$((i - 1))]}" "$i" $((port3 + i - 1)) $((port3 + i + 2)) "$voters" "$cluster" 3 ||
      fail_start "Apache Kafka node $i could not be started" "${dirs[@]}"
  done
  out=$(ready "$(brokers3)" "${wait_s}s" 3) ||
    fail_start "the Apache Kafka cluster on $(brokers3) was not ready within ${wait_s}s" "${dirs[@]}"
  hold "$cluster3"
  say "ready: $out"
}

# down_one gives up the caller's lease on the nodes under state folder $1
# (for the cluster, its node folders follow) and stops them when no lease
# is left.
down_one() {
  local state=$1 left
  shift
  [ -d "$state/holders" ] || return 0
  left=$(release "$state")
  if [ -n "$left" ]; then
    say "leaving Apache Kafka (${state##*/}) running: still used by $left"
    return
  fi
  stop_nodes "$@"
  rm -rf "$state"
}

down() {
  local dirs
  (
    lock_service "kafka-$port"
    down_one "$run_dir/kafka-$port" "$run_dir/kafka-$port"
  )
  mapfile -t dirs < <(nodes3)
  (
    lock_service "kafka3-$port3"
    down_one "$cluster3" "${dirs[@]}"
  )
}

# halt_node stops the broker of state folder $1 with signal $2 (TERM: a
# clean shutdown, waited for up to 30 s before KILL; KILL: a crash) and
# keeps its data, configuration and leases, so that restart_node brings the
# same broker back.
halt_node() {
  local dir=$1 sig=$2 pid
  [ -f "$dir/server.properties" ] || die "no broker scripts/kafka.sh started in $dir"
  if ! ours_running "$dir"; then
    say "the broker of $dir is not running"
    return
  fi
  pid=$(cat "$dir/pid")
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
      say "stopped the broker of $dir (pid $pid, SIG$sig); its data is kept"
      return
    fi
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed the broker of $dir (pid $pid): SIG$sig did not stop it within 30s; its data is kept"
}

# restart_node starts the broker of state folder $1 again on its kept data
# and waits until $2 (comma-separated brokers) answers listing $3 brokers.
restart_node() {
  local dir=$1 out
  [ -f "$dir/server.properties" ] || die "no broker scripts/kafka.sh started in $dir"
  if ours_running "$dir"; then
    say "the broker of $dir is already running"
    return
  fi
  fetch
  say "restarting the broker of $dir"
  launch_node "$dir"
  out=$(ready "$2" "${wait_s}s" "$3") || {
    say "the broker of $dir was not ready within ${wait_s}s after a restart; last lines of $dir/broker.log:"
    tail -n 30 "$dir/broker.log" >&2 2>/dev/null || true
    exit 1
  }
  say "ready: $out"
}

# node3 prints the state folder of node $1 (1, 2 or 3) of the cluster.
node3() {
  case "${1:-}" in
    1 | 2 | 3) echo "$cluster3/node-$1" ;;
    *) die "name the node: 1, 2 or 3" ;;
  esac
}

print_env() {
  echo "KAFKA_BROKERS=$1"
  if [ -f "$2/version" ]; then echo "KAFKA_VERSION=$(cat "$2/version")"; fi
}

# sasl_fingerprint identifies what a SASL_SSL broker was started with
# (certificate, key, user and password), so that a running one is reused
# only by callers that would have started the same.
sasl_fingerprint() {
  { cat "$KAFKA_SSL_CERT" "$KAFKA_SSL_KEY"; printf '%s\n%s\n' "$KAFKA_SASL_USERNAME" "$KAFKA_SASL_PASSWORD"; } | sha256sum | cut -d' ' -f1
}

up_sasl() {
  local state="$run_dir/kafka-sasl-$sasl_port" p=$sasl_port out v
  for v in KAFKA_SSL_CERT KAFKA_SSL_KEY KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD; do
    [ -n "${!v:-}" ] || die "up-sasl needs $v"
  done
  [ -r "$KAFKA_SSL_CERT" ] || die "KAFKA_SSL_CERT: cannot read $KAFKA_SSL_CERT"
  [ -r "$KAFKA_SSL_KEY" ] || die "KAFKA_SSL_KEY: cannot read $KAFKA_SSL_KEY"
  # the user and password go into a JAAS line and a storage tool argument
  case "$KAFKA_SASL_USERNAME$KAFKA_SASL_PASSWORD" in
    *[!A-Za-z0-9._-]*) die "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: only letters, digits, '.', '_' and '-' here" ;;
  esac
  lock_service "kafka-sasl-$p"
  if listening "$p"; then
    if ours_running "$state" && [ "$(cat "$state/fingerprint" 2>/dev/null)" = "$(sasl_fingerprint)" ]; then
      out=$(ready "127.0.0.1:$((p + 1))" 15s) || die "the SASL_SSL broker on 127.0.0.1:$p does not answer"
      hold "$state"
      say "using the SASL_SSL broker scripts/kafka.sh started on 127.0.0.1:$p: $out"
      return
    fi
    die "127.0.0.1:$p is taken by something else than a SASL_SSL broker with these credentials (set KAFKA_SASL_PORT to use another port)"
  fi
  stop_nodes "$state"
  for v in $((p + 1)) $((p + 2)); do
    listening "$v" && die "port 127.0.0.1:$v, which the SASL_SSL broker needs, is taken (set KAFKA_SASL_PORT to use other ports)"
  done
  fetch
  say "starting Apache Kafka $version with SASL_SSL on 127.0.0.1:$p (log $state/broker.log)"
  rm -rf "$state"
  mkdir -p "$state/data"
  chmod 700 "$state"
  # Kafka's PEM key store: the private key (PKCS#8, unencrypted) and the
  # certificate chain in one file
  cat "$KAFKA_SSL_KEY" "$KAFKA_SSL_CERT" >"$state/keystore.pem"
  sasl_fingerprint >"$state/fingerprint"
  local user=$KAFKA_SASL_USERNAME pass=$KAFKA_SASL_PASSWORD
  {
    echo "# written by scripts/kafka.sh up-sasl"
    echo "listeners=SASL_SSL://127.0.0.1:$p,PLAINTEXT://127.0.0.1:$((p + 1)),CONTROLLER://127.0.0.1:$((p + 2))"
    echo "advertised.listeners=SASL_SSL://127.0.0.1:$p,PLAINTEXT://127.0.0.1:$((p + 1))"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    echo "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$user=\"$pass\";"
    echo "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$state/keystore.pem"
    echo "ssl.client.auth=none"
    common_props "$state" 1 "1@127.0.0.1:$((p + 2))" 1
  } >"$state/server.properties"
  chmod 600 "$state/server.properties" "$state/keystore.pem"
  format_node "$state" 1 "$(cluster_id)" \
    --add-scram "SCRAM-SHA-256=[name=$user,password=$pass]" \
    --add-scram "SCRAM-SHA-512=[name=$user,password=$pass]" ||
    fail_start "Apache Kafka with SASL_SSL could not be started" "$state"
  # readiness over the PLAINTEXT listener; the caller checks SASL_SSL itself
  out=$(ready "127.0.0.1:$((p + 1))" "${wait_s}s") ||
    fail_start "Apache Kafka on 127.0.0.1:$p was not ready within ${wait_s}s (log $state/broker.log)" "$state"
  hold "$state"
  say "ready: SASL_SSL on 127.0.0.1:$p, $out"
}

down_sasl() {
  local state="$run_dir/kafka-sasl-$sasl_port"
  lock_service "kafka-sasl-$sasl_port"
  down_one "$state" "$state"
}

case "${1:-}" in
  up) up ;;
  up3) up3 ;;
  down) down ;;
  fetch) fetch ;;
  env) print_env "127.0.0.1:$port" "$run_dir/kafka-$port" ;;
  env3) print_env "$(brokers3)" "$(nodes3 | head -n 1)" ;;
  up-sasl) up_sasl ;;
  down-sasl) down_sasl ;;
  env-sasl) print_env "127.0.0.1:$sasl_port" "$run_dir/kafka-sasl-$sasl_port" ;;
  stop | kill)
    lock_service "kafka-$port"
    sig=TERM
    [ "$1" = kill ] && sig=KILL
    halt_node "$run_dir/kafka-$port" "$sig"
    ;;
  start)
    lock_service "kafka-$port"
    restart_node "$run_dir/kafka-$port" "127.0.0.1:$port" 1
    ;;
  stop3 | kill3)
    dir=$(node3 "${2:-}") || exit 2
    lock_service "kafka3-$port3"
    sig=TERM
    [ "$1" = kill3 ] && sig=KILL
    halt_node "$dir" "$sig"
    ;;
  start3)
    dir=$(node3 "${2:-}") || exit 2
    lock_service "kafka3-$port3"
    restart_node "$dir" "$(brokers3)" 3
    ;;
  *) echo "usage: $0 up|up3|down|env|env3|fetch|stop|kill|start|stop3 N|kill3 N|start3 N|up-sasl|down-sasl|env-sasl" >&2; exit 2 ;;
esac
