"""A controller session: engine + block ring + worker, the same for every backend.

Backends (PortAudio, the JACK bench, the simulator) call `process_block` for each block,
from the audio callback or a simulation loop; it runs the engine and hands the block to the
worker through the ring, and nothing else. The worker runs on its own thread
(`start_worker`) on a device and synchronously (`poll`) in the simulator.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable

import numpy as np

from device.contract.config import Config
from device.core.engine import AncEngine
from device.core.features import warm_up as warm_up_features
from device.contract.errors import UserError
from device.contract.files import utc_now_iso
from device.core.ringbuffer import BlockRing
from device.core.tracking import PathTracker
from device.core.worker import Worker, new_session_id

log = logging.getLogger(__name__)

RING_SECONDS = 2.0


def load_classifier(cfg: Config, required: bool = False) -> tuple[Any | None, str | None]:
    """The configured classifier, or (None, reason): the controller runs without it.

    `required`: a model that is missing or refused is a user mistake (UserError naming
    `classifier.model`) rather than a warning; `classifier.enabled: false` is how to run without one."""
    if not cfg.classifier.enabled:
        return None, "disabled in the configuration"
    try:
        from device.core.classifier import NoiseClassifier
    except ImportError as exc:  # onnxruntime missing on this install
        return None, f"classifier unavailable ({exc})"
    try:
        return NoiseClassifier(cfg.classifier.model), None
    except UserError as exc:
        if required:
            raise UserError(f"classifier.model: {exc} (set classifier.enabled: false to run without it)") from None
        log.error("classifier refused, running without classification: %s", exc)
        return None, str(exc)


def record_factory(cfg: Config, session_id: str) -> Any | None:
    try:
        from device.contract.records import RecordFactory
    except ImportError:
        return None
    return RecordFactory(cfg.runtime.device_id or socket.gethostname(), session_id)


def compose_session(cfg: Config, secondary_path: np.ndarray, feedback_path: np.ndarray | None, *,
                    sample_rate: int, block_size: int, spool: Any | None = None,
                    classifier: tuple[Any | None, str | None] | None = None) -> "Session":
    """The one way a backend builds a session: the classifier first (a missing or refused model
    is a UserError before anything is compiled), then the engine from the configuration and the
    path estimates, compiled and warmed up (the worker's feature and filter loops too), then the
    session around both and the spool.
    `classifier`: what `load_classifier(cfg, required=True)` returned, when the caller checked it
    earlier (before creating outputs)."""
    model, classifier_error = classifier if classifier is not None else load_classifier(cfg, required=True)
    engine = AncEngine.from_config(cfg, secondary_path, feedback_path, sample_rate=sample_rate, block_size=block_size)
    engine.warm_up()
    warm_up_features()
    return Session(cfg, engine, classifier=model, spool=spool, classifier_error=classifier_error)


class WorkerThread:
    """The worker on its own thread, for a session on a device: `start_worker` runs `poll` every
    `period_s` and `on_poll` after each pass (the device's control channel); `worker_iterations`
    counts passes, for the watchdog. `stop_worker` ends it."""

    _thread: threading.Thread | None = None
    worker_iterations = 0
    _worker_failed = 0

    def poll(self) -> int:
        raise NotImplementedError

    def start_worker(self, period_s: float = 0.02, on_poll: Callable[[], None] | None = None) -> None:
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll()
                    if on_poll is not None:
                        on_poll()
                except Exception:  # keep the worker alive; the audio path does not depend on it
                    if not self._worker_failed:
                        log.exception("worker iteration failed (further failures are counted, not logged)")
                    self._worker_failed += 1
                self.worker_iterations += 1
                self._stop.wait(period_s)

        self._thread = threading.Thread(target=loop, name="anc-worker", daemon=True)
        self._thread.start()

    def stop_worker(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)


class Session(WorkerThread):
    def __init__(
        self,
        cfg: Config,
        engine: AncEngine,
        classifier: Any | None = None,
        spool: Any | None = None,
        session_id: str | None = None,
        classifier_error: str | None = None,
    ):
        self.cfg = cfg
        self.engine = engine
        self.session_id = session_id or new_session_id()
        blocks = max(4, int(RING_SECONDS * engine.sample_rate / engine.block_size))
        self.ring = BlockRing(blocks, engine.block_size)
        self.records = record_factory(cfg, self.session_id) if spool is not None else None
        self.worker = Worker(cfg, self.ring, engine, classifier=classifier, records=self.records, sink=spool)
        self.worker.report.classifier_error = classifier_error
        # Re-identification on the fly (`controller.reidentify`): fed the worker's chunks, run
        # after each of its polls, on the worker's thread.
        self.tracker = PathTracker(cfg, engine, dropped=lambda: self.ring.dropped)
        if self.tracker.enabled:
            self.worker.chunk_observers.append(self.tracker.observe)
            self.tracker.listeners.append(self.worker.use_secondary_path)
        self.start_time = utc_now_iso()

    def process_block(self, reference: np.ndarray, error: np.ndarray, out: np.ndarray, meta: np.ndarray) -> None:
        """Audio-callback safe: one nogil numba call and a few preallocated copies."""
        self.engine.process(reference, error, out)
        self.ring.push(reference, error, out, meta)

    def push_blocks(self, reference: np.ndarray, error: np.ndarray, output: np.ndarray, meta: np.ndarray) -> None:
        """Blocks the engine has already run (a simulator calling its kernel over many blocks at
        once), handed to the worker as `process_block` hands each one."""
        self.ring.push_blocks(reference, error, output, meta)

    def poll(self) -> int:
        blocks = self.worker.poll()
        self.tracker.update(self.worker.samples)
        return blocks

    @property
    def workers(self) -> tuple[Worker, ...]:
        """Every ear's worker: this session's one (an `EarsSession` has one per ear)."""
        return (self.worker,)

    def stop(self, status: str = "completed") -> dict:
        """Stop the worker thread (if any), drain, and return the session summary."""
        self.stop_worker()
        return self.worker.finish(status=status, start_time=self.start_time)
