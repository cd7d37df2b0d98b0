"""The worker's side of re-identifying the secondary path on the fly.

`PathTracker` watches the kernel's events (read in place, not drained: the worker drains them
for its metrics). A watchdog trip or a give-up is the trigger: with a stale estimate, FxLMS
diverges or makes the error louder, and both trip the watchdog within a second. What it does:

  1. asks the engine to fade the anti-noise out and play its probe (`AncEngine.request_probe`;
     the callback plays it, `device.core.dsp.tracking.engine_block`);
  2. copies what the speaker played and what the error mic recorded from the block ring (the
     worker's chunks, `observe`), from the probe's first sample to its end plus the estimate's
     length of ring-down;
  3. estimates the path (least squares, as long as the estimate in use) and compares it with
     the one in use (`path_change_db`): above `controller.reidentify_change_db` the new
     estimate goes to the engine (copied between blocks), else the old one stays;
  4. resumes (from the baseline, with a fade-in) and reports a `secondary_path_reidentified`
     event with the change, the probe's length and what was decided.

At most one check per `controller.reidentify_min_interval_s` of audio: a trip sooner is left
to the kernel's step back-off; a give-up sooner waits for the interval and is then checked
(the anti-noise stays off meanwhile, as it did before re-identification existed).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from device.contract.config import Config
from device.core.dsp import layout as L
from device.core.dsp import tracking as T
from device.core.engine import AncEngine

log = logging.getLogger(__name__)

EVENT_KIND = "secondary_path_reidentified"
# Events that make the session check the path: the watchdog's, not a non-finite input (a
# broken sensor is not a path change).
TRIGGERS = (L.EVENT_ERROR_RISE, L.EVENT_SUSTAINED_RISE, L.EVENT_WEIGHT_NORM, L.EVENT_LIMITING, L.EVENT_GAVE_UP)
# A check the engine has not started within this much audio is cancelled: its blocks are run
# by a kernel that plays no probe (`engine_block` plays it, for one ear or, called from
# `process_ears`, for each ear).
START_TIMEOUT_S = 0.5
# The model-consistency detector (see `_mismatch`): judged against the median of the last
# MISMATCH_HISTORY_S of audio, leaving out the last MISMATCH_HOLD_S, and it must last that long.
MISMATCH_HISTORY_S = 4.0
MISMATCH_HOLD_S = 0.5
SNAPSHOT_S = 0.5
CONSISTENT_DB = 1.0      # the detector's level within this of its median: the model explains the error mic


class PathTracker:
    def __init__(self, cfg: Config, engine: AncEngine, dropped: Callable[[], int] | None = None):
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.min_interval = int(cfg.controller.reidentify_min_interval_s * self.sample_rate)
        self.change_db = cfg.controller.reidentify_change_db
        self.max_weight_norm = cfg.safety.max_weight_norm
        self.enabled = bool(cfg.controller.reidentify) and engine.probe.size > 0
        self.dropped = dropped or (lambda: 0)
        self.taps = engine.secondary_path.size
        probe = engine.probe.size
        self.played = np.zeros(probe + self.taps)
        self.recorded = np.zeros(probe + self.taps)
        # The reference mic over the same stretch and the lead the ambient fit looks ahead.
        self.reference = np.zeros(probe + self.taps + T.AMBIENT_LEAD)
        self.filled = 0
        self.checking = False
        self.requested_at = 0
        self.last_check: int | None = None
        self.deferred = False          # gave up within the interval: check once it has passed
        self.mismatch_db = cfg.controller.reidentify_mismatch_db
        self._consistency = LevelHistory()   # (sample, dB) of d_hat's level against the model-free one
        self._mismatch_since: int | None = None
        # The weights as they were while the model still explained the error mic (refreshed
        # every SNAPSHOT_S then): what a new estimate's controller starts from.
        self._good_weights = np.zeros(engine.weights.size)
        self._good_at: int | None = None
        self._events_seen = 0
        self._dropped_at_start = 0
        self.checks: list[dict] = []   # every check's figures, as reported in its event
        self.ear: str | None = None    # the ear this tracker checks, with several (named in its events)
        # Called with each estimate that replaced the one in use: the worker's own copy (its
        # cancellation estimate), and on a rig the store `run` reads next time.
        self.listeners: list[Callable[[np.ndarray], None]] = []

    # -- the worker's chunks ------------------------------------------------------------------
    def observe(self, start: int, reference: np.ndarray, error: np.ndarray, output: np.ndarray) -> None:
        """A chunk of the ring (first sample index `start`): kept while it holds the probe."""
        if not self.checking:
            return
        first = self.engine.probe_start_sample
        if first is None:
            return
        lo = max(start, first + self.filled)
        hi = min(start + error.size, first + self.reference.size)
        if hi <= lo:
            return
        self.reference[lo - first:hi - first] = reference[lo - start:hi - start]
        top = min(hi, first + self.played.size)
        if top > lo:
            self.played[lo - first:top - first] = output[lo - start:top - start]
            self.recorded[lo - first:top - first] = error[lo - start:top - start]
        self.filled = hi - first

    # -- after each worker poll ---------------------------------------------------------------
    def update(self, now: int) -> None:
        """`now`: samples the worker has seen (its audio clock)."""
        if not self.enabled:
            return
        triggered = self._new_triggers() or self._mismatch(now)
        if self.checking:
            self._continue(now)
            return
        if not triggered and not self.deferred:
            return
        if not self.engine.can_reidentify:
            return
        if self.last_check is not None and now - self.last_check < self.min_interval:
            if triggered == "gave_up":
                self.deferred = True
            return
        self._start(now)

    def _new_triggers(self) -> str | None:
        """'gave_up', 'trip' or None: what the kernel reported since the last look."""
        written = int(self.engine.status[L.S_EVENTS])
        start = max(self._events_seen, written - self.engine.events.shape[0])
        found = None
        for index in range(start, written):
            code = int(self.engine.events[index % self.engine.events.shape[0], 1])
            if code == L.EVENT_GAVE_UP:
                found = "gave_up"
            elif code in TRIGGERS and found is None:
                found = "trip"
        self._events_seen = written
        return found

    def _mismatch(self, now: int) -> str | None:
        """'mismatch' when the device's model no longer explains its error mic.

        d_hat = e - s_hat * y, the error the kernel thinks it would have with control off, is
        d + (s - s_hat) * y: with the model right it is the disturbance d, whose level follows
        the reference's through the uncontrolled ratio the kernel measured at start; with the
        path changed it also carries (s - s_hat) * y, which grows with the anti-noise. So the
        kernel's slow d_hat power over ratio x its slow reference power, in dB, wanders with
        the noise's spectrum by a few dB (measured: within 2 dB over 16 s of construction noise
        on the headphone), and jumps when the path changes under a working controller (the same
        run after its path changed: +4.7 dB within a second, +11 dB two seconds later, while the
        watchdog tripped only at +6 s). It is read from the kernel's status, not computed: a few
        float reads per poll. `controller.reidentify_mismatch_db` over the recent median for
        MISMATCH_HOLD_S fires; 0 turns it off."""
        if self.mismatch_db <= 0.0:
            return None
        status = self.engine.status
        ratio, reference = status[L.S_RATIO], status[L.S_SLOW_REFERENCE]
        running = (self.engine.mode == "run" and status[L.S_SAFETY_GAIN] >= 1.0 and status[L.S_HEAR_GAIN] <= 0.0
                   and ratio > 0.0 and reference > 0.0 and status[L.S_SLOW_DISTURBANCE] > 0.0)
        if not running:
            self._consistency.clear()
            self._mismatch_since = None
            return None
        level = 10.0 * math.log10(status[L.S_SLOW_DISTURBANCE] / (ratio * reference))
        history = self._consistency
        history.append(now, level)
        history.drop_before(now - MISMATCH_HISTORY_S * self.sample_rate)
        hold = MISMATCH_HOLD_S * self.sample_rate
        if history.oldest() > now - 0.75 * MISMATCH_HISTORY_S * self.sample_rate:
            return None   # not enough of a history to judge against
        median = history.median_before(now - hold)
        if median is None:
            return None
        if abs(level - median) < CONSISTENT_DB and (self._good_at is None or now - self._good_at >= SNAPSHOT_S
                                                    * self.sample_rate) and self._mismatch_since is None:
            np.copyto(self._good_weights, self.engine.weights)
            self._good_at = now
        if level > median + self.mismatch_db:
            if self._mismatch_since is None:
                self._mismatch_since = now
            if now - self._mismatch_since >= hold:
                self._mismatch_since = None
                return "mismatch"
        else:
            self._mismatch_since = None
        return None

    def _start(self, now: int) -> None:
        self.checking = True
        self.deferred = False
        self.filled = 0
        self.requested_at = now
        self.last_check = now
        self._dropped_at_start = self.dropped()
        self._gave_up = self.engine.mode == "stop"
        self.engine.request_probe()
        log.info("watchdog trip: checking the secondary path%s (%.1f s probe)", self._of_ear(),
                 self.engine.probe.size / self.sample_rate)

    def _of_ear(self) -> str:
        return "" if self.ear is None else f" of the {self.ear} ear"

    def _continue(self, now: int) -> None:
        engine = self.engine
        if engine.probe_state == T.STATE_IDLE:
            if now - self.requested_at > START_TIMEOUT_S * self.sample_rate:
                self.checking = False
                self.enabled = False
                log.warning("secondary-path re-identification is off%s: this engine's blocks play no probe",
                            self._of_ear())
            return
        if self.filled < self.reference.size:
            return
        self.checking = False
        if self.dropped() != self._dropped_at_start:
            # Blocks were lost: the recording has a hole the estimate would take for the path.
            self._finish(None, None, None, "resumed: blocks were dropped during the probe, estimate kept")
            return
        reference = self.reference
        if engine.feedback_path.size > 1:
            # The reference mic hears the probe through the feedback path: take its estimate out.
            from device.core.dsp.lsfir import apply_fir

            played = np.concatenate([self.played, np.zeros(T.AMBIENT_LEAD)])
            reference = reference - apply_fir(engine.feedback_path, played)
        measured, expected_db = T.estimate_path(self.played, self.recorded, reference, self.taps)
        change_db = T.path_change_db(engine.secondary_path, measured)
        if not np.all(np.isfinite(measured)) or not change_db > self.change_db:
            self._finish(None, change_db, expected_db, "unchanged: estimate kept")
            return
        # The controller starts from what it had learnt, carried over to the new path (the same
        # anti-noise at the error mic), unless that asks for more than half the weights' limit.
        learnt = self._good_weights if self._good_at is not None else engine.weights.copy()
        weights = T.carried_weights(learnt, engine.secondary_path, measured)
        scale = 1.0 if float(np.linalg.norm(weights)) < 0.5 * self.max_weight_norm else 0.0
        self._finish(measured, change_db, expected_db, "changed: new estimate in use", scale, weights)

    def _finish(self, measured: np.ndarray | None, change_db: float | None, expected_db: float | None,
                outcome: str, scale: float = 1.0, weights: np.ndarray | None = None) -> None:
        engine = self.engine
        # The kernel's step: full again with a new estimate (the back-off was the old estimate's
        # doing) and after a give-up (else it would stay off); as it was otherwise.
        step = 1.0 if measured is not None or self._gave_up else float(engine.status[L.S_STEP])
        engine.resume(measured, scale if measured is not None else 1.0, step, weights)
        self._good_at = None
        self._consistency.clear()
        details = {
            "change_db": None if change_db is None else round(change_db, 2),
            "threshold_db": self.change_db,
            "estimate_error_db": None if expected_db is None else round(expected_db, 2),
            "probe_s": round(engine.probe.size / self.sample_rate, 3),
            "replaced": measured is not None,
            "weights": None if measured is None else ("carried over" if scale else "from zero"),
            "outcome": outcome,
            **({} if self.ear is None else {"ear": self.ear}),
        }
        self.checks.append(details)
        engine.add_event(EVENT_KIND, 0.0 if change_db is None else change_db, details)
        log.info("secondary path%s %s (change %s dB)", self._of_ear(), outcome, details["change_db"])
        if measured is None:
            return
        for listener in self.listeners:
            try:
                listener(measured)
            except Exception:  # storing is the rig's edge: the audio carries on without it
                log.exception("the new secondary-path estimate could not be handed on")


class LevelHistory:
    """(sample, level) pairs in sample order, for a running median over a window of the worker's
    polls: two preallocated arrays, appended at the end and compacted to the front when full
    (amortized O(1) per poll, and no Python objects per entry), so a check every poll costs a
    few microseconds however often the worker polls."""

    def __init__(self, capacity: int = 1024):
        self.samples = np.zeros(capacity, dtype=np.int64)
        self.levels = np.zeros(capacity)
        self.start = 0
        self.end = 0
        self._scratch = np.zeros(capacity)

    def __len__(self) -> int:
        return self.end - self.start

    def clear(self) -> None:
        self.start = self.end = 0

    def append(self, sample: int, level: float) -> None:
        if self.end == self.samples.size:
            live = self.end - self.start
            if live > self.samples.size // 2:   # more than half full of live entries: grow
                self.samples = np.concatenate([self.samples[self.start:self.end], np.zeros_like(self.samples)])
                self.levels = np.concatenate([self.levels[self.start:self.end], np.zeros_like(self.levels)])
                self._scratch = np.zeros(self.levels.size)
            else:
                self.samples[:live] = self.samples[self.start:self.end]
                self.levels[:live] = self.levels[self.start:self.end]
            self.start, self.end = 0, live
        self.samples[self.end] = sample
        self.levels[self.end] = level
        self.end += 1

    def drop_before(self, sample: float) -> None:
        """Forget the entries older than `sample`."""
        self.start += int(np.searchsorted(self.samples[self.start:self.end], sample, side="left"))

    def oldest(self) -> int:
        return int(self.samples[self.start])

    def median_before(self, sample: float) -> float | None:
        """The median level of the entries older than `sample` (None without any), as np.median."""
        count = int(np.searchsorted(self.samples[self.start:self.end], sample, side="left"))
        if count == 0:
            return None
        values = self._scratch[:count]
        np.copyto(values, self.levels[self.start:self.start + count])
        middle = count // 2
        if count % 2:
            values.partition(middle)
            return float(values[middle])
        values.partition((middle - 1, middle))
        return float(0.5 * (values[middle - 1] + values[middle]))
