"""Short session recordings of the microphones, on request only (opt-in in the agent's config).

A recording is taken from the blocks the worker drains out of the ring (`RecordingTap`), on
the worker thread: the audio callback is not involved and does nothing new. The buffer is
allocated when the request arrives, the samples are copied in as blocks are drained, and when
it is full it is written as a 24-bit FLAC (``<request_id>.flac``) into the recordings
directory, atomically (a reader never sees half a file) and readable by the agent's group.
The directory is bounded by the request's ``budget_bytes``: the oldest recordings are removed
to make room, and a recording that cannot fit alone is not written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from device.contract.control_channel import RECORD_MICS, RECORDINGS_DIR_MODE
from device.contract.files import MODE_GROUP_READ, atomic_path

log = logging.getLogger(__name__)

FLAC_BYTES_PER_SAMPLE = 3  # PCM_24; FLAC only compresses, so this bounds the file


class Recorder:
    def __init__(self, directory: str | Path, sample_rate: int):
        self.directory = Path(directory)
        self.sample_rate = int(sample_rate)
        self.request: dict[str, Any] | None = None
        self._buffer: np.ndarray | None = None
        self._filled = 0
        self.last_error: str | None = None
        self.written: list[Path] = []

    @property
    def active(self) -> bool:
        return self._buffer is not None

    def start(self, request: dict[str, Any]) -> None:
        """Begin a recording (a validated request, see `validate_record_request`)."""
        frames = int(round(request["seconds"] * self.sample_rate))
        need = frames * len(request["mics"]) * FLAC_BYTES_PER_SAMPLE
        if need > request["budget_bytes"]:
            self.last_error = (f"recording {request['request_id']}: {request['seconds']:g} s of "
                               f"{len(request['mics'])} mics needs up to {need} bytes, over the "
                               f"{request['budget_bytes']}-byte budget")
            log.error("%s", self.last_error)
            return
        self.request = request
        self._buffer = np.zeros((frames, len(request["mics"])), np.float32)
        self._filled = 0
        self.last_error = None
        log.info("recording %s: %g s of %s", request["request_id"], request["seconds"], ", ".join(request["mics"]))

    def feed(self, reference: np.ndarray, error: np.ndarray) -> None:
        """Copy drained samples in (worker thread); writes the file once the buffer is full."""
        if self._buffer is None:
            return
        take = min(reference.size, self._buffer.shape[0] - self._filled)
        if take <= 0:
            return
        sources = {"reference": reference, "error": error}
        for column, mic in enumerate(self.request["mics"]):
            self._buffer[self._filled:self._filled + take, column] = sources[mic][:take]
        self._filled += take
        if self._filled == self._buffer.shape[0]:
            self._write()

    def _make_room(self, need: int, budget: int) -> bool:
        existing = sorted(self.directory.glob("*.flac"), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in existing)
        while existing and used + need > budget:
            oldest = existing.pop(0)
            used -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            log.warning("recordings over their %d-byte budget: removed %s before upload", budget, oldest.name)
        return used + need <= budget

    def _write(self) -> None:
        import soundfile

        request, data = self.request, self._buffer
        self.request, self._buffer = None, None
        target = self.directory / f"{request['request_id']}.flac"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, RECORDINGS_DIR_MODE)
            need = data.size * FLAC_BYTES_PER_SAMPLE
            if not self._make_room(need, request["budget_bytes"]):
                raise OSError(f"no room for {need} bytes within the {request['budget_bytes']}-byte budget")
            with atomic_path(target, MODE_GROUP_READ) as tmp:
                soundfile.write(str(tmp), np.clip(data, -1.0, 1.0), self.sample_rate, format="FLAC",
                                subtype="PCM_24")
        except (OSError, RuntimeError) as exc:
            self.last_error = f"recording {request['request_id']}: not written: {exc}"
            log.error("%s", self.last_error)
            return
        self.written.append(target)
        log.info("recording %s written: %s (%d bytes)", request["request_id"], target, target.stat().st_size)


class RecordingTap:
    """The worker's block ring, with the drained reference and error samples also handed to a
    `Recorder` (on the worker thread, after the copy out of the ring)."""

    def __init__(self, ring, recorder: Recorder):
        self._ring = ring
        self.recorder = recorder

    def take(self, max_blocks: int | None = None):
        taken = self._ring.take(max_blocks)
        if self.recorder.active:
            self.recorder.feed(taken[0], taken[1])
        return taken

    def __getattr__(self, name: str):
        return getattr(self._ring, name)


__all__ = ["Recorder", "RecordingTap", "RECORD_MICS"]
