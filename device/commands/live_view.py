"""One status line for `anc-device run` on a terminal, refreshed once a second.

    anc-device: cancelling 18.2 dB (device estimate) | class traffic | mode run | xruns 0 | CPU 23%

Off when stderr is not a terminal and under systemd (INVOCATION_ID or NOTIFY_SOCKET set: the
journal wants log lines, not carriage returns). It reads the supervisor's counters from its
own thread; nothing here touches the audio path.
"""

from __future__ import annotations

import os
import sys
import threading
import time

PERIOD_S = 1.0


def wanted(stream=None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _latest_estimate(worker) -> str:
    metrics = worker.report.metrics[-1] if worker.report.metrics else None
    estimate = None if metrics is None else metrics.estimated_cancellation_db
    return "-" if estimate is None else f"{estimate:.1f} dB"


def status_line(supervisor, cpu_percent: float | None) -> str:
    worker = supervisor.session.worker
    workers = supervisor.session.workers
    attenuation = _latest_estimate(worker) if len(workers) == 1 else \
        ", ".join(f"{w.ear} {_latest_estimate(w)}" for w in workers)
    cpu = "-" if cpu_percent is None else f"{cpu_percent:.0f}%"
    return (f"anc-device: cancelling {attenuation} (device estimate) | class {worker.current_class or '-'} | "
            f"mode {supervisor.engine.mode} | xruns {supervisor.xruns} | CPU {cpu}")


class LiveView:
    def __init__(self, supervisor, stream=None):
        self.supervisor = supervisor
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="anc-live-view", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        last_wall, last_cpu = time.monotonic(), time.process_time()
        while not self._stop.wait(PERIOD_S):
            wall, cpu = time.monotonic(), time.process_time()
            percent = 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9)
            last_wall, last_cpu = wall, cpu
            try:
                self.stream.write("\r\x1b[K" + status_line(self.supervisor, percent))
                self.stream.flush()
            except (OSError, ValueError):  # terminal gone: stop showing, keep cancelling
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
