#!/usr/bin/env bash
# Broadcast to one topic (issue 13): TABS_TOTAL tabs all listening to one topic, Nchan channel or
# Socket.IO room, on this machine, in one run. One message, then RATES messages per second for
# RATE_SECS each: each message's time until the last tab has it, server CPU per delivery, and
# every tab must get every message exactly once.
#
#   bench/broadcast.sh            # 15,000 tabs: about 20 minutes on a quiet machine (Nchan and
#                                 # Socket.IO cannot keep 100/s: their last phase takes 2 and 5 min)
#   SMOKE=1 bench/broadcast.sh    # 300 tabs, 2 s per rate: two or three minutes
#
# Installs what is missing (as bench/compare.sh does), builds Herald and herald-bench in release,
# then for each server in turn starts it on its own 127.0.0.1 port, runs herald-bench against it,
# and stops it by PID. Servers (SERVERS):
#   herald-memory         herald serve --memory; SSE tabs open /v1/stream?topics=TOPIC with a
#                         token whose `topics` claim names TOPIC; publishes are ephemeral topic
#                         events (POST /v1/notify, "to": {"topic": TOPIC}, "durable": false)
#   herald-sqlite         the same with the SQLite store (topic events are ephemeral either way:
#                         the store is not on their path)
#   nchan                 nginx + Nchan (bench/nchan/nginx.conf), every tab on the one channel
#                         /sub/TOPIC, publishes to /pub/TOPIC
#   socketio              Node + Socket.IO (bench/socketio/server.js), every tab in the one room
#                         TOPIC (handshake `room=`), publishes to /emit/TOPIC
#   floor                 herald-floor (bench/floor), every tab on the one channel /sub/TOPIC as
#                         with Nchan: a publish writes to the 15,000 sockets one after the other,
#                         from the publisher's task, nothing else. The least a broadcast costs
#                         here: its time to the last tab bounds what any server can reach
#   herald-memory-plain   memory only: the same tabs without any topic (their tokens without the
#   herald-sqlite-plain   claim), idle, then one publish to one user; next to herald-memory and
#                         herald-sqlite they give what listening to one topic costs per tab
# Each run: connect USERS x TABS tabs (5,000 x 3 = 15,000, spread over worker processes that hold
# at most ~19,500 files each), IDLE_SECS idle (memory per tab), then the phases: a single
# publish, then steady:RATE:RATE_SECS for each of RATES, from PUBLISHERS publishers.
#
# Everything started here is stopped by PID on exit. Results: OUT (default
# target/bench/broadcast-<date>/): one log and one text report per run, results.jsonl (one JSON
# line per run), machine.txt, and the tables in tables.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source bench/lib.sh
# shellcheck source=bench/servers.sh
source bench/servers.sh

if [[ "${SMOKE:-0}" == 1 ]]; then
    : "${USERS:=100}" "${TABS:=3}" "${RATE_SECS:=2}" "${IDLE_SECS:=0.5}" "${SETTLE_SECS:=0.2}"
    : "${QUIET_WAIT:=0}" "${RETRIES:=0}"
fi
USERS="${USERS:-5000}"             # users; each has TABS tabs, all in one session
TABS="${TABS:-3}"
TOPIC="${TOPIC:-bench_room}"       # the topic, channel and room ([A-Za-z0-9_]: Nchan's \w+)
RATES="${RATES-1 10 100}"          # messages per second of the steady phases, in order ("": none)
RATE_SECS="${RATE_SECS:-10}"       # duration of each of them
PUBLISHERS="${PUBLISHERS:-4}"      # concurrent publishers on a shared schedule
IDLE_SECS="${IDLE_SECS:-5}"        # settle time before measuring memory
DRAIN_MAX_SECS="${DRAIN_MAX_SECS:-120}" # longest wait for a phase's last deliveries
SERVERS="${SERVERS:-floor herald-memory-plain herald-memory herald-sqlite-plain herald-sqlite nchan socketio}"
SETTLE_SECS="${SETTLE_SECS:-2}"    # pause after stopping a server, before starting the next
RETRIES="${RETRIES:-2}"            # a run disturbed by other programs is repeated this many times
DISTURBED_CPU_SECS="${DISTURBED_CPU_SECS:-2}" # disturbed: others used more CPU (s) in a phase
DISTURBED_STEAL_SECS="${DISTURBED_STEAL_SECS:-0.5}" # disturbed: the hypervisor stole more (s) in a phase
QUIET_WAIT="${QUIET_WAIT:-300}"    # before each run, wait up to this many seconds for a quiet machine
QUIET_BUSY_PCT="${QUIET_BUSY_PCT:-10}" # quiet: at most this share of the CPU busy over 2 s
HERALD_BIN="${HERALD_BIN:-}"       # a herald binary to measure; default: build target/release/herald
HERALD_REV="${HERALD_REV:-}"       # what to call that binary's version in machine.txt
HERALD_PORT="${HERALD_PORT:-7320}"
NCHAN_PORT="${NCHAN_PORT:-7321}"
SOCKETIO_PORT="${SOCKETIO_PORT:-7322}"
FLOOR_PORT="${FLOOR_PORT:-7323}"
OUT="${OUT:-$ROOT/target/bench/broadcast-$(date +%Y%m%d-%H%M%S)}"

mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
WORK="$(mktemp -d /tmp/herald-broadcast.XXXXXX)"
cleanup() {
    stop_started
    rm -rf "$WORK"
}
trap cleanup EXIT

machine_info() {
    {
        machine_basics
        server_versions
        echo "scale: USERS=$USERS TABS=$TABS TOPIC=$TOPIC RATES='$RATES' RATE_SECS=$RATE_SECS PUBLISHERS=$PUBLISHERS IDLE_SECS=$IDLE_SECS"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$OUT/machine.txt" >&2
}

tabs=(--users "$USERS" --clients-per-user "$TABS" --idle-secs "$IDLE_SECS")
broadcast=("${tabs[@]}" --topic "$TOPIC" --publishers "$PUBLISHERS" --drain-max-secs "$DRAIN_MAX_SECS"
    --phase burst:1)
for rate in $RATES; do broadcast+=(--phase "steady:$rate:$RATE_SECS"); done
# The memory baseline: the same tabs listening to nothing; one publish, as a run needs a phase.
plain=("${tabs[@]}" --publishers 1 --phase burst:1)

install_missing
if [[ -n "$HERALD_BIN" ]]; then
    log "building herald-bench and herald-floor (release); measuring $HERALD_BIN"
    cargo build --release -q -p herald-bench -p herald-floor
else
    log "building herald, herald-bench and herald-floor (release)"
    cargo build --release -q -p herald -p herald-bench -p herald-floor
    HERALD_BIN="$ROOT/target/release/herald"
fi
# One process here may hold at most 20,000 files; the servers inherit this limit.
ulimit -n 19500
export HERALD_SECRET="bench-secret-0123456789abcdef-$RANDOM$RANDOM" HERALD_API_KEY="bench-key-$RANDOM$RANDOM"
machine_info

herald_url="http://127.0.0.1:$HERALD_PORT"
for server in $SERVERS; do
    case "$server" in
    herald-memory)
        measure "$server" 'start_herald herald-memory --memory' --kind herald-sse --url "$herald_url" \
            "${broadcast[@]}"
        ;;
    herald-sqlite)
        measure "$server" 'start_herald herald-sqlite --data-dir "$WORK/herald-sqlite-$attempt"' \
            --kind herald-sse --url "$herald_url" "${broadcast[@]}"
        ;;
    herald-memory-plain)
        measure "$server" 'start_herald herald-memory-plain --memory' --kind herald-sse --url "$herald_url" \
            "${plain[@]}"
        ;;
    herald-sqlite-plain)
        measure "$server" 'start_herald herald-sqlite-plain --data-dir "$WORK/herald-sqlite-plain-$attempt"' \
            --kind herald-sse --url "$herald_url" "${plain[@]}"
        ;;
    floor)
        measure floor start_floor --kind sse-url --url "http://127.0.0.1:$FLOOR_PORT" "${broadcast[@]}"
        ;;
    nchan)
        measure nchan start_nchan --kind sse-url --url "http://127.0.0.1:$NCHAN_PORT" "${broadcast[@]}"
        cat "$WORK/nginx/logs/error.log" >>"$OUT/nchan.server.log" 2>/dev/null || true
        ;;
    socketio)
        measure socketio start_socketio --kind socketio --url "http://127.0.0.1:$SOCKETIO_PORT" "${broadcast[@]}"
        ;;
    *)
        log "unknown server $server (known: floor herald-memory herald-sqlite herald-memory-plain herald-sqlite-plain nchan socketio)"
        exit 1
        ;;
    esac
done

has() { [[ " $SERVERS " == *" $1 "* ]]; }
columns=""
ratios=()
for server in floor herald-memory herald-sqlite nchan socketio; do
    has "$server" && columns="$columns${columns:+,}$server"
done
for h in herald-memory herald-sqlite; do
    for o in floor nchan socketio; do
        if has "$h" && has "$o"; then ratios+=(--ratio "$h/$o"); fi
    done
done
memory_columns=""
differences=()
for h in herald-memory herald-sqlite; do
    if has "$h-plain"; then memory_columns="$memory_columns${memory_columns:+,}$h-plain"; fi
    if has "$h"; then memory_columns="$memory_columns${memory_columns:+,}$h"; fi
    if has "$h-plain" && has "$h"; then differences+=(--difference "$h/$h-plain"); fi
done
{
    echo
    if [[ -n "$columns" ]]; then
        "$ROOT/target/release/herald-bench" compare "$RESULTS" --columns "$columns" "${ratios[@]}" \
            --title "Broadcast: $USERS users × $TABS tabs = $((USERS * TABS)) tabs on one topic ($TOPIC); one message, then $RATES per second for $RATE_SECS s each, $PUBLISHERS publishers"
        echo
    fi
    if [[ -n "$memory_columns" ]]; then
        "$ROOT/target/release/herald-bench" compare "$RESULTS" --columns "$memory_columns" \
            "${differences[@]}" --only "clients connected,idle:" \
            --title "Idle memory per tab: listening to one topic (herald-memory, herald-sqlite) and to none (…-plain); the difference is one listen's cost per tab"
        echo
    fi
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/tables.txt"
log "results in $OUT"
