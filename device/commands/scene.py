"""`anc-device scene TYPE FILE`: write a deterministic example scene of a noise type."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from device.contract.errors import UserError

NAME = "scene"
HELP = "write a seeded example scene (white, pink, traffic, office, construction, cafe, engine_hum) to a WAV file"

FORMATS = {".wav": "WAV", ".flac": "FLAC"}  # by file-name extension; 16-bit PCM in both


def add_arguments(parser) -> None:
    from simulator.scenes import SCENE_TYPES

    parser.add_argument("type", choices=SCENE_TYPES, help="noise type")
    parser.add_argument("file", help="file to write: NAME.wav (16-bit PCM WAV) or NAME.flac (16-bit FLAC)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length in s (default 10)")
    parser.add_argument("--rate", type=int, default=48000, help="sample rate in Hz (default 48000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--level", type=float, default=-20.0, help="RMS level in dBFS (default -20)")


def check_destination(path: Path) -> str:
    """The soundfile format for `path`, or a UserError saying why it cannot be written there."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory; name the file to write, e.g. {path / 'scene.wav'}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown audio file type {path.suffix or '(no extension)'!s}; "
                        f"name it {path.stem or path.name}.wav or .flac")
    if not path.parent.exists():
        raise UserError(f"{path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{path}: directory {path.parent} is not writable")
    return fmt


def run(args) -> int:
    from simulator.scenes import generate_scene, write_scene

    if not 0.5 <= args.seconds <= 3600:
        raise UserError(f"--seconds: {args.seconds} is out of range [0.5, 3600] s")
    if not 8000 <= args.rate <= 192000:
        raise UserError(f"--rate: {args.rate} is out of range [8000, 192000] Hz")
    if not -80 <= args.level <= -3:
        raise UserError(f"--level: {args.level} is out of range [-80, -3] dBFS")
    path = Path(args.file)
    fmt = check_destination(path)
    samples = generate_scene(args.type, args.seconds, args.rate, args.seed, args.level)
    # Written beside the target under a temporary name and renamed: never a half-written scene.
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(handle)
        write_scene(temporary, samples, args.rate, fmt)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except RuntimeError as exc:  # libsndfile's errors (soundfile.LibsndfileError is a RuntimeError)
        raise UserError(f"{path}: cannot write ({str(exc).split(':')[-1].strip() or exc})") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
    print(f"wrote {path} ({args.type}, {args.seconds:g} s at {args.rate} Hz, seed {args.seed}, {args.level:g} dBFS RMS)")
    return 0
