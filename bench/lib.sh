# What bench/compare.sh, bench/broadcast.sh and bench/cluster.sh share: starting and stopping processes by PID,
# waiting for a port, waiting for a quiet machine. Sourced, not run. The caller sets OUT (where
# logs go), QUIET_WAIT and QUIET_BUSY_PCT, and keeps every PID it starts in STARTED.

STARTED=()
# Every herald started by a bench runs without its access log (a line per request): the benches
# measure the server, not its logging. A variable rather than `--access-log off`, which an older
# HERALD_BIN would refuse.
export HERALD_ACCESS_LOG=off
# Longest wait for a server to accept connections after it was started.
START_TIMEOUT_TENTHS=100

log() { printf '== %s\n' "$*" >&2; }

# Stops one process we started: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

forget_pid() {
    local pid="$1" kept=() p
    for p in "${STARTED[@]}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    STARTED=("${kept[@]}")
}

# Stops every process in STARTED, the last started first.
stop_started() {
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    STARTED=()
}

# wait_port PORT PID: until something listens on 127.0.0.1:PORT; exits if PID dies first.
wait_port() {
    local port="$1" pid="$2" i
    for ((i = 0; i < START_TIMEOUT_TENTHS; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the server (pid $pid) exited; see its log in $OUT"
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$port after $((START_TIMEOUT_TENTHS / 10)) s"
    exit 1
}

# port_free PORT NAME: exits if 127.0.0.1:PORT is taken (NAME_PORT is the variable to change).
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        log "port $1 is in use; set ${2}_PORT to another one"
        exit 1
    fi
}

# Share of the machine's CPU busy over the next 2 seconds, in percent.
busy_pct() {
    local a b
    read -r -a a </proc/stat
    sleep 2
    read -r -a b </proc/stat
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $((total > 0 ? 100 * (total - idle) / total : 0))
}

# Waits (at most QUIET_WAIT seconds) until nothing else keeps the CPU busy: the machine is
# shared with builds and tests, which would skew every figure. Each run records how busy the
# machine was before and during it (herald-bench's "machine busy" and "other CPU").
wait_quiet() {
    local waited=0 busy
    ((QUIET_WAIT > 0)) || return 0
    while busy=$(busy_pct) && ((busy > QUIET_BUSY_PCT && waited < QUIET_WAIT)); do
        ((waited == 0)) && log "the machine is busy ($busy%); waiting up to $QUIET_WAIT s for it to quiet down"
        waited=$((waited + 2))
    done
    ((waited == 0)) || log "after $waited s: $busy% busy"
}

# retry_if_disturbed LABEL RC ATTEMPT: after herald-bench ended with status RC on attempt
# ATTEMPT (from 0): 0 (run again on fresh processes) when it said the run was disturbed (3) and
# RETRIES allows another; 1 when done; exits the script on any other failure.
retry_if_disturbed() {
    local label="$1" rc="$2" attempt="$3"
    if ((rc == 3 && attempt < RETRIES)); then
        log "$label: disturbed by other programs or the hypervisor; once more on fresh processes"
        return 0
    fi
    if ((rc != 0 && rc != 3)); then
        log "$label: herald-bench failed (status $rc)"
        exit 1
    fi
    return 1
}

# The lines of machine_info every bench prints first: the machine, the Herald build (HERALD_BIN,
# HERALD_REV) and the compiler.
machine_basics() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "kernel: $(uname -sr)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "herald: ${HERALD_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')} ($HERALD_BIN)"
    echo "rustc: $(rustc --version)"
}
