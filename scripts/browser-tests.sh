#!/usr/bin/env bash
# Runs the browser tests (tests/browser): herald.js and the demo in real headless Chromium,
# each test against its own fresh `herald serve`.
#
# Installs what is missing first: Debian's `chromium` (apt; a browser download such as
# `npx playwright install` cannot work here), `nginx` and `psql` (apt: cluster.test.mjs runs
# deploy/nginx/herald.conf in front of three nodes, on a database it creates with psql) and the
# npm packages of tests/browser and of the guides' example apps (examples/express: `npm ci`, each
# pinned by its package-lock.json). Type-checks
# herald.d.ts with TypeScript (strict) against tests/browser/types/usage.ts. Builds the `herald`
# binary and the axum guide's example (crates/herald-server/examples/axum_app) with cargo.
#
# cluster.test.mjs needs HERALD_TEST_POSTGRES (an admin URL, e.g.
# postgres://postgres@127.0.0.1:5432/test) and HERALD_TEST_NATS (e.g. nats://127.0.0.1:4222);
# without them it says so and skips. CI (.ci/run) sets both.
#
# Usage: scripts/browser-tests.sh [test files…]   (default: every tests/browser/*.test.mjs;
#        a file as tests/browser/x.test.mjs or x.test.mjs)
# Screenshots of the demo land in artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
# The test does not use the system's nginx service (which the package starts where an init
# system runs one): it runs its own instance, `nginx -p <temp dir>`, and stops it by PID.
if ! command -v nginx >/dev/null; then
  echo "== installing nginx (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
if ! command -v psql >/dev/null; then
  echo "== installing psql (apt: postgresql-client)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing node and npm (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "browser tests need node >= 20 (have $(node --version))" >&2
  exit 1
fi

echo "== npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# The Express guide's app (guide-express.test.mjs starts it); it uses clients/node from here.
echo "== npm ci (examples/express)"
(cd examples/express && npm ci --no-audit --no-fund --loglevel=error)

echo "== type-check clients/js/herald.d.ts (tsc --strict, tests/browser/types/usage.ts)"
(cd tests/browser && npm run --silent typecheck)

echo "== cargo build -p herald, and the axum guide's example"
cargo build -p herald
cargo build -p herald-server --example axum_app
target_dir=$(cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
export HERALD_BIN="$target_dir/debug/herald"
export HERALD_AXUM_APP="$target_dir/debug/examples/axum_app"
export CHROMIUM=/usr/bin/chromium

echo "== browser tests ($(chromium --version 2>/dev/null | head -1))"
cd tests/browser
if [ "$#" -gt 0 ]; then
  files=("${@#tests/browser/}") # as given from the repository's root, or from tests/browser
else
  files=(*.test.mjs)
fi
# One file at a time: each starts Chromium and a server, and the machine may have 2 cores.
node --test --test-concurrency=1 --test-timeout=180000 "${files[@]}"
