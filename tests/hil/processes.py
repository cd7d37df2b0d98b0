"""Processes started by the HIL tests and by bench/runtime.py: each the leader of its own
process group, so a stop reaches its children too, and nothing is left behind.
No pytest here: the benchmark imports this module as well."""

from __future__ import annotations

import glob
import json
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(Path(stat).parent.name))
    return members


class Processes:
    """Every process started, each the leader of its own process group."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 5.0,
             close_streams: bool = True) -> int:
        """Signal the whole group, wait, then SIGKILL what is left. Returns the leader's status.
        With `close_streams=False` the caller may still read what the process wrote."""
        if proc.poll() is None or group_members(proc.pid):
            self._signal_group(proc, sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout_s
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or group_members(proc.pid):
            self._signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        if close_streams:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        return proc.returncode

    def stop_all(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> None:
        for proc in reversed(self.started):
            self.stop(proc, sig, timeout_s)

    def leftovers(self) -> list[str]:
        alive = []
        for proc in self.started:
            members = group_members(proc.pid)
            if proc.poll() is None or members:
                alive.append(f"{proc.args!r} (group {proc.pid}: {members})")
        return alive


def read_json_line(proc: subprocess.Popen, timeout_s: float, context: Callable[[], str] = lambda: "") -> dict:
    """The next JSON line on `proc`'s stdout (text mode); other lines are skipped. `context`
    adds to the error (e.g. the process's stderr)."""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{proc.args!r} closed stdout (exit {proc.poll()}) without a JSON line\n{context()}")
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise TimeoutError(f"no JSON line from {proc.args!r} in {timeout_s} s\n{context()}")
