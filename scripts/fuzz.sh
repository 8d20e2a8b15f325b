#!/usr/bin/env bash
# Runs the fuzz targets (crates/herald-server/tests/it/fuzz.rs) longer than `cargo test` does:
# every target for SECS seconds (default 60), all at once (one test thread each), in release.
# Each prints its case count and its seed; a failure prints the seed and the smallest input
# found (rerun it with HERALD_FUZZ_SEED=<seed> and the target's name).
#
# Usage: scripts/fuzz.sh [SECS] [target…]
#   targets: data_check jwt resume_point query_strings publish_bodies inbox_bodies
#            request_heads ws_frames sse_parser (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
export HERALD_FUZZ_SECS="$secs"
# The targets are the `fuzz` module of the integration tests' one binary (`it`).
if (($#)); then
  filters=(--exact "${@/#/fuzz::}")
else
  filters=(fuzz::)
fi
# Unfiltered: a failure's smallest input spans many lines (a filter once cut it off).
RUST_BACKTRACE=0 cargo test --release -p herald-server --test it -- --nocapture --test-threads=9 "${filters[@]}"
