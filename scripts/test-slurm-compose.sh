#!/usr/bin/env bash
# The cluster tests against the Docker Compose Slurm cluster: install Docker and the Slurm client, start
# the cluster (clusters/compose.py), run tests/cluster from this host, and always stop the cluster again.
# Exits with pytest's status (or the cluster's, if it could not start or stop). Must run as root.
# The Slurm logs of the containers are copied to /tmp/htex-compose/logs/<service>/ when the cluster stops.
#
#   scripts/test-slurm-compose.sh [pytest args...]
# Environment: PYTHON (interpreter with htex_ref and the test dependencies; default .venv/bin/python,
# created if missing), HTEX_BASE_IMAGE (e.g. debian:bookworm where a registry is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/install-docker.sh

python=${PYTHON:-$(bash scripts/ensure-venv.sh dev)}

info=${HTEX_CLUSTER_INFO:-$root/.cluster/compose.json}
mkdir -p "$(dirname "$info")"
basetemp="$root/.pytest-tmp-compose"

stop_cluster() {
    local rc=$?
    set +e
    "$python" -m clusters.compose down --info "$info"
    local down_rc=$?
    if [ "$rc" -eq 0 ] && [ "$down_rc" -ne 0 ]; then
        echo "test-slurm-compose: the cluster did not stop cleanly" >&2
        rc=$down_rc
    fi
    exit "$rc"
}
trap stop_cluster EXIT
# So that an interrupted run still stops the cluster (through the EXIT trap).
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
"$python" -m clusters.compose up --info "$info"
echo "test-slurm-compose: cluster up in $(( $(date +%s) - start )) s"

export HTEX_CLUSTER_INFO=$info
rm -rf "$basetemp"
"$python" -m pytest tests/cluster -p no:cacheprovider --basetemp="$basetemp" "$@"
