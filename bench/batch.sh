#!/usr/bin/env bash
# Batch publish (issue 14): one SQLite Herald node, 15,000 SSE clients (5,000 users x 3),
# 32 publishers, one run each for batches of 1, 10 and 100 publishes per request
# (`herald-bench run --batch N`: POST /v1/notify/batch): 5 s at 1,000 publishes/s, then 15 s at
# full speed. Herald and herald-bench from target/release (cargo build --release -p herald -p
# herald-bench); results (text and JSON) in OUT (default target/bench/batch-<date>). Each
# server is stopped by its PID; about 2 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release"
OUT="${OUT:-$ROOT/target/bench/batch-$(date +%Y%m%d-%H%M%S)}"
PORT="${PORT:-7390}"
mkdir -p "$OUT"
export HERALD_SECRET="bench-secret-0123456789abcdef-$RANDOM" HERALD_API_KEY="bench-key-$RANDOM"
# No access log (a line per request): measure the server, not its logging.
export HERALD_ACCESS_LOG=off
for batch in ${BATCHES:-1 10 100}; do
  dir=$(mktemp -d /tmp/herald-batch.XXXXXX)
  HERALD_LISTEN="127.0.0.1:$PORT" HERALD_IP_CONNECTIONS_MAX=0 HERALD_IP_REQUESTS_PER_SEC=0 \
    "$BIN/herald" serve --data-dir "$dir" > "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  "$BIN/herald-bench" run --kind herald-sse --url "http://127.0.0.1:$PORT" --users 5000 --clients-per-user 3 \
    --publishers 32 --batch "$batch" --phase steady:1000:5 --phase max:15 --idle-secs 3 --server-pid "$pid" \
    --label "batch-$batch" --json-out "$OUT/batch-$batch.json" --no-progress --strict \
    > "$OUT/batch-$batch.txt" 2>&1 || echo "batch $batch: herald-bench failed (see $OUT/batch-$batch.txt)"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  grep -E "^(steady|max) " "$OUT/batch-$batch.txt" || true
done
echo "results in $OUT"
