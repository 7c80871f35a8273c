#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run lint, type checks and the tests.
# This is the README's test command and what CI runs (.ci/run). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
basetemp="$root/.pytest-tmp"

cleanup() {
    # Every run directory of the tests lives under $basetemp, so any process still naming it is one
    # this run started (an interchange, worker pool or worker left by a failed test).
    local pids
    pids=$(pgrep -f -- "$basetemp" || true)
    if [ -n "$pids" ]; then
        echo "cleanup: stopping leftover test processes: $pids" >&2
        kill $pids 2>/dev/null || true
        sleep 1
        kill -9 $pids 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check htex_ref simcluster tests noxfile.py scripts examples clusters
echo "== mypy"
.venv/bin/mypy
echo "== docs"
.venv/bin/mkdocs build --strict --quiet --site-dir "$root/.pytest-site"
rm -rf "$root/.pytest-site"
echo "== pytest"
rm -rf "$basetemp"
.venv/bin/python -m pytest -n 2 --basetemp="$basetemp" -p no:cacheprovider "$@"
