# What bench/compare.sh and bench/broadcast.sh share: Herald, Nchan, Socket.IO and the floor
# (bench/floor) started one at a time on their own 127.0.0.1 ports, herald-bench run against
# each, each stopped by its PID. Sourced after bench/lib.sh, not run. The caller sets:
#   OUT, RESULTS                where logs and reports go, and the JSON lines of every run
#   WORK                        a scratch directory (nginx's run directory lives there)
#   HERALD_BIN                  the herald binary; HERALD_PORT, NCHAN_PORT, SOCKETIO_PORT,
#                               FLOOR_PORT (herald-floor is target/release/herald-floor)
#   ROUND                       optional: the round of a comparison (compare.sh's ROUNDS), see `bench`
#   SETTLE_SECS                 pause after stopping a server, before starting the next
#   RETRIES, DISTURBED_CPU_SECS, DISTURBED_STEAL_SECS   see `measure`
#   QUIET_WAIT, QUIET_BUSY_PCT  see lib.sh's `wait_quiet`

# Debian's nginx and libnginx-mod-nchan, Node and npm, and socket.io (npm ci), if missing.
install_missing() {
    if ! command -v nginx >/dev/null || [[ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
        log "installing nginx and libnginx-mod-nchan"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        log "installing nodejs and npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    if [[ ! -f bench/socketio/node_modules/socket.io/package.json ]]; then
        log "installing socket.io (npm ci)"
        (cd bench/socketio && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# The versions of the other servers, for machine.txt.
server_versions() {
    echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "nchan: $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
    echo "node: $(node --version)"
    echo "socket.io: $(node -p "require('./bench/socketio/node_modules/socket.io/package.json').version")"
}

# Each server is one process (nginx: its master, whose workers herald-bench finds as children).
SERVER_PID=""

# start_herald LABEL ARGS...: `herald serve ARGS` on HERALD_PORT, its log in OUT/LABEL.server.log.
start_herald() {
    local label="$1"
    shift
    port_free "$HERALD_PORT" HERALD
    # The clients come from a few loopback addresses, thousands each: no per-address caps.
    HERALD_LISTEN="127.0.0.1:$HERALD_PORT" HERALD_IP_CONNECTIONS_MAX=0 HERALD_IP_REQUESTS_PER_SEC=0 \
        "$HERALD_BIN" serve "$@" >"$OUT/$label.server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$HERALD_PORT" "$SERVER_PID"
}

start_nchan() {
    port_free "$NCHAN_PORT" NCHAN
    local dir="$WORK/nginx"
    rm -rf "$dir"
    mkdir -p "$dir/logs"
    sed "s/127\.0\.0\.1:7311/127.0.0.1:$NCHAN_PORT/" bench/nchan/nginx.conf >"$dir/nginx.conf"
    nginx -p "$dir" -c nginx.conf >"$OUT/nchan.server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$NCHAN_PORT" "$SERVER_PID"
}

start_socketio() {
    port_free "$SOCKETIO_PORT" SOCKETIO
    PORT="$SOCKETIO_PORT" NODE_ENV=production node bench/socketio/server.js >"$OUT/socketio.server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$SOCKETIO_PORT" "$SERVER_PID"
}

# The floor: herald-floor (bench/floor), built by the caller, on FLOOR_PORT.
start_floor() {
    port_free "$FLOOR_PORT" FLOOR
    "$ROOT/target/release/herald-floor" --listen "127.0.0.1:$FLOOR_PORT" >"$OUT/floor.server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$FLOOR_PORT" "$SERVER_PID"
}

# The durable floor: herald-floor --log (a group-committed, fdatasynced log before each
# fan-out) on FLOOR_PORT, its log file in the directory $1.
start_floor_durable() {
    port_free "$FLOOR_PORT" FLOOR
    "$ROOT/target/release/herald-floor" --listen "127.0.0.1:$FLOOR_PORT" --log "$1" \
        >"$OUT/floor-durable.server.log" 2>&1 &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    wait_port "$FLOOR_PORT" "$SERVER_PID"
}

stop_server() {
    stop_pid "$SERVER_PID"
    forget_pid "$SERVER_PID"
    SERVER_PID=""
    # Let the sockets of the closed connections go before the next server starts.
    sleep "$SETTLE_SECS"
}

# bench LABEL ARGS...: herald-bench run against SERVER_PID once the machine is quiet; its report
# in OUT/LABEL.txt, its JSON line appended to RESULTS. With ROUND set, the run is marked as
# that round (`--round`: herald-bench compare reports the median of the rounds) and its report
# is OUT/LABEL.roundN.txt.
bench() {
    local label="$1" round_args=()
    shift
    [[ -z "${ROUND:-}" ]] || round_args=(--round "$ROUND")
    wait_quiet
    log "$label${ROUND:+ (round $ROUND)}: herald-bench run $*"
    "$ROOT/target/release/herald-bench" run --label "$label" --server-pid "$SERVER_PID" \
        --json-out "$RESULTS" --no-progress --disturbed-cpu-secs "$DISTURBED_CPU_SECS" \
        --disturbed-steal-secs "$DISTURBED_STEAL_SECS" "${round_args[@]}" "$@" |
        tee "$OUT/$label${ROUND:+.round$ROUND}.txt" | grep -v '^{' >&2
}

# measure LABEL START BENCH_ARGS...: runs START (a command line that starts the server, with
# $attempt available), herald-bench with BENCH_ARGS, and stops the server. A run that other
# programs disturbed (herald-bench exits 3) is repeated on a fresh server, at most RETRIES times;
# every attempt stays in RESULTS, and the tables count the last one (of each round).
measure() {
    local label="$1" start="$2" attempt rc
    shift 2
    for ((attempt = 0; ; attempt++)); do
        eval "$start"
        rc=0
        bench "$label" "$@" || rc=$?
        stop_server
        retry_if_disturbed "$label" "$rc" "$attempt" || return 0
    done
}
