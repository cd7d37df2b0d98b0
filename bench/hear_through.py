"""Hear-through level against the open ear, per octave band, on a simulated rig.

    python bench/hear_through.py [--plant headphone] [--seconds 3]

Seeded white noise through the closed loop in `hear-through` mode (the default config, the
secondary path identified as the runtime does): the error mic with the speaker playing the
equalized outer mic, and with it silent (the passive cup), each against the ambient at the
outer mic (what an open ear would hear), from 1 s on (the equalizer is fixed, but the
limiter's and the fades' state settles).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from device.contract.config import load_config  # noqa: E402
from device.core.engine import AncEngine  # noqa: E402
from simulator.plant import Plant, run_closed_loop  # noqa: E402
from simulator.run import identify_plant  # noqa: E402
from simulator.scenes import generate_scene  # noqa: E402

BLOCK = 32
BANDS_HZ = (62.5, 125, 250, 500, 1000, 2000, 4000, 8000)


def main() -> int:
    import scipy.signal

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plant", default="headphone")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cfg = load_config().replace("anc", mode="hear-through")
    plant = Plant.load(args.plant)
    rate = plant.sample_rate
    secondary, _ = identify_plant(cfg, plant, seed=0)
    engine = AncEngine.from_config(cfg, secondary.estimate)
    scene = generate_scene("white", args.seconds, rate, seed=4) * 0.1

    def step(ref, err, out, meta):
        engine.process(ref, err, out)

    run = run_closed_loop(scene, plant, step, BLOCK, seed=0)
    window = slice(rate, None)
    f, open_ear = scipy.signal.welch(run.disturbance_reference[window], rate, nperseg=8192)
    _, passive = scipy.signal.welch(run.error_off[window], rate, nperseg=8192)
    _, through = scipy.signal.welch(run.error_on[window], rate, nperseg=8192)
    print(f"plant {plant.name}, {args.seconds:g} s of white noise, hear-through "
          f"({cfg.anc.hear_through_taps} taps, gain {cfg.anc.hear_through_gain_db:+.1f} dB)")
    print("| octave band | passive cup vs open ear | hear-through vs open ear |")
    print("|---|---|---|")
    for low in BANDS_HZ:
        band = (f >= low) & (f < 2 * low)
        passive_db = 10 * np.log10(passive[band].sum() / open_ear[band].sum())
        through_db = 10 * np.log10(through[band].sum() / open_ear[band].sum())
        print(f"| {low:g}-{2 * low:g} Hz | {passive_db:+.1f} dB | {through_db:+.1f} dB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
