#!/usr/bin/env bash
# Install everything the test suite needs, then run lint, type checks, the docs build, the test suite,
# and the cluster tests on a local multi-node Slurm, on a Docker Compose Slurm cluster and on a Grid
# Engine cluster (all started here and always stopped again). This is the README's test command and
# what CI runs (.ci/run). Safe to run again. As root it installs the Debian packages it needs; without
# root the cluster tests are skipped (loudly). HTEX_SKIP_CLUSTERS=1 skips them on purpose; extra arguments go to the main pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
basetemp="$root/.pytest-tmp"

cleanup() {
    # Every run directory of the tests lives under these folders, so any process still naming one is
    # one this run started (an interchange, worker pool or worker left by a failed test).
    local pids dir
    for dir in "$basetemp" "$root/.pytest-tmp-parsl" "$root/.parsl-suite-out" "$root/.parsl-suite-out-mpi"; do
        pids=$(pgrep -f -- "$dir" || true)
        if [ -n "$pids" ]; then
            echo "cleanup: stopping leftover test processes: $pids" >&2
            kill $pids 2>/dev/null || true
            sleep 1
            kill -9 $pids 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

if [ "$(id -u)" -eq 0 ]; then
    # Real MPI and GNU parallel let the launcher tests run the real tools, not only stubs; Chromium
    # (headless) checks the HTML report in a real browser.
    need=()
    for p in parallel mpich chromium; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "== apt: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}" >/dev/null
    fi
fi

bash scripts/ensure-venv.sh dev >/dev/null

echo "== ruff"
.venv/bin/ruff check htex_ref simcluster tests noxfile.py scripts examples clusters benchmarks
echo "== mypy"
.venv/bin/mypy
echo "== docs"
.venv/bin/mkdocs build --strict --quiet --site-dir "$root/.pytest-site"
rm -rf "$root/.pytest-site"
echo "== pytest"
rm -rf "$basetemp"
failed=()
.venv/bin/python -m pytest -n 2 --basetemp="$basetemp" -p no:cacheprovider "$@" || failed+=(pytest)

echo "== Parsl adapter: Parsl's Config on htex_ref, and Parsl's own CI test selection on both executors"
# Its own venv: Parsl's test suite needs pytest 7 (the main suite uses pytest 8).
.venv-parsl/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv-parsl; python3 -m venv .venv-parsl; }
if .venv-parsl/bin/python -m pip install -q -e . -r tests/parsl_suite/requirements.txt; then
    rm -rf "$root/.pytest-tmp-parsl"
    .venv-parsl/bin/python -m pytest tests/e2e/test_parsl_adapter.py -q -p no:cacheprovider \
        --basetemp="$root/.pytest-tmp-parsl" || failed+=(parsl-adapter)
    .venv-parsl/bin/python tests/parsl_suite/run.py --only config --out "$root/.parsl-suite-out" \
        || failed+=(parsl-suite)
    # Parsl's MPI tests (parsl/tests/test_htex/mpi) on Parsl's MPIExecutor and on the adapter's.
    .venv-parsl/bin/python tests/parsl_suite/run.py --only mpi --out "$root/.parsl-suite-out-mpi" \
        || failed+=(parsl-suite-mpi)
else
    failed+=(parsl-install)
fi

if [ "${HTEX_SKIP_CLUSTERS:-0}" = 1 ]; then
    echo "== cluster tests skipped (HTEX_SKIP_CLUSTERS=1)"
elif [ "$(id -u)" -ne 0 ]; then
    echo "== cluster tests SKIPPED: they need root (to install Slurm, Docker and Grid Engine and start daemons)" >&2
else
    echo "== cluster tests: local multi-node Slurm"
    PYTHON="$root/.venv/bin/python" bash scripts/test-slurm-local.sh || failed+=(slurm-local)
    echo "== cluster tests: Docker Compose Slurm cluster"
    PYTHON="$root/.venv/bin/python" bash scripts/test-slurm-compose.sh || failed+=(slurm-compose)
    echo "== cluster tests: Grid Engine (a qmaster and two execution hosts in network namespaces)"
    PYTHON="$root/.venv/bin/python" bash scripts/test-gridengine.sh || failed+=(gridengine)
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all passed"
