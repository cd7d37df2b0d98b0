"""Speed and peak memory of `anc-device --simulate ... --out DIR` for 1, 10 and 60 minutes of scene.

    python bench/simulate.py [--minutes 1 10 60] [--plant headphone]

Each length runs in its own process (so its peak resident memory, VmHWM, is its own) and
prints:
  whole     scene length / wall time of the whole command (load, identification, the closed
            loop, the causal optimum, every output file, report.png)
  loop      the summary's real_time_factor: the closed loop (plant simulation, engine, worker)
  device    the summary's engine_real_time_factor: engine and worker alone, without the plant
  cpu       scene length / CPU time of the whole command: what the wall-time figures would be
            on an idle machine with one core (the development VM is shared, so wall time moves)
  peak RSS  VmHWM of the process, MiB

The scene is the seeded engine-hum scene (`anc-device scene engine_hum`), generated one
minute at a time with a new seed per minute and joined with a 50 ms crossfade, so an hour of
it never has to be held in memory; it is written once per length to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE = 48000
CROSSFADE_S = 0.05


def write_long_scene(path: Path, minutes: float) -> None:
    import numpy as np
    import soundfile

    from simulator.scenes import generate_scene

    fade = int(CROSSFADE_S * RATE)
    ramp = np.linspace(0.0, 1.0, fade)
    previous_tail = None
    whole = int(round(minutes * 60))
    pieces = [60] * (whole // 60) + ([whole % 60] if whole % 60 else [])
    with soundfile.SoundFile(str(path), "w", samplerate=RATE, channels=1, subtype="PCM_16") as handle:
        for index, seconds in enumerate(pieces):
            piece = generate_scene("engine_hum", seconds + CROSSFADE_S, RATE, seed=index)
            if previous_tail is not None:
                piece[:fade] = previous_tail * (1 - ramp) + piece[:fade] * ramp
            previous_tail = piece[-fade:].copy()
            handle.write(piece if index == len(pieces) - 1 else piece[:-fade])


def child(scene: str, out: str, plant: str) -> None:
    """One measured run, in this process: the command itself, then its figures on stdout."""
    import contextlib
    import io

    from device.cli import main

    started, cpu_started = time.perf_counter(), time.process_time()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = main(["--simulate", scene, "--plant", plant, "--out", out, "--json"])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    summary = json.loads(captured.getvalue())
    peak_kib = None
    with open("/proc/self/status") as status_file:
        for line in status_file:
            if line.startswith("VmHWM:"):
                peak_kib = int(line.split()[1])
    if peak_kib is None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"status": status, "duration_s": summary["duration_s"], "wall_s": wall, "cpu_s": cpu,
                      "loop_x": summary["real_time_factor"], "device_x": summary["engine_real_time_factor"],
                      "peak_rss_mib": peak_kib / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--plant", default="headphone")
    parser.add_argument("--child", nargs=2, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.plant)
        return 0
    env = {**os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
    print(f"anc-device --simulate SCENE --plant {args.plant} --out DIR --json, engine_hum scene at {RATE} Hz; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'scene':>8} {'whole':>7} {'loop':>7} {'device':>7} {'cpu':>7} {'peak RSS':>9}")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory(prefix="anc-bench-") as tmp:
            scene = Path(tmp) / "scene.wav"
            write_long_scene(scene, minutes)
            run = subprocess.run([sys.executable, __file__, "--plant", args.plant, "--child", str(scene),
                                  str(Path(tmp) / "out")], capture_output=True, text=True, env=env, cwd=ROOT)
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return 1
            figures = json.loads(run.stdout.strip().splitlines()[-1])
        duration = figures["duration_s"]
        print(f"{minutes:>6g} m {duration / figures['wall_s']:>6.1f}x {figures['loop_x']:>6.1f}x "
              f"{figures['device_x']:>6.1f}x {duration / figures['cpu_s']:>6.1f}x {figures['peak_rss_mib']:>5.0f} MiB",
              flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
