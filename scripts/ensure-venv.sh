#!/usr/bin/env bash
# Make sure .venv (in the repository root) has htex_ref installed with the given extras, and print its
# Python's path. A venv left half-made by an interrupted run (python but no pip) is made again.
#
#   python=$(bash scripts/ensure-venv.sh dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:?usage: ensure-venv.sh EXTRAS (e.g. dev, sim)}
.venv/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf .venv; python3 -m venv .venv >&2; }
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[$extras]" >&2
echo "$(pwd)/.venv/bin/python"
