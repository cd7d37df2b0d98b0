#!/usr/bin/env bash
# Set up, then run the whole test suite, hardware-in-the-loop bench included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Kernels compile once into the cache; later runs start in well under a second.
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.cache/numba}"
exec .venv/bin/python -m pytest "$@"
