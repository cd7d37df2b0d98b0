"""What each controller preset costs or gains on each scene type, in the simulator.

    python -m models.preset_cost [--seconds 20] [--plant headphone] [--json FILE] [--class-specific]

For every scene type of `simulator.scenes` (seeded, generated at 48 kHz) and every preset of
`presets:` in the config, the whole runtime is simulated with that preset in force from the
start (the classifier off, so nothing switches), plus once with the neutral settings (the
`controller:` section, what the device runs while no class is known or the class is
`unknown`). Printed: steady-state attenuation in dB per scene and preset, the difference to
neutral, and watchdog trips. A preset that a wrong classification can select should never
cost more than 1 dB against neutral on any scene, and never trip the watchdog.

``--class-specific`` measures `CLASS_SPECIFIC_PRESETS` instead of the config's: the settings
tuned per class (small steps for broadband noise, lower intensity for speech) that the table
in docs/classifier.md judged, and rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from device.contract.config import NOISE_CLASSES, load_config

# Per-class settings measured against neutral (docs/classifier.md, "Presets"): broadband noise
# that the latency makes unpredictable got a small step against misadjustment noise, speech a
# lower intensity.
CLASS_SPECIFIC_PRESETS = {
    "white": {"step_size": 0.01, "leakage": 1.0e-6, "intensity": 1.0},
    "pink": {"step_size": 0.01, "leakage": 1.0e-6, "intensity": 1.0},
    "traffic": {"step_size": 0.02, "leakage": 1.0e-7, "intensity": 1.0},
    "office": {"step_size": 0.01, "leakage": 1.0e-6, "intensity": 0.8},
    "construction": {"step_size": 0.05, "leakage": 1.0e-7, "intensity": 1.0},
    "cafe": {"step_size": 0.01, "leakage": 1.0e-6, "intensity": 0.8},
}


def measure(seconds: float = 20.0, plant: str | None = None, config: str | None = None,
            scene_types: tuple[str, ...] | None = None, presets: dict | None = None, log=print) -> dict:
    from simulator.run import simulate
    from simulator.scenes import SCENE_TYPES, generate_scene, write_scene

    base = load_config(config).replace("classifier", enabled=False)
    if presets:
        base = base.replace("presets", **presets)
    conditions = {"neutral": base}
    for name in NOISE_CLASSES:
        preset = base.presets[name]
        cfg = base.replace("controller", step_size=preset.step_size, leakage=preset.leakage)
        conditions[name] = cfg.replace("anc", intensity=min(1.0, preset.intensity * base.anc.intensity))
    table: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in scene_types or SCENE_TYPES:
            path = Path(tmp) / f"{kind}.wav"
            write_scene(path, generate_scene(kind, seconds, 48000, seed=0), 48000)
            row = {}
            for name, cfg in conditions.items():
                summary = simulate(path, cfg, plant).summary
                row[name] = {"attenuation_db": summary["attenuation_db"],
                             "watchdog_trips": summary["watchdog_trips"]}
                log(f"preset_cost: {kind:<12} {name:<12} {summary['attenuation_db']:6.2f} dB  "
                    f"trips {summary['watchdog_trips']}")
            for name in NOISE_CLASSES:
                row[name]["vs_neutral_db"] = round(row[name]["attenuation_db"] - row["neutral"]["attenuation_db"], 2)
            table[kind] = row
    return {"seconds": seconds, "plant": plant or base.simulator.plant, "table": table}


def format_table(result: dict) -> str:
    names = ["neutral", *NOISE_CLASSES]
    lines = ["| scene | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for kind, row in result["table"].items():
        cells = [f"{row['neutral']['attenuation_db']:.1f}"]
        for name in NOISE_CLASSES:
            v = row[name]
            cell = f"{v['vs_neutral_db']:+.1f}"
            if v["watchdog_trips"]:
                cell += f" ({v['watchdog_trips']} trips)"
            cells.append(cell)
        if row["neutral"]["watchdog_trips"]:
            cells[0] += f" ({row['neutral']['watchdog_trips']} trips)"
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.preset_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--plant", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    parser.add_argument("--class-specific", action="store_true", help="measure CLASS_SPECIFIC_PRESETS")
    args = parser.parse_args(argv)
    result = measure(args.seconds, args.plant, args.config,
                     presets=CLASS_SPECIFIC_PRESETS if args.class_specific else None)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("attenuation with neutral settings (dB), and each preset's difference to it (dB):")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
