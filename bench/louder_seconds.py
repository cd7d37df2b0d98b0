"""What a second louder than control off is made of, for one pair of the cancellation matrix.

Runs the pair as `bench/cancellation.py` does (whole runtime, default configuration, 16 s) and
prints per second: the attenuation, the anti-noise's own power at the error mic and twice its
correlation with the disturbance there, both as fractions of the disturbance's power (the
second is louder than off when the first outweighs minus the second), and the range of the
no-harm output scale the worker set during the second.

    python bench/louder_seconds.py PLANT SCENE      e.g. room-15 construction

Deterministic (the matrix's seeds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cancellation  # noqa: E402  (sets NUMBA_CACHE_DIR before the runtime is imported)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plant")
    parser.add_argument("scene")
    parser.add_argument("--seconds", type=float, default=16.0)
    args = parser.parse_args()
    from device.contract.config import load_config
    from device.core.dsp.layout import S_SAMPLES
    from device.core.engine import AncEngine
    from simulator.run import simulate

    scales: list[tuple[float, float]] = []
    set_output_scale = AncEngine.set_output_scale

    # Every scale the worker sets, with the sample count it was set at.
    def recording(engine, value):
        scales.append((float(engine.status[S_SAMPLES]), value))
        return set_output_scale(engine, value)

    AncEngine.set_output_scale = recording
    with tempfile.TemporaryDirectory() as work:
        directory = Path(work)
        scenes = cancellation.write_scenes(directory, args.seconds, [args.scene])
        plants = cancellation.write_plants(directory, False)
        sim = simulate(scenes[args.scene], load_config(), plants.get(args.plant, args.plant), keep_signals=True)
    fs = sim.result.sample_rate
    off, on = sim.result.error_off, sim.result.error_on
    anti = on - off
    times = np.array([sample / fs for sample, _ in scales])
    values = np.array([value for _, value in scales])
    print(f"{'s':>3} {'atten dB':>9} {'anti power':>11} {'2 x cross':>10} {'scale':>12}")
    for second in range(off.size // fs):
        part = slice(second * fs, (second + 1) * fs)
        disturbance_power = float(np.mean(off[part] ** 2))
        during = values[(times >= second) & (times < second + 1)]
        scale = f"{during.min():.3f}-{during.max():.3f}" if during.size else "unchanged"
        print(f"{second:3d} {10 * np.log10(disturbance_power / np.mean(on[part] ** 2)):+9.3f} "
              f"{np.mean(anti[part] ** 2) / disturbance_power:11.4f} "
              f"{2 * np.mean(off[part] * anti[part]) / disturbance_power:+10.4f} {scale:>12}")
    print(f"attenuation {sim.summary['attenuation_db']} dB, watchdog trips {sim.summary['watchdog_trips']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
