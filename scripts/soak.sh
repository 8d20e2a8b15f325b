#!/usr/bin/env bash
# Soak test (not in CI): Herald under steady load for a long time, to show that nothing is lost
# and that memory, open files and disk stay flat.
#
#   scripts/soak.sh                                  # 1 hour, 5,000 users × 3 tabs = 15,000 tabs
#   scripts/soak.sh --secs 180 --users 1000 --debug  # a 3-minute check, debug binaries
#
# Runs `herald serve` (SQLite, a fresh data dir, retention capped at --retention per user so
# that the log reaches its steady size early) and one `herald-bench run`: USERS × TABS SSE
# clients, RATE publishes/s to random users for SECS seconds, and CHURN reconnects/s (a random
# tab drops its connection and resumes on a new one). Every SAMPLE seconds it writes the
# server's RSS, open fds and data-dir size to OUT/soak.csv. At the end it reports herald-bench's
# lost / duplicated / misrouted deliveries (every acknowledged publish must reach each tab of
# its user exactly once, across the reconnects), and whether RSS, fds and the database file were
# flat: the average of the last quarter of the samples within FLAT_PCT % of the second quarter's
# (the first quarter holds the connecting and the log growing to its cap); the WAL must stay
# under its 64 MiB cap (it grows in steps and is never shrunk, so flatness says nothing of it).
#
# Exit status: 0 if nothing was lost and everything was flat; 1 otherwise. Everything it starts
# is stopped by PID on exit. Output in OUT (default target/soak/<date>/): soak.csv, bench.txt,
# bench.jsonl, herald.log, summary.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SECS=3600        # steady phase
USERS=5000
TABS=3           # clients per user, one session
RATE=100         # publishes per second
CHURN=20         # reconnects per second, in all
SAMPLE=10        # seconds between samples
FLAT_PCT=10      # allowed drift between the second and the last quarter
RETENTION=20     # --retention-max-per-user
PUBLISHERS=8
PORT=7391
PROFILE=release
BUILD=1
OUT=""

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --secs N --users N --tabs N --rate R --churn C --sample N --flat-pct P"
    echo "         --retention N --publishers N --port P --out DIR --debug --no-build"
}
while [[ $# -gt 0 ]]; do
    case "$1" in
    --secs) SECS="$2"; shift 2 ;;
    --users) USERS="$2"; shift 2 ;;
    --tabs) TABS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --churn) CHURN="$2"; shift 2 ;;
    --sample) SAMPLE="$2"; shift 2 ;;
    --flat-pct) FLAT_PCT="$2"; shift 2 ;;
    --retention) RETENTION="$2"; shift 2 ;;
    --publishers) PUBLISHERS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "soak: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/target/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

log() { echo "soak: $*" >&2; }

# Everything started here, stopped by PID on exit.
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

if [[ "$BUILD" == 1 ]]; then
    log "building herald and herald-bench ($PROFILE)"
    if [[ "$PROFILE" == release ]]; then
        cargo build --release -q -p herald -p herald-bench
    else
        cargo build -q -p herald -p herald-bench
    fi
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "soak: something listens on 127.0.0.1:$PORT already; give --port" >&2
    exit 1
fi
# 15,000 tabs need 15,000 descriptors in the server (and in herald-bench's workers).
ulimit -n "$(ulimit -Hn)"
export HERALD_SECRET="soak-secret-0123456789abcdef-$RANDOM$RANDOM$RANDOM$RANDOM" HERALD_API_KEY="soak-key-$RANDOM$RANDOM$RANDOM"
# Thousands of tabs and their reconnects come from one loopback address: no per-address caps.
export HERALD_IP_CONNECTIONS_MAX=0 HERALD_IP_REQUESTS_PER_SEC=0
# No access log (a line per request): measure the server, not its logging.
export HERALD_ACCESS_LOG=off
DATA="$OUT/data"
"$TARGET/herald" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
    --retention-max-per-user "$RETENTION" >"$OUT/herald.log" 2>&1 &
SERVER_PID=$!
STARTED+=("$SERVER_PID")
for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/herald.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "soak: herald did not start" >&2; exit 1; }
log "herald pid $SERVER_PID on 127.0.0.1:$PORT; data in $DATA; samples every ${SAMPLE}s in $OUT/soak.csv"

# The sampler: one CSV line every SAMPLE seconds while the server runs.
sample() {
    local start now rss fds disk db wal
    start=$(date +%s)
    echo "secs,rss_kib,fds,disk_bytes,db_bytes,wal_bytes"
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        now=$(date +%s)
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo "")
        fds=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        disk=$(du -sb "$DATA" 2>/dev/null | cut -f1)
        db=$(stat -c %s "$DATA/herald.db" 2>/dev/null || echo 0)
        wal=$(stat -c %s "$DATA/herald.db-wal" 2>/dev/null || echo 0)
        [[ -n "$rss" ]] && echo "$((now - start)),$rss,$fds,$disk,$db,$wal"
        sleep "$SAMPLE"
    done
}
sample >"$OUT/soak.csv" &
SAMPLER_PID=$!
STARTED+=("$SAMPLER_PID")

log "herald-bench: $USERS users × $TABS tabs, $RATE publishes/s, $CHURN reconnects/s for $SECS s"
set +e
"$TARGET/herald-bench" run --kind herald-sse --url "http://127.0.0.1:$PORT" \
    --users "$USERS" --clients-per-user "$TABS" --publishers "$PUBLISHERS" \
    --idle-secs 1 --phase "steady:$RATE:$SECS" --churn-per-sec "$CHURN" \
    --server-pid "$SERVER_PID" --label soak --json-out "$OUT/bench.jsonl" --no-progress --strict \
    2>&1 | tee "$OUT/bench.txt"
BENCH_STATUS=${PIPESTATUS[0]}
set -e

kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || { echo "soak: herald did not stop cleanly (status $?)" >&2; BENCH_STATUS=1; }

# The verdict: deliveries from herald-bench, flatness from the samples.
{
    if command -v jq >/dev/null && [[ -s "$OUT/bench.jsonl" ]]; then
        jq -r '"deliveries: " + ([.phases[].deliveries | "lost \(.lost), duplicated \(.duplicated), misrouted \(.misrouted)"] | join("; "))
            + "; connect failures \(.connect.failed)"' "$OUT/bench.jsonl"
    fi
    if [[ "$BENCH_STATUS" == 0 ]]; then
        echo "deliveries: OK (0 lost, 0 duplicated, 0 misrouted, every tab connected)"
    else
        echo "deliveries: FAILED (herald-bench status $BENCH_STATUS; see bench.txt)"
    fi
    # RSS, fds and the database file must be flat. The WAL is not judged by flatness: SQLite
    # reuses it after each checkpoint and never shrinks it below what it reached, so it grows in
    # steps up to its cap (`journal_size_limit`, 64 MiB) and stays; it must stay under the cap.
    awk -F, -v flat="$FLAT_PCT" -v wal_max=$((64 * 1024 * 1024)) '
        NR == 1 { for (i = 2; i <= NF; i++) name[i] = $i; columns = NF; next }
        { n++; for (i = 2; i <= columns; i++) v[n, i] = $i; if ($6 > wal_peak) wal_peak = $6 }
        END {
            if (n < 8) { print "flat: too few samples (" n "); run longer or sample more often"; exit }
            q = int(n / 4)
            printf "%-11s %14s %14s %8s\n", "", "2nd quarter", "last quarter", "change"
            split("2 3 5 4", judged, " ")
            for (j = 1; j <= 4; j++) {
                i = judged[j]
                a = 0; b = 0
                for (k = q + 1; k <= 2 * q; k++) a += v[k, i]
                for (k = n - q + 1; k <= n; k++) b += v[k, i]
                a /= q; b /= q
                change = a > 0 ? 100 * (b - a) / a : 0
                if (i == 4) verdict = "(the database and its WAL: not judged)"
                else verdict = (change <= flat && change >= -flat) ? "flat" : "NOT FLAT"
                printf "%-11s %14.0f %14.0f %+7.1f%%  %s\n", name[i], a, b, change, verdict
            }
            printf "wal_bytes peak %d: %s\n", wal_peak, (wal_peak <= wal_max ? "under its cap (64 MiB)" : "OVER ITS CAP (64 MiB)")
            printf "(%d samples; flat: within %s%%)\n", n, flat
        }' "$OUT/soak.csv"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"
if grep -q "NOT FLAT\|OVER ITS CAP\|too few samples" "$OUT/summary.txt" || [[ "$BENCH_STATUS" != 0 ]]; then
    echo "soak: FAILED (results in $OUT)"
    exit 1
fi
echo "soak: OK (results in $OUT)"
