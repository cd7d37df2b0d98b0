"""Throughput of the FxLMS kernel: numba versus the NumPy reference and a plain C FxLMS.

Both weight updates (`controller.algorithm`: time, partitioned; `--variable-step` turns
`controller.variable_step` on for every run) at each length. Prints one
JSON line per implementation: impl, algorithm, dtype, taps, secondary_path_taps,
block_size, samples_per_s, real_time_factor (at 48 kHz), per-block call overhead. The C line
(`bench/fxlms_plain.c`, the textbook algorithm over the whole signal in one call, its time-domain
update band-limited like the kernel's by the same default `controller.delay_tolerance_samples`, built with
the system compiler at -O3 -march=native -ffast-math, so its dot products vectorize) is the yardstick measured in the same run, so the
numba kernel's `share_of_c` does not depend on how busy the machine is; it is skipped when
no C compiler is installed.

Every implementation also reports `ns_per_sample` and, for the numba kernel, `block_us`: the
callback's kernel time for one block, against the block period (667 us at 32 samples, 48 kHz).

Then one and two ears in one `EarsEngine` (`numba-ears`: one call per block for every ear) at
the `--ears-taps` lengths: `block_us` is the whole call, for both ears together.

    python bench/kernel.py [--seconds 10] [--taps 256 512 1024 2048] [--path-taps 128] [--block 32]
                           [--algorithms time partitioned] [--variable-step]
                           [--ears-taps 256 1024]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from device.contract.config import load_config  # noqa: E402
from device.core.dsp.reference import ReferenceFxlms  # noqa: E402
from device.core.dsp import layout as L  # noqa: E402
from device.core.engine import AncEngine  # noqa: E402

SAMPLE_RATE = 48000


def best_of_three(engine, reference: np.ndarray, error: np.ndarray, out: np.ndarray) -> float:
    """The fastest of three passes of `engine.process` over every block, s (reset before each)."""
    best = float("inf")
    for _ in range(3):
        engine.reset()
        start = time.perf_counter()
        for k in range(reference.shape[0]):
            engine.process(reference[k], error[k], out)
        best = min(best, time.perf_counter() - start)
    return best


VARIABLE_STEP = False


def make_engine(taps: int, path_taps: int, block: int, algorithm: str) -> AncEngine:
    cfg = load_config().replace("controller", taps=taps, secondary_path_taps=path_taps, algorithm=algorithm,
                                variable_step=VARIABLE_STEP)
    rng = np.random.default_rng(0)
    path = rng.standard_normal(path_taps) * np.exp(-np.arange(path_taps) / 20.0) * 0.3
    path[:8] = 0.0
    # A short baseline so the measurement is of the adapting controller.
    cfg = cfg.replace("safety", baseline_ms=1.0, fade_ms=1.0)
    return AncEngine.from_config(cfg, path, block_size=block)


def bench_numba(seconds: float, taps: int, path_taps: int, block: int, dtype, algorithm: str) -> dict:
    engine = make_engine(taps, path_taps, block, algorithm)
    engine.warm_up()
    rng = np.random.default_rng(1)
    n_blocks = int(seconds * SAMPLE_RATE) // block
    reference = (rng.standard_normal((n_blocks, block)) * 0.1).astype(dtype)
    error = (rng.standard_normal((n_blocks, block)) * 0.05).astype(dtype)
    out = np.zeros(block, dtype=dtype)
    best = best_of_three(engine, reference, error, out)
    assert engine.mode == "run", engine.snapshot()
    samples = n_blocks * block
    # Per-call overhead: the same calls on empty blocks.
    empty = np.zeros(0, dtype=dtype)
    calls = 20000
    start = time.perf_counter()
    for _ in range(calls):
        engine.process(empty, empty, empty)
    overhead = (time.perf_counter() - start) / calls
    return {
        "impl": "numba",
        "algorithm": algorithm,
        "variable_step": VARIABLE_STEP,
        "dtype": np.dtype(dtype).name,
        "taps": taps,
        "secondary_path_taps": path_taps,
        "block_size": block,
        "samples_per_s": round(samples / best),
        "ns_per_sample": round(1e9 * best / samples, 1),
        "block_us": round(1e6 * best / n_blocks, 1),
        "real_time_factor": round(samples / best / SAMPLE_RATE, 1),
        "call_overhead_us": round(overhead * 1e6, 2),
        "call_overhead_pct_of_block": round(100 * overhead / (block / SAMPLE_RATE), 3),
    }


def bench_ears(seconds: float, taps: int, path_taps: int, block: int, ears: int, dtype, algorithm: str) -> dict:
    """`ears` controllers in one `EarsEngine`: one numba call per block for all of them (the
    second ear's estimate is a different, shorter path, so the padding is exercised)."""
    from device.core.ears import EarsEngine

    engines = [make_engine(taps, path_taps - 16 * ear, block, algorithm) for ear in range(ears)]
    engine = EarsEngine([f"ear{ear}" for ear in range(ears)], engines)
    engine.warm_up()
    rng = np.random.default_rng(1)
    n_blocks = int(seconds * SAMPLE_RATE) // block
    reference = (rng.standard_normal((n_blocks, ears, block)) * 0.1).astype(dtype)
    error = (rng.standard_normal((n_blocks, ears, block)) * 0.05).astype(dtype)
    out = np.zeros((ears, block), dtype=dtype)
    best = best_of_three(engine, reference, error, out)
    assert all(ear.mode == "run" for ear in engine.ears), engine.snapshots()
    samples = n_blocks * block
    return {
        "impl": "numba-ears",
        "algorithm": algorithm,
        "ears": ears,
        "dtype": np.dtype(dtype).name,
        "taps": taps,
        "secondary_path_taps": path_taps,
        "block_size": block,
        "block_us": round(1e6 * best / n_blocks, 1),
        "block_us_per_ear": round(1e6 * best / n_blocks / ears, 1),
        "share_of_period": round(best / n_blocks / (block / SAMPLE_RATE), 4),
        "real_time_factor": round(samples / best / SAMPLE_RATE, 1),
    }


def bench_reference(seconds: float, taps: int, path_taps: int, block: int, algorithm: str) -> dict:
    engine = make_engine(taps, path_taps, block, algorithm)
    reference_impl = ReferenceFxlms(taps, engine.secondary_path, None, engine.params.copy())
    rng = np.random.default_rng(1)
    n_blocks = max(1, int(seconds * SAMPLE_RATE) // block)
    reference = rng.standard_normal((n_blocks, block)) * 0.1
    error = rng.standard_normal((n_blocks, block)) * 0.05
    start = time.perf_counter()
    for k in range(n_blocks):
        reference_impl.process(reference[k], error[k])
    elapsed = time.perf_counter() - start
    samples = n_blocks * block
    return {
        "impl": "numpy-reference",
        "algorithm": algorithm,
        "dtype": "float64",
        "taps": taps,
        "secondary_path_taps": path_taps,
        "block_size": block,
        "samples_per_s": round(samples / elapsed),
        "real_time_factor": round(samples / elapsed / SAMPLE_RATE, 3),
    }


def bench_plain_c(seconds: float, taps: int, path_taps: int, algorithm: str) -> dict | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fxlms_plain.c")
    with tempfile.TemporaryDirectory() as work:
        library = os.path.join(work, "fxlms_plain.so")
        subprocess.run([compiler, "-O3", "-march=native", "-ffast-math", "-shared", "-fPIC", "-o", library, source], check=True)
        double_p = ctypes.POINTER(ctypes.c_double)
        arguments = [double_p, double_p, double_p, ctypes.c_long, double_p, ctypes.c_int, double_p,
                     ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double]
        engine = make_engine(taps, path_taps, 32, algorithm)
        if algorithm == "partitioned":
            fxlms = ctypes.CDLL(library).fxlms_partitioned_plain
            fxlms.argtypes = arguments + [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double]
            p = engine.params
            extra = (int(p[L.P_UPDATE_BLOCK]), float(p[L.P_POWER_COEF]), float(p[L.P_BIN_FLOOR]),
                     float(p[L.P_DELAY_TOLERANCE]))
        else:
            fxlms = ctypes.CDLL(library).fxlms_plain
            fxlms.argtypes = arguments + [ctypes.c_double] * 5
            p = engine.params
            extra = tuple(float(p[index]) for index in (L.P_BAND_B0, L.P_BAND_B1, L.P_BAND_B2, L.P_BAND_A1, L.P_BAND_A2))
        fxlms.restype = ctypes.c_long
        rng = np.random.default_rng(1)
        n = int(seconds * SAMPLE_RATE)
        reference, error = rng.standard_normal(n) * 0.1, rng.standard_normal(n) * 0.05
        out, weights = np.zeros(n), np.zeros(taps)
        path = np.ascontiguousarray(engine.secondary_path)

        def pointer(array):
            return array.ctypes.data_as(double_p)

        best = float("inf")
        for _ in range(3):
            weights[:] = 0.0
            start = time.perf_counter()
            fxlms(pointer(reference), pointer(error), pointer(out), n, pointer(weights), taps, pointer(path),
                  path_taps, 0.05, 1e-7, 1e-6, *extra)
            best = min(best, time.perf_counter() - start)
    return {
        "impl": "c-plain",
        "algorithm": algorithm,
        "dtype": "float64",
        "taps": taps,
        "secondary_path_taps": path_taps,
        "block_size": n,
        "samples_per_s": round(n / best),
        "ns_per_sample": round(1e9 * best / n, 1),
        "real_time_factor": round(n / best / SAMPLE_RATE, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per numba run")
    parser.add_argument("--taps", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--path-taps", type=int, default=128)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--algorithms", nargs="+", choices=("time", "partitioned"), default=["time", "partitioned"])
    parser.add_argument("--variable-step", action="store_true", help="controller.variable_step: true for the numba runs")
    parser.add_argument("--ears-taps", type=int, nargs="*", default=[256, 1024],
                        help="controller lengths of the one- and two-ear EarsEngine runs (none: skip them)")
    args = parser.parse_args()
    global VARIABLE_STEP
    VARIABLE_STEP = args.variable_step
    print(json.dumps({"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()}))
    for taps in args.taps:
        for algorithm in args.algorithms:
            plain_c = bench_plain_c(args.seconds, taps, args.path_taps, algorithm)
            for dtype in (np.float64, np.float32):
                result = bench_numba(args.seconds, taps, args.path_taps, args.block, dtype, algorithm)
                if plain_c is not None:
                    result["share_of_c"] = round(result["samples_per_s"] / plain_c["samples_per_s"], 3)
                print(json.dumps(result), flush=True)
            if not VARIABLE_STEP:  # the NumPy reference has no variable step
                print(json.dumps(bench_reference(min(args.seconds, 0.2), taps, args.path_taps, args.block, algorithm)),
                      flush=True)
            if plain_c is not None:
                print(json.dumps(plain_c), flush=True)
    for taps in args.ears_taps:
        for algorithm in args.algorithms:
            for ears in (1, 2):
                print(json.dumps(bench_ears(args.seconds, taps, args.path_taps, args.block, ears, np.float64, algorithm)),
                      flush=True)


if __name__ == "__main__":
    main()
