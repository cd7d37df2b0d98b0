"""The local channel between the cloud agent and the device runtime.

Two small JSON files in the runtime state directory (``runtime.state_dir``):

* ``desired.json``  written by the agent (from the shadow's ``desired`` state), read by the
  runtime's worker between blocks. ``{"version": N, "settings": {...}, "written_at": ISO}``.
* ``reported.json`` written by the runtime with the settings it applied and its health,
  read by the agent for the shadow's ``reported`` state. ``{"version": N, "state": {...}}``.

Every write is atomic: a temporary file in the same directory, fsync, rename, fsync of the
directory. A reader therefore sees the old file or the new one, never half of one, and the
runtime can poll with a cheap ``stat`` (`DesiredWatcher`) without ever blocking audio.

Settings (all optional, validated the same way on both sides):
``anc_enabled`` bool, ``anc_intensity`` number 0..1, ``preset`` one of the noise classes or
``"auto"`` (let the classifier choose), ``anc_mode`` one of off, anc, hear-through.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from device.contract.config import ANC_MODES, NOISE_CLASSES
from device.contract.errors import UserError
from device.contract.files import utc_now_iso, write_json_atomic

DESIRED_FILE = "desired.json"
REPORTED_FILE = "reported.json"
MODEL_FILE = "model.json"      # written by the agent after a model update: {"path", "sha256", "action"}
PRESETS = ("auto",) + NOISE_CLASSES
SETTINGS = ("anc_enabled", "anc_intensity", "preset", "anc_mode")


def validate_settings(settings: Any, source: str = "desired") -> dict[str, Any]:
    """Return a clean copy of `settings` or raise UserError naming the bad key."""
    if not isinstance(settings, dict):
        raise UserError(f"{source}: settings must be an object, got {type(settings).__name__}")
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in SETTINGS:
            raise UserError(f"{source}: {key}: unknown setting (expected one of {', '.join(SETTINGS)})")
        if key == "anc_enabled":
            if not isinstance(value, bool):
                raise UserError(f"{source}: anc_enabled: must be true or false, got {value!r}")
        elif key == "anc_intensity":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0.0 <= value <= 1.0:
                raise UserError(f"{source}: anc_intensity: must be a number in 0..1, got {value!r}")
            value = float(value)
        elif key == "preset":
            if value not in PRESETS:
                raise UserError(f"{source}: preset: must be one of {', '.join(PRESETS)}, got {value!r}")
        elif key == "anc_mode":
            if value not in ANC_MODES:
                raise UserError(f"{source}: anc_mode: must be one of {', '.join(ANC_MODES)}, got {value!r}")
        clean[key] = value
    return clean


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable JSON: {exc}") from None


def write_desired(state_dir: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Validate and publish desired settings; merges over the previous desired file."""
    clean = validate_settings(settings)
    path = Path(state_dir) / DESIRED_FILE
    try:
        previous = _read_json(path) or {}
    except UserError:
        previous = {}  # a broken desired file is replaced, not merged
    merged = {**previous.get("settings", {}), **clean}
    document = {"version": int(previous.get("version", 0)) + 1, "settings": merged, "written_at": utc_now_iso()}
    write_json_atomic(path, document)
    return document


def read_desired(state_dir: str | Path) -> dict[str, Any] | None:
    """The validated desired settings, or None when the agent never wrote any."""
    path = Path(state_dir) / DESIRED_FILE
    document = _read_json(path)
    if document is None:
        return None
    if not isinstance(document, dict) or "settings" not in document:
        raise UserError(f"{path}: settings: missing")
    return validate_settings(document["settings"], str(path))


def write_reported(state_dir: str | Path, state: dict[str, Any]) -> None:
    """Publish what the runtime applied (settings plus any health fields)."""
    path = Path(state_dir) / REPORTED_FILE
    try:
        previous = _read_json(path) or {}
    except UserError:
        previous = {}
    write_json_atomic(path, {"version": int(previous.get("version", 0)) + 1, "state": dict(state),
                             "written_at": utc_now_iso()})


def read_reported(state_dir: str | Path) -> dict[str, Any] | None:
    document = _read_json(Path(state_dir) / REPORTED_FILE)
    return None if document is None else document.get("state")


class FileWatcher:
    """Tells whether a file changed since the last call, with one stat and no read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        """True when the file exists and differs from the last time this returned True."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # rename gives a new inode even within one mtime tick
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


class DesiredWatcher:
    """Cheap poll for the runtime worker: one stat per call, a read only when the file changed."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / DESIRED_FILE
        self._watcher = FileWatcher(self.path)

    def poll(self) -> dict[str, Any] | None:
        """New validated settings since the last call, else None. Invalid files raise UserError once."""
        if not self._watcher.changed():
            return None
        return read_desired(self.path.parent)
