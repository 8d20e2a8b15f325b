#!/usr/bin/env bash
# Where Herald's CPU and memory go under the benchmark's load.
#
#   bench/profile.sh cpu       # perf: samples Herald while publishers run at full speed
#   bench/profile.sh memory    # valgrind massif: the heap of idle SSE connections, by site
#   bench/profile.sh           # both
#
# CPU: Herald (STORE=sqlite, the default, or STORE=memory) with USERS × TABS SSE clients and
# PUBLISHERS publishers at full speed for SECS seconds; perf samples the server (software
# cpu-clock event, so it works in VMs without hardware counters) from the start of the publish
# phase to its end, with call graphs. Prints the top symbols and the split by DSO (kernel,
# herald, libc, ...).
# Memory: Herald under massif with MASSIF_USERS × TABS idle SSE clients; prints the heap at its
# peak by allocation site, per connection (bench/tools/massif_sites.py).
#
# CALLGRAPH=dwarf samples with DWARF call graphs (199 Hz, 16 KiB of stack per sample) instead of
# frame pointers, which the release build does not have (its stacks then stop at the first frame):
# slower to record and report, but the stacks are whole, and bench/tools/perf_split.py then says
# where the CPU goes by part (the tabs' writes, the publishes, the store's writer thread), in µs
# per delivery and per publish.
#
# Broadcast (bench/broadcast.sh's load): TOPIC=bench_room has every client listen to that topic
# and every publish go to it; PHASE (default max:SECS) sets the publish phase, e.g.
#   TOPIC=bench_room PHASE=steady:100:20 PUBLISHERS=4 STORE=memory bench/profile.sh cpu
#   TOPIC=bench_room bench/profile.sh memory      # the heap of idle clients that listen
#
# Everything started here is stopped by PID on exit. Output: OUT (default
# target/bench/profile-<date>/).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-all}"
STORE="${STORE:-sqlite}"
KIND="${KIND:-herald-sse}"        # the clients of the cpu profile: herald-sse, herald-ws, herald-poll
USERS="${USERS:-5000}"
TABS="${TABS:-3}"
PUBLISHERS="${PUBLISHERS:-32}"
SECS="${SECS:-20}"
PHASE="${PHASE:-max:$SECS}"       # the cpu profile's publish phase; perf samples SECS - 2 s of it
TOPIC="${TOPIC:-}"                # a broadcast: every client listens to it, every publish goes to it
MASSIF_USERS="${MASSIF_USERS:-1000}"
PORT="${PORT:-7320}"
CALLGRAPH="${CALLGRAPH:-fp}"      # fp (frame pointers, 499 Hz) or dwarf (see above)
case "$CALLGRAPH" in
fp) perf_sampling=(-F 499 -g) ;;
dwarf) perf_sampling=(-F 199 --call-graph dwarf,16384) ;;
*)
    echo "CALLGRAPH is fp or dwarf" >&2
    exit 1
    ;;
esac
OUT="${OUT:-$ROOT/target/bench/profile-$(date +%Y%m%d-%H%M%S)}"
# Seconds herald-bench idles after connecting; perf starts once that has passed.
IDLE_SECS=5
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/herald-profile.XXXXXX)"
STARTED=()

log() { printf '== %s\n' "$*" >&2; }

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$PORT"
    exit 1
}

command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
# HERALD_BIN: a herald binary to profile instead of building target/release/herald.
if [[ -n "${HERALD_BIN:-}" ]]; then
    cargo build --release -q -p herald-bench
else
    cargo build --release -q -p herald -p herald-bench
    HERALD_BIN="$ROOT/target/release/herald"
fi
ulimit -n 19500
export HERALD_SECRET="profile-secret-0123456789abcdef012345" HERALD_API_KEY="profile-key" HERALD_LISTEN="127.0.0.1:$PORT"
# The clients come from one loopback address, thousands of them: no per-address caps.
export HERALD_IP_CONNECTIONS_MAX=0 HERALD_IP_REQUESTS_PER_SEC=0
# No access log (a line per request): measure the server, not its logging.
export HERALD_ACCESS_LOG=off
store_args=(--data-dir "$WORK/data")
[[ "$STORE" == memory ]] && store_args=(--memory)
topic_args=()
[[ -n "$TOPIC" ]] && topic_args=(--topic "$TOPIC" --drain-max-secs 120)

if [[ "$WHAT" == cpu || "$WHAT" == all ]]; then
    log "cpu: herald ($STORE), $USERS × $TABS $KIND clients${TOPIC:+ on topic $TOPIC}, $PUBLISHERS publishers, $PHASE"
    "$HERALD_BIN" serve "${store_args[@]}" >"$OUT/cpu.server.log" 2>&1 &
    server=$!
    STARTED+=("$server")
    wait_port
    target/release/herald-bench run --label "profile-$STORE" --url "http://127.0.0.1:$PORT" --kind "$KIND" \
        --users "$USERS" --clients-per-user "$TABS" --publishers "$PUBLISHERS" --idle-secs "$IDLE_SECS" \
        --phase "$PHASE" "${topic_args[@]}" --server-pid "$server" --no-progress >"$OUT/cpu.bench.txt" &
    bench=$!
    STARTED+=("$bench")
    # Start sampling once the clients are connected and idle, stop before the phase ends.
    for ((i = 0; i < 600; i++)); do
        [[ $(ls /proc/"$server"/fd | wc -l) -ge $((USERS * TABS)) ]] && break
        sleep 0.1
    done
    sleep "$IDLE_SECS"
    timeout --signal=INT "$((SECS - 2))" perf record -e cpu-clock "${perf_sampling[@]}" -p "$server" -o "$OUT/perf.data" \
        >/dev/null 2>"$OUT/perf.record.log" || true
    wait "$bench" || true
    stop_pid "$server"
    grep -v '^{' "$OUT/cpu.bench.txt" >&2
    # `head` closes the pipe early: no pipefail for these reports.
    set +o pipefail
    perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^#' | grep '%' | head -8 | tee "$OUT/perf.dso.txt"
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
        grep -v '^#' | grep '%' | head -40 | tee "$OUT/perf.symbols.txt"
    # Inclusive ("children") time of the parts that matter: the store, syscalls, Herald, malloc.
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
        grep -v '^#' | grep '%' |
        grep -E 'herald|sqlite3_step|sqlite3VdbeHalt|CommitPhase|fsync|walCheckpoint|prepare|sys_sendto|sys_recvfrom|sys_write|sys_read|epoll_wait|malloc|free|jsonwebtoken|serde_json|wake|futex|schedule' |
        head -60 | tee "$OUT/perf.children.txt"
    set -o pipefail
    if [[ "$CALLGRAPH" == dwarf ]]; then
        perf script -i "$OUT/perf.data" -F comm,tid,ip,sym 2>/dev/null >"$OUT/perf.script.txt"
        # The phase's server CPU per delivery, from herald-bench's table (the column before last
        # but three: µs/deliv).
        per_delivery="$(grep -E '^(max|steady|burst)' "$OUT/cpu.bench.txt" | grep -v 'round trip' | head -1 |
            awk '{print $(NF-3)}')"
        python3 bench/tools/perf_split.py "$OUT/perf.script.txt" ${per_delivery:+--us-per-delivery "$per_delivery"} \
            --deliveries-per-publish "$TABS" | tee "$OUT/perf.split.txt"
    fi
fi

if [[ "$WHAT" == memory || "$WHAT" == all ]]; then
    clients=$((MASSIF_USERS * TABS))
    log "memory: herald ($STORE) under massif, $clients idle SSE clients"
    valgrind --tool=massif --massif-out-file="$OUT/massif.out" --depth=40 --threshold=0.2 \
        --peak-inaccuracy=0.5 "$HERALD_BIN" serve "${store_args[@]}" >"$OUT/massif.server.log" 2>&1 &
    server=$!
    STARTED+=("$server")
    wait_port
    # One publish, so the run has a phase; the peak is the idle state with every client open.
    target/release/herald-bench run --label "massif-$STORE" --url "http://127.0.0.1:$PORT" \
        --users "$MASSIF_USERS" --clients-per-user "$TABS" --publishers 1 --idle-secs 3 \
        --connect-concurrency 16 --phase burst:1 "${topic_args[@]}" --server-pid "$server" --no-progress |
        grep -v '^{' >&2
    stop_pid "$server"
    ms_print "$OUT/massif.out" >"$OUT/massif.txt"
    python3 bench/tools/massif_sites.py "$OUT/massif.txt" --per "$clients" --top 20 | tee "$OUT/massif.sites.txt"
fi
log "profile in $OUT"
