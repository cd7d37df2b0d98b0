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
import re
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


# -- session recordings (opt-in; requested by the agent, written by the runtime) -----------------
# ``record.json`` in the state directory: {"request_id", "seconds", "mics", "budget_bytes",
# "written_at"}. The agent writes it only when recordings are enabled in its config; the
# runtime reacts to a change of the file (not to one already there when it starts), records
# the mics from the block ring on its worker thread and writes ``<request_id>.flac`` into
# `recordings_dir`, which the agent uploads and then deletes.
RECORD_FILE = "record.json"
RECORD_MICS = ("reference", "error")
MAX_RECORD_SECONDS = 60.0
MAX_RECORDINGS_BYTES = 256 * 2**20
RECORDINGS_DIR_MODE = 0o770   # the runtime writes, the agent (same group) deletes after upload
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def recordings_dir(spool_path: str | Path) -> Path:
    """Where recordings wait for upload: beside the spool (same disk, same budget owner)."""
    return Path(spool_path).parent / "recordings"


def validate_record_request(request: Any, source: str = RECORD_FILE) -> dict[str, Any]:
    """A clean copy of a record request, or UserError naming the bad field."""
    if not isinstance(request, dict):
        raise UserError(f"{source}: must be an object")
    request_id = request.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise UserError(f"{source}: request_id: must be 1-64 letters, digits, - or _")
    seconds = request.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 0 < seconds <= MAX_RECORD_SECONDS:
        raise UserError(f"{source}: seconds: must be a number in (0, {MAX_RECORD_SECONDS:g}], got {seconds!r}")
    mics = request.get("mics", list(RECORD_MICS))
    if not isinstance(mics, list) or not mics or len(set(mics)) != len(mics) \
            or any(m not in RECORD_MICS for m in mics):
        raise UserError(f"{source}: mics: must be a non-empty list of {', '.join(RECORD_MICS)}, got {mics!r}")
    budget = request.get("budget_bytes")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= MAX_RECORDINGS_BYTES:
        raise UserError(f"{source}: budget_bytes: must be an integer in (0, {MAX_RECORDINGS_BYTES}]")
    return {"request_id": request_id, "seconds": float(seconds), "mics": list(mics), "budget_bytes": budget}


def write_record_request(state_dir: str | Path, request: dict[str, Any]) -> dict[str, Any]:
    clean = validate_record_request(request)
    write_json_atomic(Path(state_dir) / RECORD_FILE, {**clean, "written_at": utc_now_iso()})
    return clean


def read_record_request(state_dir: str | Path) -> dict[str, Any] | None:
    path = Path(state_dir) / RECORD_FILE
    document = _read_json(path)
    return None if document is None else validate_record_request(
        {k: v for k, v in document.items() if k != "written_at"} if isinstance(document, dict) else document,
        str(path))
