"""`anc-device scene TYPE FILE`: write a deterministic example scene of a noise type."""

from __future__ import annotations

from pathlib import Path

from device.contract.errors import UserError

NAME = "scene"
HELP = "write a seeded example scene (white, pink, traffic, office, construction, cafe, engine_hum) to a WAV file"


def add_arguments(parser) -> None:
    from simulator.scenes import SCENE_TYPES

    parser.add_argument("type", choices=SCENE_TYPES, help="noise type")
    parser.add_argument("file", help="WAV file to write (16-bit PCM)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length in s (default 10)")
    parser.add_argument("--rate", type=int, default=48000, help="sample rate in Hz (default 48000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--level", type=float, default=-20.0, help="RMS level in dBFS (default -20)")


def run(args) -> int:
    from simulator.scenes import generate_scene, write_scene

    if not 0.5 <= args.seconds <= 3600:
        raise UserError(f"--seconds: {args.seconds} is out of range [0.5, 3600] s")
    if not 8000 <= args.rate <= 192000:
        raise UserError(f"--rate: {args.rate} is out of range [8000, 192000] Hz")
    if not -80 <= args.level <= -3:
        raise UserError(f"--level: {args.level} is out of range [-80, -3] dBFS")
    path = Path(args.file)
    if not path.parent.exists():
        raise UserError(f"{path}: directory {path.parent} does not exist")
    write_scene(path, generate_scene(args.type, args.seconds, args.rate, args.seed, args.level), args.rate)
    print(f"wrote {path} ({args.type}, {args.seconds:g} s at {args.rate} Hz, seed {args.seed}, {args.level:g} dBFS RMS)")
    return 0
