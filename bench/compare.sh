#!/usr/bin/env bash
# Herald side by side with Nchan, Socket.IO and a floor, on this machine, in one run.
#
#   bench/compare.sh             # the full comparison (about 16 minutes)
#   ROUNDS=3 bench/compare.sh    # the server list three times, interleaved; tables of medians
#   SMOKE=1 bench/compare.sh     # the same at a small scale (300 clients, 2 s): about a minute
#
# Installs what is missing (Debian's nginx and libnginx-mod-nchan, socket.io from npm), builds
# Herald, herald-bench and herald-floor in release, measures what one fdatasync costs in the
# file system of Herald's data dirs (`herald-bench fsync-probe`: 4 KiB appends and overwrites,
# FSYNC_COUNT of each, p50 and p99), then for each server in turn: starts it on its own
# 127.0.0.1 port, runs the same workloads with herald-bench, stops it. ROUNDS (default 1) runs
# the whole list that many times, one round after another (floor, sqlite, memory, nchan,
# socketio, floor, sqlite, …), so that a slow spell of the machine weighs on every server alike;
# the tables then give each figure's median over the rounds and [lowest–highest]. Servers:
#   floor          herald-floor (bench/floor): a minimal SSE fan-out on Nchan's URLs that stores
#                  nothing, one write per delivery: what the kernel's TCP path and HTTP parsing
#                  cost here. The tables give each server's throughput and CPU per delivery as
#                  a multiple of its figures (--floor)
#   floor-durable  herald-floor --log: the same, but each publish is first appended to a log
#                  file and fdatasynced (group commit, one thread): the floor of a durable
#                  server here (not in the default list)
#   herald-sqlite  herald serve, SQLite store in a fresh temporary data dir (durable)
#   herald-memory  herald serve --memory
#   herald-sqlite-b, herald-memory-b   the same with HERALD_BIN_B, another herald binary: an A/B
#                  of two builds in one interleaved run (HERALD_REV_B names it in machine.txt)
#   nchan          nginx + Nchan, 2 workers, a channel per user, 10 messages kept per channel
#   socketio       Node + Socket.IO 4, a room per user, nothing kept
# Workloads, each on a freshly started server:
#   (a) idle: USERS × TABS SSE (Socket.IO: WebSocket) clients → memory per client, connect rate
#   (b) PUBLISHERS publishers as fast as possible for MAX_SECS → throughput, latency, CPU
#   (c) STEADY_RATE publishes/s for STEADY_SECS → latency
#   (d) Herald alone (SQLite store): the same with WebSocket and long-poll clients, and one
#       user with BURST_TABS tabs receiving BURST_COUNT publishes at once.
# (a), (b) and (c) are phases of one herald-bench run per server: connect, measure idle, then
# (c) steady, then (b) max (the light phase first, so that it does not run on the heap and the
# store that the heavy one grew). Publishes go to random users; every acknowledged one must reach each
# client of its user exactly once.
#
# Everything started here is stopped by PID on exit. Results: OUT (default
# target/bench/<date>/): one log and one text report per run (LABEL.roundN.txt with ROUNDS > 1),
# results.jsonl (one JSON line per run), machine.txt (with the fdatasync figures), the tables in
# tables.txt, and the charts in charts/ (SVG: deliveries/s and CPU per delivery with the floor
# marked, latency percentiles at the steady rate, idle memory per tab).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source bench/lib.sh
# shellcheck source=bench/servers.sh
source bench/servers.sh

if [[ "${SMOKE:-0}" == 1 ]]; then
    : "${USERS:=100}" "${TABS:=3}" "${PUBLISHERS:=8}" "${MAX_SECS:=2}" "${STEADY_RATE:=200}"
    : "${STEADY_SECS:=2}" "${IDLE_SECS:=0.5}" "${BURST_TABS:=20}" "${BURST_COUNT:=100}"
    : "${SETTLE_SECS:=0.2}" "${QUIET_WAIT:=0}" "${RETRIES:=0}"
fi
USERS="${USERS:-5000}"             # users; each has TABS clients, all in one session
TABS="${TABS:-3}"
PUBLISHERS="${PUBLISHERS:-32}"     # concurrent publishers, one kept-alive connection each
MAX_SECS="${MAX_SECS:-20}"         # (b) duration
STEADY_RATE="${STEADY_RATE:-1000}" # (c) publishes per second
STEADY_SECS="${STEADY_SECS:-10}"   # (c) duration
IDLE_SECS="${IDLE_SECS:-5}"        # (a) settle time before measuring memory
BURST_TABS="${BURST_TABS:-50}"     # (d) tabs of the one user of the burst
BURST_COUNT="${BURST_COUNT:-1000}" # (d) publishes of the burst
SERVERS="${SERVERS:-floor herald-sqlite herald-memory nchan socketio}"
ROUNDS="${ROUNDS:-1}"              # the server list runs this many times, interleaved (1 to 20)
FSYNC_COUNT="${FSYNC_COUNT:-500}"  # fdatasyncs the probe times, per case (append, overwrite)
HERALD_ALONE="${HERALD_ALONE:-1}"  # 0: skip (d)
SETTLE_SECS="${SETTLE_SECS:-2}"    # pause after stopping a server, before starting the next
RETRIES="${RETRIES:-2}"            # a run disturbed by other programs is repeated this many times
DISTURBED_CPU_SECS="${DISTURBED_CPU_SECS:-2}" # disturbed: others used more CPU (s) in a phase
DISTURBED_STEAL_SECS="${DISTURBED_STEAL_SECS:-0.5}" # disturbed: the hypervisor stole more (s) in a phase
QUIET_WAIT="${QUIET_WAIT:-300}"    # before each run, wait up to this many seconds for a quiet machine
QUIET_BUSY_PCT="${QUIET_BUSY_PCT:-10}" # quiet: at most this share of the CPU busy over 2 s
HERALD_BIN="${HERALD_BIN:-}"       # a herald binary to measure; default: build target/release/herald
HERALD_REV="${HERALD_REV:-}"       # what to call that binary's version in machine.txt
HERALD_BIN_B="${HERALD_BIN_B:-}"   # the binary of herald-sqlite-b and herald-memory-b
HERALD_REV_B="${HERALD_REV_B:-}"   # what to call it in machine.txt
HERALD_PORT="${HERALD_PORT:-7310}"
NCHAN_PORT="${NCHAN_PORT:-7311}"
SOCKETIO_PORT="${SOCKETIO_PORT:-7312}"
FLOOR_PORT="${FLOOR_PORT:-7313}"
OUT="${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}"

# Most rounds: 20 full rounds take about 4 hours.
ROUNDS_MAX=20
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || ((ROUNDS < 1 || ROUNDS > ROUNDS_MAX)); then
    echo "ROUNDS is 1 to $ROUNDS_MAX" >&2
    exit 1
fi
for server in $SERVERS; do
    case "$server" in
    floor | floor-durable | herald-sqlite | herald-memory | nchan | socketio) ;;
    herald-sqlite-b | herald-memory-b)
        if [[ ! -x "$HERALD_BIN_B" ]]; then
            echo "$server measures HERALD_BIN_B, which is not an executable: '$HERALD_BIN_B'" >&2
            exit 1
        fi
        ;;
    *)
        echo "unknown server $server (known: floor floor-durable herald-sqlite herald-memory herald-sqlite-b herald-memory-b nchan socketio)" >&2
        exit 1
        ;;
    esac
done
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
WORK="$(mktemp -d /tmp/herald-compare.XXXXXX)"
cleanup() {
    stop_started
    rm -rf "$WORK"
}
trap cleanup EXIT

machine_info() {
    {
        machine_basics
        server_versions
        echo "scale: USERS=$USERS TABS=$TABS PUBLISHERS=$PUBLISHERS MAX_SECS=$MAX_SECS STEADY_RATE=$STEADY_RATE STEADY_SECS=$STEADY_SECS IDLE_SECS=$IDLE_SECS BURST_TABS=$BURST_TABS BURST_COUNT=$BURST_COUNT ROUNDS=$ROUNDS"
        echo "file system of the data dirs: $(df --output=fstype,source "$WORK" | tail -1 | tr -s ' ')"
        echo "$FSYNC_LINE"
        [[ -z "$HERALD_BIN_B" ]] || echo "herald B (herald-*-b): $HERALD_BIN_B${HERALD_REV_B:+ ($HERALD_REV_B)}"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$OUT/machine.txt" >&2
}

standard_phases=(--users "$USERS" --clients-per-user "$TABS" --publishers "$PUBLISHERS"
    --idle-secs "$IDLE_SECS" --phase "steady:$STEADY_RATE:$STEADY_SECS" --phase "max:$MAX_SECS")

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
log "measuring fdatasync in $WORK ($FSYNC_COUNT appends, $FSYNC_COUNT overwrites)"
FSYNC_LINE="$("$ROOT/target/release/herald-bench" fsync-probe --dir "$WORK" --count "$FSYNC_COUNT")"
machine_info

# Each round runs the whole list; every run of round N is marked N (bench's ROUND), and the
# tables take each server's median over the rounds. One round: no marks, as before rounds.
ROUND=""
for ((round = 1; round <= ROUNDS; round++)); do
    if ((ROUNDS > 1)); then
        ROUND=$round
        log "round $round of $ROUNDS"
    fi
    for server in $SERVERS; do
        case "$server" in
        floor)
            measure floor start_floor --kind sse-url --url "http://127.0.0.1:$FLOOR_PORT" "${standard_phases[@]}"
            ;;
        floor-durable)
            measure floor-durable 'start_floor_durable "$WORK/floor-durable-$round-$attempt"' \
                --kind sse-url --url "http://127.0.0.1:$FLOOR_PORT" "${standard_phases[@]}"
            ;;
        herald-sqlite)
            measure herald-sqlite 'start_herald herald-sqlite --data-dir "$WORK/herald-sqlite-$round-$attempt"' \
                --kind herald-sse --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
            ;;
        herald-memory)
            measure herald-memory 'start_herald herald-memory --memory' \
                --kind herald-sse --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
            ;;
        herald-sqlite-b)
            measure herald-sqlite-b 'HERALD_BIN="$HERALD_BIN_B" start_herald herald-sqlite-b --data-dir "$WORK/herald-sqlite-b-$round-$attempt"' \
                --kind herald-sse --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
            ;;
        herald-memory-b)
            measure herald-memory-b 'HERALD_BIN="$HERALD_BIN_B" start_herald herald-memory-b --memory' \
                --kind herald-sse --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
            ;;
        nchan)
            measure nchan start_nchan --kind sse-url --url "http://127.0.0.1:$NCHAN_PORT" "${standard_phases[@]}"
            cat "$WORK/nginx/logs/error.log" >>"$OUT/nchan.server.log" 2>/dev/null || true
            ;;
        socketio)
            measure socketio start_socketio --kind socketio --url "http://127.0.0.1:$SOCKETIO_PORT" \
                "${standard_phases[@]}"
            ;;
        esac
    done
done
ROUND=""

alone=()
if [[ "$HERALD_ALONE" == 1 ]]; then
    start_herald herald-ws-probe --memory
    # A Herald without the WebSocket transport answers 404 there; with it, 401 (no token).
    ws_status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HERALD_PORT/v1/ws")"
    stop_server
    if [[ "$ws_status" != 404 ]]; then
        measure herald-ws 'start_herald herald-ws --data-dir "$WORK/herald-ws-$attempt"' \
            --kind herald-ws --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
        alone+=(herald-ws)
    else
        log "this Herald has no /v1/ws: skipping the WebSocket run"
    fi
    measure herald-poll 'start_herald herald-poll --data-dir "$WORK/herald-poll-$attempt"' \
        --kind herald-poll --url "http://127.0.0.1:$HERALD_PORT" "${standard_phases[@]}"
    alone+=(herald-poll)
    measure "herald-burst$BURST_TABS" 'start_herald herald-burst --data-dir "$WORK/herald-burst-$attempt"' \
        --kind herald-sse --url "http://127.0.0.1:$HERALD_PORT" --users 1 --clients-per-user "$BURST_TABS" \
        --publishers "$PUBLISHERS" --idle-secs 1 --phase "burst:$BURST_COUNT"
    alone+=("herald-burst$BURST_TABS")
fi

columns=""
ratios=()
floor=()
for server in $SERVERS; do columns="$columns${columns:+,}$server"; done
[[ " $SERVERS " != *" floor "* ]] || floor=(--floor floor)
rounds_note=""
((ROUNDS == 1)) || rounds_note="; medians of $ROUNDS rounds"
for h in herald-sqlite herald-memory herald-sqlite-b herald-memory-b; do
    for o in nchan socketio; do
        if [[ " $SERVERS " == *" $h "* && " $SERVERS " == *" $o "* ]]; then
            ratios+=(--ratio "$h/$o")
        fi
    done
done
{
    echo
    echo "$FSYNC_LINE"
    echo
    "$ROOT/target/release/herald-bench" compare "$RESULTS" --columns "$columns" "${ratios[@]}" \
        "${floor[@]}" --svg "$OUT/charts" \
        --title "(a)-(c): $USERS users × $TABS clients, steady $STEADY_RATE/s for $STEADY_SECS s, then $PUBLISHERS publishers at full speed for $MAX_SECS s$rounds_note"
    if ((${#alone[@]} > 0)); then
        echo
        cols="herald-sqlite"
        [[ " $SERVERS " == *" herald-sqlite "* ]] || cols=""
        for a in "${alone[@]}"; do cols="$cols${cols:+,}$a"; done
        "$ROOT/target/release/herald-bench" compare "$RESULTS" --columns "$cols" \
            --title "(d): Herald alone (SQLite store): SSE, WebSocket, long-poll; one user with $BURST_TABS tabs and a burst of $BURST_COUNT"
    fi
    echo
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/tables.txt"
log "results in $OUT"
