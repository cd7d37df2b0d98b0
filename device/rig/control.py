"""The runtime's side of the local control channel (see `device.contract.control_channel`).

Polled from the worker thread, never from the audio callback: one `stat` per poll for
`desired.json` and one for `model.json`, a read only when one changed. Desired settings are
validated (again) and applied to the engine and worker; the runtime's state and health go to
`reported.json` when they change and at least every `REPORT_INTERVAL_S`. A new model named
in `model.json` is loaded and verified against its card before it replaces the running one;
if it does not load, the running model stays and the error is reported. A new
``record.json`` (written by the agent only when recordings are enabled in its config) starts a
short recording of the microphones (`device.core.recorder`), taken from the blocks the worker
drains, into the recordings directory beside the spool.

With several ears (`workers`, one per ear, the first one's classifier hearing the ears' mix) a
desired setting is applied to every ear, a new model goes to the first ear's worker, a
recording takes the first ear's microphones, and `reported.json` carries each ear's mode,
cancellation estimate and watchdog trips under `ears`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from device.contract.control_channel import (MODEL_FILE, RECORD_FILE, DesiredWatcher, FileWatcher,
                                            read_record_request, recordings_dir, write_reported)
from device.contract.errors import UserError

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 10.0


class RuntimeControl:
    def __init__(self, state_dir: str | Path, worker, health: Callable[[], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic, workers: tuple | None = None):
        self.state_dir = Path(state_dir)
        self.worker = worker
        self.workers = tuple(workers) if workers else (worker,)
        self.health = health or (lambda: {})
        self.clock = clock
        self.desired = DesiredWatcher(self.state_dir)
        self.model_notice = FileWatcher(self.state_dir / MODEL_FILE)
        self.model_notice.changed()  # a notice already there at start is the model the config loaded
        self.record_notice = FileWatcher(self.state_dir / RECORD_FILE)
        self.record_notice.changed()  # a request left from before a restart is not a new one
        self.recorder = None
        spool = getattr(getattr(worker, "cfg", None), "spool", None)
        if spool is not None and hasattr(worker, "ring"):
            from device.core.recorder import Recorder, RecordingTap

            self.recorder = Recorder(recordings_dir(spool.path), worker.sample_rate)
            worker.ring = RecordingTap(worker.ring, self.recorder)
        self.desired_error: str | None = None
        self.model_error: str | None = None
        self.applied: dict[str, Any] = {}
        self._last_report: dict[str, Any] | None = None
        self._last_report_time = -1e9

    def poll(self) -> None:
        self._poll_desired()
        self._poll_model()
        self._poll_record()
        self._report()

    def _poll_record(self) -> None:
        if self.recorder is None or not self.record_notice.changed():
            return
        try:
            request = read_record_request(self.state_dir)
        except UserError as exc:
            self.recorder.last_error = f"record request refused: {exc}"
            log.error("%s", self.recorder.last_error)
            return
        if request is not None and not self.recorder.active:
            self.recorder.start(request)

    def _poll_desired(self) -> None:
        try:
            settings = self.desired.poll()
        except UserError as exc:
            self.desired_error = str(exc)
            log.error("desired settings rejected, nothing applied: %s", exc)
            return
        if settings is None:
            return
        try:
            # The first ear refuses a bad value before it changes anything, and every ear has
            # the same settings, so no ear is left applied when another refuses.
            for worker in self.workers:
                worker.apply_settings(settings)
        except UserError as exc:  # the engine refused a value the validation let through: nothing applied
            self.desired_error = f"{self.desired.path}: {exc}"
            log.error("desired settings refused, nothing applied: %s", self.desired_error)
            return
        self.desired_error = None
        self.applied.update(settings)
        log.info("applied desired settings %s", json.dumps(settings, sort_keys=True))

    def _poll_model(self) -> None:
        path = self.model_notice.path
        if not self.model_notice.changed():
            return
        try:
            notice = json.loads(path.read_text())
            model_path = notice["path"]
            from device.core.classifier import NoiseClassifier

            classifier = NoiseClassifier(model_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.model_error = f"{path}: unreadable model notice ({exc.__class__.__name__})"
        except UserError as exc:
            self.model_error = f"new model refused, the running one stays: {exc}"
        else:
            self.worker.replace_classifier(classifier)
            self.model_error = None
            log.info("classifier reloaded from %s", model_path)
            return
        log.error("%s", self.model_error)

    def state(self) -> dict[str, Any]:
        worker, engine = self.worker, self.worker.engine
        ears = {w.ear: _ear_state(w) for w in self.workers} if len(self.workers) > 1 else None
        if ears is None:
            one = _ear_state(worker)
        else:
            estimates = [ear["estimated_cancellation_db"] for ear in ears.values()
                         if ear["estimated_cancellation_db"] is not None]
            one = {"mode": "run" if any(ear["mode"] == "run" for ear in ears.values()) else engine.mode,
                   # The mean of the ears' estimates, dB.
                   "estimated_cancellation_db": round(sum(estimates) / len(estimates), 1) if estimates else None,
                   "watchdog_trips": sum(ear["watchdog_trips"] for ear in ears.values())}
        return {
            **worker.settings.reported(),
            "mode": one["mode"],
            "speaker_mode": worker.speaker_mode,
            "noise_type": worker.current_class,
            "estimated_cancellation_db": one["estimated_cancellation_db"],
            "watchdog_trips": one["watchdog_trips"],
            **({} if ears is None else {"ears": ears}),
            "model": None if worker.classifier is None else str(getattr(worker.classifier, "path", "")),
            "model_error": self.model_error,
            "desired_error": self.desired_error,
            "recording": None if self.recorder is None else
            {"active": self.recorder.active, "error": self.recorder.last_error},
            **self.health(),
        }

    def _report(self, force: bool = False) -> None:
        now = self.clock()
        state = self.state()
        # Health counters change all the time; only settings, mode and errors count as a change.
        significant = {k: state[k] for k in ("anc_enabled", "anc_intensity", "preset", "anc_mode", "speaker_mode",
                                            "mode", "noise_type",
                                            "model", "model_error", "desired_error")}
        significant["ear_modes"] = {name: ear["mode"] for name, ear in (state.get("ears") or {}).items()}
        if not force and significant == self._last_report and now - self._last_report_time < REPORT_INTERVAL_S:
            return
        try:
            write_reported(self.state_dir, state)
        except OSError as exc:
            log.error("cannot write %s/reported.json: %s", self.state_dir, exc)
            return
        self._last_report, self._last_report_time = significant, now

    def final_report(self, status: str) -> None:
        """Last word at shutdown: the state with the session's status."""
        health = self.health
        self.health = lambda: {**health(), "status": status}
        self._report(force=True)


def _ear_state(worker) -> dict[str, Any]:
    metrics = worker.report.metrics[-1] if worker.report.metrics else None
    return {
        "mode": worker.engine.mode,
        "estimated_cancellation_db": None if metrics is None or metrics.estimated_cancellation_db is None
        else round(metrics.estimated_cancellation_db, 1),
        "watchdog_trips": int(worker.engine.snapshot()["watchdog_trips"]),
    }
