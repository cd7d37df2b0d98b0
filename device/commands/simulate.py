"""`anc-device --simulate scene.wav`: the whole runtime on a WAV scene, faster than real time."""

from __future__ import annotations

import json
import sys

from device.commands.run import with_mode
from device.contract.config import load_config

NAME = "simulate"
HELP = "run the controller, classifier and metrics on a WAV scene through a simulated plant"


def add_arguments(parser) -> None:
    parser.add_argument("scene", help="WAV (or FLAC/OGG) file, mono, or one channel per ear for a plant with ears; resampled to the plant rate")
    parser.add_argument("--plant", help="built-in plant preset (headphone, duct, headphone-stereo) or plant YAML file; default from config")
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--out", help="directory for error-mic WAVs off/on, anti-noise, metrics.jsonl, paths, report.png")
    parser.add_argument("--mode", help="what the speaker plays: off, anc or hear-through (default: anc.mode of the config)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def run(args) -> int:
    # Heavy imports after argument parsing keep `--help` instant.
    from simulator.run import format_summary, simulate

    cfg = load_config(args.config)
    if args.mode is not None:
        cfg = with_mode(cfg, args.mode)
    sim = simulate(args.scene, cfg, args.plant, out=args.out,
                   progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(sim.summary))
    else:
        print(format_summary(sim.summary))
        if sim.written:
            names = sorted(path.name for path in sim.written)
            print(f"wrote        {len(names)} files to {args.out.rstrip('/')}/: {', '.join(names)}")
    return 0
