"""File helpers both processes use: one atomic writer, one set of file modes, one timestamp format.

An atomic write goes to a temporary file in the same directory, is fsynced, renamed over the
target and the directory is fsynced: a reader sees the old file or the new one, never half of
one, and a power cut leaves one of the two on the SD card.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

# Who may read what. The runtime (user anc-device) and the agent (user anc-cloud-sync) share
# the group `anc`; see docs/install.md.
MODE_SHARED_READ = 0o644    # state one process writes and the other (another user) reads
MODE_GROUP_READ = 0o640     # device state only the group reads (path estimates)
MODE_GROUP_WRITE = 0o660    # written by both services (the spool)
MODE_PRIVATE = 0o600        # private keys and files holding identity
MODE_PRIVATE_DIR = 0o700    # directories of private keys


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and a Z: the one timestamp format of records,
    the control channel, status files and summaries."""
    return utc_iso(datetime.now(timezone.utc).timestamp())


def utc_iso(epoch_s: float) -> str:
    """`epoch_s` (seconds since the epoch) in the format of `utc_now_iso`."""
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_stamp() -> str:
    """Now as a compact UTC stamp for file names (20261201T210726Z)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = MODE_SHARED_READ) -> Iterator[Path]:
    """A temporary path beside `path` to write in any way (a WAV writer, a plot); on success it
    is fsynced, given `mode` and renamed over `path`; on failure it is removed and `path` is
    untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def is_partial(path: str | Path) -> bool:
    """True for the temporary file of a write `atomic_path` has not finished: its name starts
    with a dot and ends like the final name, so a reader globbing `*.flac` must skip it."""
    return Path(path).name.startswith(".")


def write_bytes_atomic(path: str | Path, data: bytes, mode: int = MODE_SHARED_READ) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str, mode: int = MODE_SHARED_READ) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: str | Path, data: Any, mode: int = MODE_SHARED_READ) -> None:
    """Write `data` as JSON, atomically."""
    write_bytes_atomic(path, json.dumps(data, sort_keys=True).encode(), mode)


def copy_atomic(source: str | Path, destination: str | Path, mode: int = MODE_SHARED_READ,
                chunk: int = 1 << 20) -> None:
    """Copy `source` to `destination` atomically, without reading it whole into memory."""
    with atomic_path(destination, mode) as tmp, open(source, "rb") as src, open(tmp, "wb") as out:
        while block := src.read(chunk):
            out.write(block)


def write_with(path: str | Path, write: Callable[[Path], None], mode: int = MODE_SHARED_READ) -> None:
    """Call `write(tmp)` and move the result over `path` atomically."""
    with atomic_path(path, mode) as tmp:
        write(tmp)
