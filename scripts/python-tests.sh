#!/usr/bin/env bash
# Runs the Python client's tests and the FastAPI and Django guides' tests (clients/python/tests)
# against a real `herald serve`, the guides' apps in headless Chromium.
#
# Installs what is missing first, so that it runs on a fresh Debian machine (as root, or with
# sudo): python3-venv (apt) when `python3 -m venv` cannot make a venv; a venv (.venv, or
# $HERALD_PYTHON_VENV) with clients/python and its pinned test extras (pytest, fastapi, uvicorn,
# django, mypy; pip); Debian's chromium, node and npm (apt) and tests/browser's npm packages (`npm ci`)
# for the guides' browser runs. Builds the `herald` binary with cargo. Then runs the client's own
# tests again on Python 3.9 (the oldest pyproject.toml accepts) in a venv of its own
# (.venv-py39), when the machine has one. Idempotent: a second run installs nothing new.
#
# Usage: scripts/python-tests.sh [pytest arguments…]   (e.g. -k fastapi)
# Screenshots of the guides' pages land in artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python=${PYTHON:-python3}
venv=${HERALD_PYTHON_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  echo "== python venv ($venv)"
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    echo "== installing python3-venv (apt)"
    rm -rf "$venv"
    apt_install python3-venv
    "$python" -m venv "$venv"
  fi
fi
echo "== pip install clients/python[test]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e 'clients/python[test]'

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "== installing chromium (apt)"
  apt_install chromium fonts-dejavu-core
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing node and npm (apt)"
  apt_install nodejs npm
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== mypy --strict (clients/python: the library, and its types as an app uses them)"
"$venv/bin/python" -m mypy --strict clients/python/src/herald clients/python/tests/types_usage.py

echo "== cargo build -p herald"
cargo build -p herald
target_dir=$(cargo metadata --format-version 1 --no-deps | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export HERALD_BIN="$target_dir/debug/herald"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

echo "== pytest clients/python/tests (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'))"
"$venv/bin/python" -m pytest clients/python/tests "$@"

# The oldest Python pyproject.toml accepts (requires-python >=3.9): the client's own tests again
# on it, when this machine has one (python3.9 on the PATH, or a 3.9 of pyenv's: pyenv on the
# PATH, else at $PYENV_ROOT/bin/pyenv, ~/.pyenv by default, where its installer puts it and where
# a CI shell that never ran pyenv's init still has it); the guides' frameworks need newer Pythons
# and stay on the one above. Skipped, saying so, with arguments (a -k run).
if [ "$#" -eq 0 ]; then
  oldest=""
  pyenv=$(command -v pyenv || true)
  if [ -z "$pyenv" ] && [ -x "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv" ]; then
    pyenv="${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv"
  fi
  # The whole list is read (no `grep -q`): with pipefail, pyenv killed by SIGPIPE once grep had
  # its match made the test fail now and then.
  pyenv39=""
  if [ -n "$pyenv" ]; then
    pyenv39=$("$pyenv" versions --bare 2>/dev/null | grep '^3\.9\.' | tail -1 || true)
  fi
  if command -v python3.9 >/dev/null && python3.9 --version >/dev/null 2>&1; then
    oldest=python3.9
  elif [ -n "$pyenv39" ]; then
    # The 3.9's own interpreter, by its prefix: no shims on the PATH needed.
    oldest="$("$pyenv" prefix "$pyenv39")/bin/python"
  fi
  if [ -n "$oldest" ]; then
    venv39=${HERALD_PYTHON39_VENV:-.venv-py39}
    if [ ! -x "$venv39/bin/python" ]; then
      echo "== python 3.9 venv ($venv39)"
      $oldest -m venv "$venv39"
    fi
    "$venv39/bin/python" -m pip install -q --disable-pip-version-check -e clients/python 'pytest==8.3.5'
    echo "== pytest: the client's own tests on Python $("$venv39/bin/python" -c 'import platform; print(platform.python_version())')"
    "$venv39/bin/python" -m pytest clients/python/tests/test_sync.py clients/python/tests/test_async.py \
      clients/python/tests/test_push.py clients/python/tests/test_api_coverage.py
  else
    echo "== Python 3.9: skipped (no python3.9 here): the client's tests ran on the Python above only"
  fi
fi
