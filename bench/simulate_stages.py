"""Where the CPU time of `anc-device --simulate` goes, stage by stage.

    python bench/simulate_stages.py [SCENE] [--plant headphone] [--out DIR]

Runs `simulator.run.simulate` once in this process (the numba cache warm: run it twice on a
fresh clone) with a CPU-time clock (`time.process_time`) around each stage, and prints each
stage's CPU seconds and milliseconds per second of scene. Indented stages are parts of the
stage above them. CPU time, not wall time, so the figures move less with the load of a shared
machine; 1000 / (ms per s) is the real-time factor that stage alone would allow on one core.
The last line is the engine's kernel alone (the compiled loop's own clock around each
`process_block` call): the real-time factor the device side could reach with a worker that
cost nothing.
The default scene is the bundled engine-hum scene (20 s, resampled to 48 kHz).
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # as device/cli.py does, before numpy is imported

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

# (module, owner attribute or None, function, label, depth) in the order they are printed.
STAGES = [
    ("simulator.run", None, "identify_rig_of_plant", "identification (probe, fits)", 0),
    ("simulator.run", None, "compose_session", "session (classifier, engine, numba cache load)", 0),
    ("simulator.closed_loop", "ClosedLoop", "run", "closed loop", 0),
    ("simulator.closed_loop", None, "_closed_loop_blocks", "plant mixing + engine kernel (numba)", 1),
    ("device.core.session", "Session", "push_blocks", "ring writes", 1),
    ("device.core.session", "Session", "poll", "worker", 1),
    ("device.core.worker", "Worker", "_estimate", "cancellation estimate filter and energies", 2),
    ("device.core.worker", "Worker", "_classify", "classification", 2),
    ("device.core.features", "StreamDecimator", "process", "48 -> 16 kHz decimation", 3),
    ("device.core.classifier", "NoiseClassifier", "classify", "features + ONNX forest", 3),
    ("device.core.features", None, "feature_vector", "features", 4),
    ("device.core.features", None, "power_and_peak", "level and peak frequency", 3),
    ("device.core.worker", "Worker", "_close_interval", "metrics intervals and records", 2),
    ("simulator.run", "Measurements", "add", "measurements (frames, per-second rows)", 0),
    ("simulator.run", "_Outputs", "add", "WAV writing", 0),
    ("simulator.run", None, "causal_optima", "causal optimum", 0),
    ("simulator.run", None, "_write_final_outputs", "final outputs (paths, summary, report.png)", 0),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", nargs="?", default=str(ROOT / "simulator" / "scenes" / "engine_hum.wav"))
    parser.add_argument("--plant", default="headphone")
    parser.add_argument("--out", help="also write the outputs (WAVs, metrics, report.png) there")
    args = parser.parse_args()

    import importlib

    from device.contract.config import load_config

    totals: dict[str, float] = {}

    def timed(function, label):
        @functools.wraps(function)
        def wrapper(*a, **k):
            started = time.process_time()
            try:
                return function(*a, **k)
            finally:
                totals[label] = totals.get(label, 0.0) + time.process_time() - started
        return wrapper

    for module_name, owner_name, name, label, _ in STAGES:
        module = importlib.import_module(module_name)
        owner = module if owner_name is None else getattr(module, owner_name)
        setattr(owner, name, timed(getattr(owner, name), label))

    import simulator.closed_loop
    from simulator.run import simulate

    loops = []
    loop_init = simulator.closed_loop.EngineClosedLoop.__init__

    def keep_loop(self, *a, **k):
        loop_init(self, *a, **k)
        loops.append(self)

    simulator.closed_loop.EngineClosedLoop.__init__ = keep_loop
    started = time.process_time()
    sim = simulate(args.scene, load_config(), args.plant, out=args.out)
    total = time.process_time() - started
    duration = sim.summary["duration_s"]
    print(f"{Path(args.scene).name} on {args.plant}: {duration:.1f} s of scene at {sim.summary['sample_rate']} Hz, "
          f"{sim.summary['taps']} taps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'stage':58s} {'CPU s':>7s} {'ms per s':>9s}")
    for _, _, _, label, depth in STAGES:
        if label in totals:
            print(f"{'  ' * depth + label:58s} {totals[label]:7.3f} {1e3 * totals[label] / duration:9.2f}")
    print(f"{'simulate() in all':58s} {total:7.3f} {1e3 * total / duration:9.2f}")
    if loops:
        # The kernel calls alone, timed by the monotonic clock inside the compiled loop (wall
        # time of calls of ~20 us, so little of other processes' time is in it).
        kernel = loops[0].kernel_time_s
        print(f"{'engine kernel alone (process_block calls, monotonic clock)':58s} {kernel:7.3f} "
              f"{1e3 * kernel / duration:9.2f}   {duration / max(kernel, 1e-9):.0f}x real time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
