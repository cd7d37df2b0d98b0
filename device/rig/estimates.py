"""Path estimates stored in the state directory, with what they were measured on.

`anc-device identify` writes `secondary_path.npz` (the speaker-to-error-mic estimate, I/O
latency included, and the speaker-to-reference-mic estimate when identification turned
feedback neutralization on) and `secondary_path.json` (the stream identity, the estimates'
lengths and quality, the feedback decision, the recommended controller length and the
date). A stored feedback path is what turns neutralization on in `anc-device run`. `anc-device run` only
accepts an estimate whose identity matches the stream it opens: the latency inside the
estimate depends on the device, the sample rate and the block size, and FxLMS with a wrong
latency diverges.

With several ears (`audio.ears`) each ear's estimates go to their own pair of files,
`secondary_path.EAR.npz` and `secondary_path.EAR.json`; their identity holds the whole channel
map, so an estimate made for another ear layout is refused like one made for another device.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.contract.files import MODE_GROUP_READ, utc_now_iso, write_bytes_atomic
from device.contract.errors import UserError

ESTIMATE_FILE = "secondary_path.npz"
METADATA_FILE = "secondary_path.json"


def estimate_files(state_dir: str | Path, ear: str | None = None) -> tuple[Path, Path]:
    """The estimate and metadata files of one ear (None: the one ear of a single-ear rig)."""
    state_dir = Path(state_dir)
    if ear is None:
        return state_dir / ESTIMATE_FILE, state_dir / METADATA_FILE
    return state_dir / f"secondary_path.{ear}.npz", state_dir / f"secondary_path.{ear}.json"


@dataclass
class PathEstimates:
    secondary_path: np.ndarray
    feedback_path: np.ndarray | None
    metadata: dict[str, Any]


def save_estimates(state_dir: str | Path, secondary_path: np.ndarray, feedback_path: np.ndarray | None,
                   identity: dict[str, Any], details: dict[str, Any], ear: str | None = None) -> Path:
    """Store both files atomically (estimate first, so metadata never describes a missing file)."""
    state_dir = Path(state_dir)
    estimate_path, metadata_path = estimate_files(state_dir, ear)
    arrays = {"secondary_path": np.asarray(secondary_path, dtype=np.float64)}
    if feedback_path is not None:
        arrays["feedback_path"] = np.asarray(feedback_path, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        write_bytes_atomic(estimate_path, buffer.getvalue(), MODE_GROUP_READ)
        metadata = {"identity": identity, **details,
                    "created_at": utc_now_iso()}
        if ear is not None:
            metadata["ear"] = ear
        write_bytes_atomic(metadata_path, json.dumps(metadata, indent=2, sort_keys=True).encode(), MODE_GROUP_READ)
    except OSError as exc:
        raise UserError(f"runtime.state_dir: cannot write the estimate in {state_dir}: {exc.strerror or exc}") from None
    return estimate_path


def load_estimates(state_dir: str | Path, identity: dict[str, Any], ear: str | None = None) -> PathEstimates:
    """The stored estimates for a stream with `identity` (of `ear`, with several ears), or a
    UserError saying what to run."""
    estimate_path, metadata_path = estimate_files(state_dir, ear)
    if not estimate_path.exists() or not metadata_path.exists():
        whose = "" if ear is None else f" for ear {ear}"
        raise UserError(f"{estimate_path}: no secondary-path estimate{whose}; run `anc-device identify` first "
                        "(with the speaker and microphones in place)")
    try:
        metadata = json.loads(metadata_path.read_text())
        with np.load(estimate_path) as data:
            secondary = np.array(data["secondary_path"], dtype=np.float64)
            feedback = np.array(data["feedback_path"], dtype=np.float64) if "feedback_path" in data else None
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{estimate_path}: unreadable estimate ({exc.__class__.__name__}); "
                        "run `anc-device identify` again") from None
    stored = metadata.get("identity", {}) if isinstance(metadata, dict) else {}
    differences = [f"{key} {stored.get(key)!r} (now {value!r})" for key, value in identity.items() if stored.get(key) != value]
    if differences:
        raise UserError(f"{estimate_path}: made for a different stream: {'; '.join(differences)}; "
                        "run `anc-device identify` again")
    return PathEstimates(secondary, feedback, metadata)
