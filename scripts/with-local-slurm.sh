#!/usr/bin/env bash
# Run one command against a local multi-node Slurm (clusters/local_slurm.py: nodes in network namespaces)
# that this script starts first and always stops afterwards, whatever happened; the command finds the
# cluster through HTEX_CLUSTER_INFO. Exits with the command's code, or 1 if the cluster did not start or
# stop cleanly (its logs are then kept and named). Needs root and Slurm installed (install-slurm.sh).
#
#   with-local-slurm.sh NAME --python PY --dir DIR --prefix PREFIX [up options...] -- COMMAND [ARGS...]
#
# NAME labels the messages; PY is the interpreter with htex_ref installed (the nodes share this file
# system, so their worker pools run with it); up options (e.g. --nodes 3 --accounting) go to `up`.
set -euo pipefail
cd "$(dirname "$0")/.."

name=$1
shift
python="" cluster_dir="" prefix="" up_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case $1 in
        --python) python=$2; shift 2 ;;
        --dir) cluster_dir=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        *) up_args+=("$1"); shift ;;
    esac
done
[ "${1:-}" = "--" ] && shift
if [ -z "$python" ] || [ -z "$cluster_dir" ] || [ -z "$prefix" ] || [ $# -eq 0 ]; then
    echo "usage: $0 NAME --python PY --dir DIR --prefix PREFIX [up options...] -- COMMAND [ARGS...]" >&2
    exit 2
fi
# Outside the cluster directory, which up clears and down removes.
info="$cluster_dir.info.json"

stop_cluster() {
    local rc=$? keep=()
    # After a failure keep the cluster's logs (the daemons and network are removed all the same).
    [ "$rc" -ne 0 ] && keep=(--keep-dir)
    local t0=$SECONDS
    if ! "$python" -m clusters.local_slurm down --info "$info" --dir "$cluster_dir" --prefix "$prefix" "${keep[@]}"; then
        echo "$name: the cluster did not stop cleanly (see above)" >&2
        rc=1
    fi
    echo "$name: cluster down took $((SECONDS - t0)) s" >&2
    [ "$rc" -ne 0 ] && [ -d "$cluster_dir/log" ] && echo "$name: cluster logs kept in $cluster_dir/log" >&2
    exit "$rc"
}
trap stop_cluster EXIT
# So that an interrupted run still stops the cluster (through the EXIT trap).
trap 'exit 130' INT
trap 'exit 143' TERM

"$python" -m clusters.local_slurm up --info "$info" --dir "$cluster_dir" --prefix "$prefix" "${up_args[@]}"
HTEX_CLUSTER_INFO="$info" "$@"
