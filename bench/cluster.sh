#!/usr/bin/env bash
# Herald on several nodes, next to one node and next to a Socket.IO cluster, on this machine.
#
#   bench/cluster.sh                 # the whole comparison, about 12 minutes on a quiet machine
#   SMOKE=1 bench/cluster.sh         # 300 clients, 2 s phases: about 2 minutes
#   SERVERS="herald-sqlite socketio-redis-3" bench/cluster.sh    # some of them
#
# Servers (each run on fresh processes, and for PostgreSQL a fresh database):
#   herald-sqlite      herald serve, SQLite store in a fresh data dir (one node, durable)
#   herald-pg-nats-1   one node: herald serve --store postgres://… --bus nats://…
#   herald-pg-nats-3   three such nodes on one database and one NATS server
#   herald-pg-redis-3  three nodes on one database and one Redis server (--bus redis://…)
#   socketio-redis-3   three Node processes with @socket.io/redis-adapter on one Redis server
#   socketio-1         one Node process, no adapter (as in bench/compare.sh)
# The brokers are private: a nats-server and a redis-server started here on their own ports for
# each run and stopped after it (the machine's own, shared with tests, would count their traffic
# and CPU). PostgreSQL is the machine's (PG_ADMIN_URL), with a database created for each run
# and dropped after it; each Herald cluster run gets its own --cluster name.
#
# herald-bench spreads the clients and the publishers over the nodes, round-robin: client i and
# publisher i go to node i mod n. With 3 tabs per user and 3 nodes every user has one tab on
# each node, so every publish must cross the bus to both other nodes: the bus's worst case.
# Socket.IO needs no sticky sessions here: its clients use the WebSocket transport only, so a
# client's session is one connection to one node.
#
# Workloads, as in bench/compare.sh: USERS × TABS SSE clients (Socket.IO: WebSocket) idle for
# IDLE_SECS, then STEADY_RATE publishes/s for STEADY_SECS, then PUBLISHERS publishers at full
# speed for MAX_SECS. Every acknowledged publish must reach each client of its user exactly
# once. What is measured as the server, all its processes added up: the Herald nodes, the
# broker, and PostgreSQL's share (its postmaster, its background processes and the backends of
# the run's database, not those of other databases: see herald-bench's procstat); Socket.IO's
# nodes and redis-server. The broker's traffic (NATS: /varz of its monitoring port; Redis: INFO)
# is read before and after each phase.
#
# Everything started here is stopped by PID on exit, every database created here is dropped,
# each herald-bench run is bounded by RUN_TIMEOUT, and everything listens on and talks to
# 127.0.0.1 only. Results: OUT (default target/bench/cluster-<date>/): one log and report per
# run, results.jsonl, machine.txt and tables.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source bench/lib.sh

if [[ "${SMOKE:-0}" == 1 ]]; then
    : "${USERS:=100}" "${TABS:=3}" "${PUBLISHERS:=8}" "${MAX_SECS:=2}" "${STEADY_RATE:=200}"
    : "${STEADY_SECS:=2}" "${IDLE_SECS:=0.5}" "${SETTLE_SECS:=0.2}" "${QUIET_WAIT:=0}" "${RETRIES:=0}"
fi
USERS="${USERS:-5000}"             # users; each has TABS clients, all in one session
TABS="${TABS:-3}"
PUBLISHERS="${PUBLISHERS:-32}"     # concurrent publishers, one kept-alive connection each
MAX_SECS="${MAX_SECS:-20}"         # full-speed phase
STEADY_RATE="${STEADY_RATE:-1000}" # steady phase: publishes per second
STEADY_SECS="${STEADY_SECS:-10}"
IDLE_SECS="${IDLE_SECS:-5}"
SERVERS="${SERVERS:-herald-sqlite herald-pg-nats-1 herald-pg-nats-3 herald-pg-redis-3 socketio-redis-3 socketio-1}"
SETTLE_SECS="${SETTLE_SECS:-2}"    # pause after stopping a server, before starting the next
RETRIES="${RETRIES:-2}"            # a run disturbed by other programs is repeated this many times
DISTURBED_CPU_SECS="${DISTURBED_CPU_SECS:-2}"
DISTURBED_STEAL_SECS="${DISTURBED_STEAL_SECS:-0.5}"
QUIET_WAIT="${QUIET_WAIT:-300}"
QUIET_BUSY_PCT="${QUIET_BUSY_PCT:-10}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"  # seconds one herald-bench run may take in all
HERALD_BIN="${HERALD_BIN:-}"       # a herald binary to measure; default: build target/release/herald
# Worker threads of each Herald node (tokio's TOKIO_WORKER_THREADS, given to the nodes only, not
# to herald-bench); default: tokio's, one per core. Several nodes on one machine each start one
# per core: NODE_WORKERS=1 gives three nodes on 2 cores 3 threads rather than 6.
NODE_WORKERS="${NODE_WORKERS:-}"
PG_SETTINGS="${PG_SETTINGS:-}"    # PostgreSQL settings for the runs' databases (see create_database)
HERALD_REV="${HERALD_REV:-}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
HERALD_PORT="${HERALD_PORT:-7330}"     # node i listens on HERALD_PORT + i
SOCKETIO_PORT="${SOCKETIO_PORT:-7340}" # node i listens on SOCKETIO_PORT + i
NATS_PORT="${NATS_PORT:-7350}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-7351}"
REDIS_PORT="${REDIS_PORT:-7352}"
OUT="${OUT:-$ROOT/target/bench/cluster-$(date +%Y%m%d-%H%M%S)}"

# Only this machine, and a URL whose last part is the database (the runs' databases replace it).
if [[ ! "$PG_ADMIN_URL" =~ ^postgres(ql)?://[^@/]+@127\.0\.0\.1(:[0-9]+)?/[A-Za-z0-9_]+$ ]]; then
    log "PG_ADMIN_URL must look like postgres://USER@127.0.0.1:PORT/DATABASE, not $PG_ADMIN_URL"
    exit 1
fi
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
WORK="$(mktemp -d /tmp/herald-cluster.XXXXXX)"
DATABASES=()   # created here, dropped on exit if still there

psql_admin() { psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -qtA "$@"; }

drop_database() {
    local db="$1" kept=() d
    psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || log "could not drop database $db"
    for d in "${DATABASES[@]}"; do [[ "$d" == "$db" ]] || kept+=("$d"); done
    DATABASES=("${kept[@]}")
}

cleanup() {
    local db
    stop_started
    for db in "${DATABASES[@]}"; do drop_database "$db"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

install_missing() {
    local missing=()
    command -v nats-server >/dev/null || missing+=(nats-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [[ ! -f bench/socketio/node_modules/@socket.io/redis-adapter/package.json ]]; then
        log "installing socket.io and its Redis adapter (npm ci)"
        (cd bench/socketio && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

machine_info() {
    {
        machine_basics
        echo "postgresql: $(psql_admin -c 'SHOW server_version' 2>/dev/null || echo '?') ($PG_ADMIN_URL), synchronous_commit=$(psql_admin -c 'SHOW synchronous_commit' 2>/dev/null || echo '?'), fsync=$(psql_admin -c 'SHOW fsync' 2>/dev/null || echo '?')"
        echo "nats-server: $(nats-server --version 2>&1)"
        echo "redis-server: $(redis-server --version | sed 's/^Redis server //')"
        echo "node: $(node --version)"
        echo "socket.io: $(node -p "require('./bench/socketio/node_modules/socket.io/package.json').version"), @socket.io/redis-adapter $(node -p "require('./bench/socketio/node_modules/@socket.io/redis-adapter/package.json').version"), ioredis $(node -p "require('./bench/socketio/node_modules/ioredis/package.json').version")"
        echo "scale: USERS=$USERS TABS=$TABS PUBLISHERS=$PUBLISHERS MAX_SECS=$MAX_SECS STEADY_RATE=$STEADY_RATE STEADY_SECS=$STEADY_SECS IDLE_SECS=$IDLE_SECS NODE_WORKERS=${NODE_WORKERS:-cores} PG_SETTINGS=${PG_SETTINGS:-none}"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$OUT/machine.txt" >&2
}

# What one run measures, set by the start functions: the base URLs of its nodes, the pids
# measured as the server (nodes and broker), herald-bench's extra arguments.
URLS=()
MEASURED=()
EXTRA=()
DATABASE=""

# start_broker nats|redis LABEL: a private broker; sets BUS_URL, adds the broker to MEASURED,
# and sets COUNTERS to the command that reads its traffic.
start_broker() {
    local kind="$1" label="$2" pid
    case "$kind" in
    nats)
        port_free "$NATS_PORT" NATS
        port_free "$NATS_MONITOR_PORT" NATS_MONITOR
        # No JetStream: core publish/subscribe is all the cluster bus uses.
        nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" >"$OUT/$label.nats.log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        wait_port "$NATS_PORT" "$pid"
        wait_port "$NATS_MONITOR_PORT" "$pid"
        BUS_URL="nats://127.0.0.1:$NATS_PORT"
        # Messages and payload bytes into the server (published by the nodes) and out of it
        # (delivered to the nodes' subscriptions).
        COUNTERS="curl -sf http://127.0.0.1:$NATS_MONITOR_PORT/varz | jq -r '\"bus_in_msgs \(.in_msgs)\nbus_in_bytes \(.in_bytes)\nbus_out_msgs \(.out_msgs)\nbus_out_bytes \(.out_bytes)\"'"
        ;;
    redis)
        port_free "$REDIS_PORT" REDIS
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
            --protected-mode yes >"$OUT/$label.redis.log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        wait_port "$REDIS_PORT" "$pid"
        BUS_URL="redis://127.0.0.1:$REDIS_PORT"
        # PUBLISH (and SPUBLISH) calls, and all bytes read and written by the server (protocol
        # included, and the few KB of these INFO answers); Redis 7.0 does not count the messages
        # it pushes to subscribers.
        COUNTERS="redis-cli -h 127.0.0.1 -p $REDIS_PORT info all | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_s?publish:/ {m += \$3} /^total_net_input_bytes:/ {i = \$2} /^total_net_output_bytes:/ {o = \$2} END {print \"bus_in_msgs\", m + 0; print \"bus_in_bytes\", i; print \"bus_out_bytes\", o}'"
        ;;
    esac
    MEASURED+=("$pid")
}

# create_database LABEL: a fresh database for this run; sets DATABASE and adds PostgreSQL's share
# of the work to what is measured.
create_database() {
    local label="$1" data postmaster
    DATABASE="herald_bench_$$_${label//-/_}_$RANDOM"
    psql_admin -c "CREATE DATABASE $DATABASE" >/dev/null
    DATABASES+=("$DATABASE")
    # PG_SETTINGS="name=value …": settings for the run's database only (ALTER DATABASE … SET,
    # as the admin user: the nodes' sessions get them), e.g. commit_delay=100 commit_siblings=2.
    local setting
    for setting in $PG_SETTINGS; do
        psql_admin -c "ALTER DATABASE $DATABASE SET ${setting%%=*} = '${setting#*=}'" >/dev/null
    done
    data="$(psql_admin -c 'SHOW data_directory')"
    postmaster="$(head -1 "$data/postmaster.pid")"
    EXTRA+=(--postgres-pid "$postmaster" --postgres-db "$DATABASE")
}

# start_herald_nodes LABEL N ARGS...: N herald serve processes, node i on HERALD_PORT + i, each
# with ARGS (and --node-id n<i> when N > 1 or ARGS has a --bus). One after the other: the first
# creates the schema.
# node_started PORT PID: waits until the node started as PID answers on PORT; it is then one of
# the URLs, measured, and stopped at the end.
node_started() {
    local port="$1" pid="$2"
    STARTED+=("$pid")
    wait_port "$port" "$pid"
    URLS+=("http://127.0.0.1:$port")
    MEASURED+=("$pid")
}

start_herald_nodes() {
    local label="$1" n="$2" i port
    shift 2
    for ((i = 0; i < n; i++)); do
        port=$((HERALD_PORT + i))
        port_free "$port" HERALD
        # The clients come from a few loopback addresses, thousands each: no per-address caps.
        # Each node's admin port on a free port (the default, 7301, is one per host).
        HERALD_LISTEN="127.0.0.1:$port" HERALD_ADMIN_LISTEN=127.0.0.1:0 HERALD_IP_CONNECTIONS_MAX=0 HERALD_IP_REQUESTS_PER_SEC=0 \
            env ${NODE_WORKERS:+TOKIO_WORKER_THREADS="$NODE_WORKERS"} "$HERALD_BIN" serve "$@" ${CLUSTER:+--node-id "n$i" --cluster "$CLUSTER"} \
            >"$OUT/$label.node$i.log" 2>&1 &
        node_started "$port" $!
    done
}

start_socketio_nodes() {
    local label="$1" n="$2" redis="$3" i port
    for ((i = 0; i < n; i++)); do
        port=$((SOCKETIO_PORT + i))
        port_free "$port" SOCKETIO
        PORT="$port" REDIS_URL="$redis" NODE_ENV=production node bench/socketio/server.js \
            >"$OUT/$label.node$i.log" 2>&1 &
        node_started "$port" $!
    done
}

# start SERVER ATTEMPT: everything one run of SERVER needs; sets KIND, URLS, MEASURED, EXTRA.
start() {
    local server="$1" attempt="$2"
    URLS=() MEASURED=() EXTRA=() DATABASE="" CLUSTER="" BUS_URL="" COUNTERS=""
    KIND=herald-sse
    case "$server" in
    herald-sqlite)
        start_herald_nodes "$server" 1 --data-dir "$WORK/$server-$attempt"
        ;;
    herald-pg-nats-* | herald-pg-redis-*)
        local broker="${server#herald-pg-}" n="${server##*-}"
        broker="${broker%-*}"
        create_database "$server"
        start_broker "$broker" "$server"
        CLUSTER="b$$-${server#herald-}-$attempt"  # at most 32 bytes
        start_herald_nodes "$server" "$n" --store "${PG_ADMIN_URL%/*}/$DATABASE" --bus "$BUS_URL"
        # Each node's own count of its bus traffic (GET /v1/cluster), per node and summed.
        COUNTERS="$COUNTERS; $ROOT/bench/tools/cluster_counters.sh ${URLS[*]}"
        ;;
    socketio-redis-*)
        KIND=socketio
        start_broker redis "$server"
        start_socketio_nodes "$server" "${server##*-}" "$BUS_URL"
        ;;
    socketio-1)
        KIND=socketio
        start_socketio_nodes "$server" 1 ""
        ;;
    *)
        log "unknown server $server (known: herald-sqlite herald-pg-nats-N herald-pg-redis-N socketio-redis-N socketio-1)"
        exit 1
        ;;
    esac
    [[ -z "$COUNTERS" ]] || EXTRA+=(--counters-cmd "$COUNTERS")
    log "$server: measuring pids ${MEASURED[*]}${DATABASE:+ and the share of PostgreSQL serving database $DATABASE}"
}

# Stops what start started (the nodes before the broker) and drops the run's database.
stop() {
    stop_started
    [[ -z "$DATABASE" ]] || drop_database "$DATABASE"
    # Let the sockets of the closed connections go before the next server starts.
    sleep "$SETTLE_SECS"
}

# measure SERVER: one run, repeated on fresh processes (at most RETRIES times) when other
# programs or the hypervisor disturbed it (herald-bench exits 3); every attempt stays in
# results.jsonl and the tables show the last.
measure() {
    local server="$1" attempt rc pid urls pids=()
    for ((attempt = 0; ; attempt++)); do
        start "$server" "$attempt"
        pids=()
        for pid in "${MEASURED[@]}"; do pids+=(--server-pid "$pid"); done
        urls="$(IFS=,; echo "${URLS[*]}")"
        wait_quiet
        log "$server: herald-bench run --kind $KIND --url $urls"
        rc=0
        timeout --kill-after=10 "$RUN_TIMEOUT" "$ROOT/target/release/herald-bench" run --label "$server" \
            --kind "$KIND" --url "$urls" "${pids[@]}" "${EXTRA[@]}" --json-out "$RESULTS" --no-progress \
            --disturbed-cpu-secs "$DISTURBED_CPU_SECS" --disturbed-steal-secs "$DISTURBED_STEAL_SECS" \
            --users "$USERS" --clients-per-user "$TABS" --publishers "$PUBLISHERS" --idle-secs "$IDLE_SECS" \
            --phase "steady:$STEADY_RATE:$STEADY_SECS" --phase "max:$MAX_SECS" |
            tee "$OUT/$server.txt" | grep -v '^{' >&2 || rc=${PIPESTATUS[0]}
        stop
        retry_if_disturbed "$server" "$rc" "$attempt" || return 0
    done
}

install_missing
if [[ " $SERVERS " == *" herald-pg-"* ]] && ! psql_admin -c 'SELECT 1' >/dev/null; then
    log "no PostgreSQL at $PG_ADMIN_URL (set PG_ADMIN_URL, or leave the herald-pg-* servers out of SERVERS)"
    exit 1
fi
if [[ -n "$HERALD_BIN" ]]; then
    log "building herald-bench (release); measuring $HERALD_BIN"
    cargo build --release -q -p herald-bench
else
    log "building herald and herald-bench (release)"
    cargo build --release -q -p herald -p herald-bench
    HERALD_BIN="$ROOT/target/release/herald"
fi
if [[ " $SERVERS " == *" herald-pg-"* ]] && ! "$HERALD_BIN" serve --help | grep -q -- '--bus'; then
    log "$HERALD_BIN has no --bus (the cluster is not in this build); leave the herald-pg-* servers out of SERVERS"
    exit 1
fi
# One process here may hold at most 20,000 files; the servers inherit this limit.
ulimit -n 19500
export HERALD_SECRET="bench-secret-0123456789abcdef-$RANDOM$RANDOM" HERALD_API_KEY="bench-key-$RANDOM$RANDOM"
machine_info

for server in $SERVERS; do
    measure "$server"
done

columns=""
ratios=()
for server in $SERVERS; do columns="$columns${columns:+,}$server"; done
for h in herald-pg-nats-3 herald-pg-redis-3 herald-pg-nats-1; do
    for o in herald-sqlite socketio-redis-3; do
        if [[ " $SERVERS " == *" $h "* && " $SERVERS " == *" $o "* ]]; then
            ratios+=(--ratio "$h/$o")
        fi
    done
done
{
    echo
    "$ROOT/target/release/herald-bench" compare "$RESULTS" --columns "$columns" "${ratios[@]}" \
        --title "$USERS users × $TABS clients over the nodes, steady $STEADY_RATE/s for $STEADY_SECS s, then $PUBLISHERS publishers at full speed for $MAX_SECS s"
    echo
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/tables.txt"
log "results in $OUT"
