#!/usr/bin/env bash
# Runs the tests of clients/node (@herald/server) against the real `herald` binary: `npm ci`
# (TypeScript, pinned by clients/node/package-lock.json: the library itself has no dependencies),
# the type-check of index.d.ts (tsc --strict against clients/node/types/usage.ts), then
# `node --test`, each test file against its own `herald serve --memory` on a free port (the Web
# Push tests' with a VAPID key; the API coverage check needs none).
#
# Installs node and npm (apt) when missing; builds the `herald` binary with cargo unless
# HERALD_BIN names one.
#
# Usage: scripts/node-client-tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing node and npm (apt)"
  if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "clients/node needs node >= 20 (have $(node --version))" >&2
  exit 1
fi

if [ -z "${HERALD_BIN:-}" ]; then
  echo "== cargo build -p herald"
  cargo build -p herald
  target_dir=$(cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
  export HERALD_BIN="$target_dir/debug/herald"
fi

cd clients/node
echo "== npm ci (clients/node)"
npm ci --no-audit --no-fund --loglevel=error
echo "== type-check clients/node/index.d.ts (tsc --strict, types/usage.ts)"
npm run --silent typecheck
echo "== clients/node tests (node --test, against $HERALD_BIN)"
npm test
