"""Durable local outbox between the device runtime and the cloud agent.

One SQLite file in WAL mode: the runtime's worker thread appends (one transaction per
batch), the agent peeks, delivers and acks in another process. A record leaves the spool
only when a sink acknowledged it (`ack`), so a crash of either process at any point loses
nothing that was committed; a record can be delivered twice and carries the same
``record_id`` both times.

Budget policy (``spool.budget_mb``): when an append takes the spool over budget, the oldest
records are dropped, processing metrics first, then noise detections, sessions last. Every drop
is counted per kind in the file itself, so `stats()` reports it and the agent publishes it.
"Over budget" is either of: the records' JSON over the budget, or the database's live pages
(tables and indexes: 2-3x the JSON for small records) over the budget plus `SCHEMA_MARGIN`.
The files on disk stay within the budget plus a stated margin (`footprint_limit`):
``auto_vacuum=INCREMENTAL`` gives freed pages back to the file system after drops and acks,
``wal_autocheckpoint`` and ``journal_size_limit`` keep the WAL near `wal_limit` (a sixteenth of
the budget, at least 256 KiB), and the ``-shm`` index is 32 KiB per 4096 WAL pages. A file made
before auto-vacuum is converted once (VACUUM) when opened.

The runtime and the agent run as different users sharing a group, so the spool is created
``0660`` (`FILE_MODE`) whatever the umask, before SQLite opens it; SQLite gives ``-wal`` and
``-shm`` the main file's mode. An existing file keeps its mode.

A file that SQLite cannot read is moved aside as ``<name>.corrupt-<UTC time>`` (with its WAL)
and a new spool is started; the error log names the moved file so nothing vanishes silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from device.contract.files import MODE_GROUP_WRITE, utc_stamp
from device.contract.records import DROP_ORDER

log = logging.getLogger(__name__)

# Both services (different users, group ``anc``) read and write the spool and its -wal/-shm.
FILE_MODE = MODE_GROUP_WRITE
# Room for the schema's own pages (tables, indexes, counters) beyond the budget.
SCHEMA_MARGIN = 64 * 1024
SHM_BYTES = 32 * 1024
# Drop order when over budget: lower number goes first.
DROP_PRIORITY = {kind: rank for rank, kind in enumerate(DROP_ORDER)}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind, rowid);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def wal_limit(budget_bytes: int) -> int:
    """Bytes the WAL is checkpointed and truncated at for a spool of `budget_bytes`."""
    return max(256 * 1024, int(budget_bytes) // 16)


def footprint_limit(budget_bytes: int) -> int:
    """The bound on main file + WAL + shm for `budget_bytes`: the budget and the schema margin
    (live pages), up to one `wal_limit` of free pages not yet vacuumed, a WAL of up to twice
    `wal_limit` (the checkpoint threshold plus the transaction that crosses it) and the shm index."""
    return int(budget_bytes) + SCHEMA_MARGIN + 3 * wal_limit(budget_bytes) + SHM_BYTES


def _as_dict(record: Any) -> dict[str, Any]:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


class Spool:
    """SQLite WAL outbox with a byte budget. Safe for one writer and one reader process."""

    def __init__(self, path: str | Path, budget_bytes: int, clock=time.time):
        if budget_bytes <= 0:
            raise ValueError("spool budget must be positive")
        self.path = Path(path)
        self.budget_bytes = int(budget_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self.moved_aside: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self.moved_aside = self._move_aside(exc)
            self._db = self._open()
            self._bump("corrupt_files_moved", 1)

    # -- opening ----------------------------------------------------------------------------
    def _create_file(self) -> None:
        """Create an empty spool file with `FILE_MODE` (not the umask's); leave an existing one alone."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return
        try:
            os.fchmod(fd, FILE_MODE)  # os.open's mode is filtered by the umask
        finally:
            os.close(fd)

    def _open(self) -> sqlite3.Connection:
        self._create_file()
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                # Takes effect at once on an empty file; an existing one needs a VACUUM (once).
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                    db.execute("VACUUM")
            db.execute("PRAGMA journal_mode=WAL")
            self.page_size = db.execute("PRAGMA page_size").fetchone()[0]
            limit = wal_limit(self.budget_bytes)
            db.execute(f"PRAGMA wal_autocheckpoint={max(16, limit // self.page_size)}")
            db.execute(f"PRAGMA journal_size_limit={limit}")
            # FULL: a committed append or ack survives power loss, not only a process crash.
            db.execute("PRAGMA synchronous=FULL")
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self, exc: Exception) -> Path:
        stamp = utc_stamp()
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        self.path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        log.error("spool %s is unreadable (%s); moved aside to %s and started a new spool",
                  self.path, exc, target)
        return target

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- counters ---------------------------------------------------------------------------
    def _bump(self, name: str, by: int) -> None:
        self._db.execute("INSERT INTO counters(name, value) VALUES(?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))

    def _counters(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    # -- writer side ------------------------------------------------------------------------
    def append(self, records: Iterable[Any]) -> int:
        """Store a batch in one transaction; returns how many were new. Applies the budget."""
        now = self._clock()
        rows = []
        for record in records:
            data = _as_dict(record)
            if data.get("kind") not in DROP_PRIORITY or not data.get("record_id"):
                raise ValueError(f"not a record: kind={data.get('kind')!r} record_id={data.get('record_id')!r}")
            body = json.dumps(data, separators=(",", ":"), sort_keys=True)
            rows.append((data["record_id"], data["kind"], now, len(body), body))
        if not rows:
            return 0
        with self._write():
            before = self._db.total_changes
            # Make room first, so the file never grows past the budget within the transaction
            # (a checkpoint would copy that peak into the main file).
            self._enforce_budget(incoming=sum(row[3] for row in rows))
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox(record_id, kind, created, size, body) VALUES(?,?,?,?,?)", rows)
            added = self._db.total_changes - before
            self._bump("appended", added)
            self._enforce_budget()
        return added

    @contextlib.contextmanager
    def _write(self):
        """One write transaction under the lock; freed pages are handed back before the commit."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._vacuum_freed()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _live_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.page_size

    def _excess(self, incoming: int = 0) -> int:
        """Record bytes to drop before `incoming` more: the larger of the JSON over the budget and
        the live pages over budget + margin (converted to JSON bytes at the file's current ratio)."""
        used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        excess = used + incoming - self.budget_bytes
        live = self._live_bytes()
        # Disk bytes per JSON byte of the records (tables and indexes), the schema's pages aside.
        ratio = min(8.0, max(1.0, (live - SCHEMA_MARGIN) / used)) if used and live > SCHEMA_MARGIN else 2.0
        disk_excess = live + incoming * ratio - (self.budget_bytes + SCHEMA_MARGIN)
        if disk_excess > 0:
            excess = max(excess, int(disk_excess / ratio * 1.1) + 1)
        return excess

    def _enforce_budget(self, incoming: int = 0) -> None:
        for _ in range(8):  # deleting rows frees index pages only partly: measure again
            excess = self._excess(incoming)
            if excess <= 0:
                return
            self._drop_oldest(excess)
            self._vacuum_freed()

    def _drop_oldest(self, excess: int) -> None:
        for kind in sorted(DROP_PRIORITY, key=DROP_PRIORITY.get):
            if excess <= 0:
                return
            # Oldest first within the kind, until the excess is covered.
            victims, freed = [], 0
            for rowid, size in self._db.execute(
                    "SELECT rowid, size FROM outbox WHERE kind = ? ORDER BY rowid", (kind,)):
                if freed >= excess:
                    break
                victims.append((rowid,))
                freed += size
            if victims:
                self._db.executemany("DELETE FROM outbox WHERE rowid = ?", victims)
                self._bump(f"dropped_{kind}", len(victims))
                log.warning("spool over its %d-byte budget: dropped the %d oldest %s records",
                            self.budget_bytes, len(victims), kind)
                excess -= freed

    def _vacuum_freed(self) -> None:
        """Give free pages back to the file system (inside the caller's transaction) once there
        are more than `wal_limit` bytes of them: below that the next appends reuse them, and
        moving pages on every commit would only grow the WAL."""
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        if free * self.page_size > wal_limit(self.budget_bytes):
            self._db.execute("PRAGMA incremental_vacuum").fetchall()

    # -- reader side ------------------------------------------------------------------------
    def peek(self, limit: int, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The oldest `limit` unsent records (as dicts), optionally of some kinds only."""
        with self._lock:
            if kinds is None:
                rows = self._db.execute("SELECT body FROM outbox ORDER BY rowid LIMIT ?", (limit,)).fetchall()
            else:
                kinds = list(kinds)
                marks = ",".join("?" * len(kinds))
                rows = self._db.execute(f"SELECT body FROM outbox WHERE kind IN ({marks}) ORDER BY rowid LIMIT ?",
                                        (*kinds, limit)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def _delete(self, ids: list[tuple[str]], counter: str) -> int:
        """Delete `ids` in one transaction and count them under `counter`; how many were there."""
        with self._write():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE record_id = ?", ids)
            removed = self._db.total_changes - before
            self._bump(counter, removed)
        return removed

    def ack(self, record_ids: Iterable[str]) -> int:
        """Delete records a sink acknowledged; returns how many were still there."""
        ids = [(rid,) for rid in record_ids]
        if not ids:
            return 0
        return self._delete(ids, "acked")

    def discard(self, record_ids: Iterable[str], reason: str) -> int:
        """Remove records no sink can ever take (e.g. over the message size limit), counted as dropped."""
        ids = [(rid,) for rid in record_ids]
        if not ids:
            return 0
        removed = self._delete(ids, f"dropped_{reason}")
        log.error("discarded %d records: %s", removed, reason)
        return removed

    def stats(self) -> dict[str, Any]:
        """Backlog per kind, bytes, oldest unsent age (s), appended/acked/dropped counters."""
        with self._lock:
            backlog = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
            used, oldest = self._db.execute("SELECT COALESCE(SUM(size), 0), MIN(created) FROM outbox").fetchone()
            counters = self._counters()
        return {
            "backlog": {kind: backlog.get(kind, 0) for kind in DROP_PRIORITY},
            "backlog_total": sum(backlog.values()),
            "bytes": used,
            "budget_bytes": self.budget_bytes,
            "oldest_unsent_age_s": None if oldest is None else round(max(0.0, self._clock() - oldest), 3),
            "appended": counters.get("appended", 0),
            "acked": counters.get("acked", 0),
            "dropped": {kind: counters.get(f"dropped_{kind}", 0) for kind in DROP_PRIORITY},
            "dropped_oversize": counters.get("dropped_oversize", 0),
            "corrupt_files_moved": counters.get("corrupt_files_moved", 0),
            "file_bytes": self.file_bytes(),
        }

    def file_bytes(self) -> int:
        """Bytes on disk: the main file, its WAL and its shm index."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total
