"""Two ears against each ear alone: does a second cup (and its crosstalk) cost cancellation?

    python bench/ears.py [--scene simulator/scenes/engine_hum.wav] [--plant headphone-stereo]

Runs the whole two-ear simulation (`simulator.ears.simulate_ears`) on the plant with crosstalk,
without it, and on each ear alone (the other cup taken off), and prints each ear's steady-state
attenuation and its difference to the ear alone. Deterministic: the figures do not move with
the machine's load (the speed column does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default=str(ROOT / "simulator" / "scenes" / "engine_hum.wav"))
    parser.add_argument("--plant", default="headphone-stereo")
    args = parser.parse_args(argv)

    from device.contract.config import load_config
    from simulator.ears import EarsPlant, simulate_ears

    cfg = load_config()
    plant = EarsPlant.load(args.plant)
    alone = {}
    for name in plant.names:
        alone[name] = simulate_ears(args.scene, cfg, plant.only(name)).summary["ears"][name]
    print(f"scene {Path(args.scene).name}, plant {plant.name}: steady-state attenuation per ear, dB "
          f"(overall / 50-1000 Hz band), and the difference to the ear alone")
    print("| run | " + " | ".join(f"{name} | {name} - alone" for name in plant.names) + " | watchdog trips |")
    print("|---|" + "---|---|" * len(plant.names) + "---|")
    print("| each ear alone | " + " | ".join(f"{alone[n]['attenuation_db']:.2f} / {alone[n]['attenuation_band_db']:.2f} | -"
                                            for n in plant.names)
          + f" | {sum(alone[n]['watchdog_trips'] for n in plant.names)} |")
    for label, variant in (("both ears, crosstalk on", plant), ("both ears, crosstalk off", plant.without_crosstalk())):
        ears = simulate_ears(args.scene, cfg, variant).summary["ears"]
        cells = [f"{ears[n]['attenuation_db']:.2f} / {ears[n]['attenuation_band_db']:.2f} | "
                 f"{ears[n]['attenuation_db'] - alone[n]['attenuation_db']:+.2f}" for n in plant.names]
        print(f"| {label} | " + " | ".join(cells) + f" | {sum(ears[n]['watchdog_trips'] for n in plant.names)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
