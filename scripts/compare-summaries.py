#!/usr/bin/env python3
"""Compares two `anc-device --simulate --json` summaries of the same scene, e.g. one run on
x86_64 and one on aarch64: every figure must agree within a tolerance, except the speed
figures and the session id, which differ by nature.

usage: compare-summaries.py [--tolerance-db DB] NAME EXPECTED.json ACTUAL.json

Prints one line per mismatch (`NAME: key: expected X, got Y (tolerance T)`) and exits 1 if
there is any, 0 otherwise. Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# Figures that measure the machine, not the algorithm, or name the run.
IGNORED = {"real_time_factor", "engine_real_time_factor", "session_id"}


def tolerance(key: str, tolerance_db: float) -> float:
    """Absolute tolerance for one numeric figure, chosen by its unit (the key's suffix)."""
    if key.endswith("_db") or key.endswith("_dbfs"):
        return tolerance_db
    if key.endswith("_ms") or key.endswith("_s"):
        # Times are read off block or window grids: one analysis step of slack.
        return 0.25 if key.endswith("_s") else 0.05
    if "confidence" in key:
        return 0.01
    return 1e-6


def compare(path: str, expected, actual, tolerance_db: float, out: list[str]) -> None:
    key = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if key in IGNORED:
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        for name in sorted(set(expected) | set(actual)):
            if name in IGNORED:
                continue
            sub = f"{path}.{name}" if path else name
            if name not in actual:
                out.append(f"{sub}: missing on this side (expected {expected[name]!r})")
            elif name not in expected:
                out.append(f"{sub}: not in the reference (got {actual[name]!r})")
            else:
                compare(sub, expected[name], actual[name], tolerance_db, out)
        return
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            out.append(f"{path}: {len(expected)} items expected, got {len(actual)}: {expected!r} vs {actual!r}")
            return
        for i, (e, a) in enumerate(zip(expected, actual)):
            compare(f"{path}[{i}]", e, a, tolerance_db, out)
        return
    numeric = (int, float)
    if (isinstance(expected, numeric) and isinstance(actual, numeric)
            and not isinstance(expected, bool) and not isinstance(actual, bool)):
        if isinstance(expected, int) and isinstance(actual, int):
            if expected != actual:
                out.append(f"{path}: expected {expected}, got {actual} (exact)")
            return
        tol = tolerance(key, tolerance_db)
        if not (math.isfinite(expected) and math.isfinite(actual)) or abs(expected - actual) > tol:
            out.append(f"{path}: expected {expected:.6g}, got {actual:.6g}, off by {abs(expected - actual):.3g}"
                       f" (tolerance {tol:g})")
        return
    if expected != actual:
        out.append(f"{path}: expected {expected!r}, got {actual!r} (exact)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tolerance-db", type=float, default=0.1)
    parser.add_argument("name")
    parser.add_argument("expected")
    parser.add_argument("actual")
    args = parser.parse_args(argv)
    try:
        with open(args.expected) as f:
            expected = json.load(f)
        with open(args.actual) as f:
            actual = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"{args.name}: cannot read a summary: {exc}")
        return 1
    mismatches: list[str] = []
    compare("", expected, actual, args.tolerance_db, mismatches)
    for line in mismatches:
        print(f"{args.name}: {line}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
