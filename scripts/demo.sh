#!/usr/bin/env bash
# Quick start: set up, then run the controller on a bundled scene through the simulated
# over-ear headphone rig, writing WAVs, metrics and a PNG report into out/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/anc-device --simulate simulator/scenes/engine_hum.wav --plant headphone --out out/demo "$@"
