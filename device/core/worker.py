"""The worker: everything the audio callback must not do.

It drains the block ring and, in audio time:
  * estimates the cancellation the device achieves, from what it can observe: the
    disturbance estimate d = err - s_hat * speaker against the error itself;
  * summarises callback timing (duration, start jitter, xrun flags) per metrics interval;
  * decimates the reference mic to 16 kHz and classifies the last window every hop, with a
    confidence threshold and hysteresis, switching the controller preset when the class
    changes (`unknown`, a window unlike every class: the neutral controller settings);
  * listens for warning sounds (sirens, smoke alarms, beepers, horns: `device.core.alarms`)
    and switches the speaker to hear-through while one sounds, then back to the wearer's mode;
  * emits processing-metric, noise-detection, alarm-detection and session records to a sink
    (the spool).

It runs on a thread on the device and synchronously in the simulator (`poll`), so both give
the same records from the same blocks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from device.contract.config import Config
from device.contract.files import utc_iso
from device.core.alarms import AlarmDetector, AlarmEvent, DetectorSettings
from device.core.dsp.streaming import level_weighted_sums, speaker_at_error
from device.core.engine import AncEngine, SafetyEvent
from device.core.ringbuffer import BlockRing
from device.core.settings import AncSettings

log = logging.getLogger(__name__)

# The no-harm step guard (see Worker._guard_step): halve the step when the device's estimate
# says it amplifies by more than AMPLIFY_DB; grow it back (by sqrt 2) only after RECOVER_S of
# audio in a row cancelling RECOVER_DB or more, and never above the largest step that was
# harmful until CEILING_HOLD_S have passed without harm. Judged every GUARD_INTERVAL_S of
# audio, short enough that a bad start is heard only briefly.
AMPLIFY_DB = 0.5
RECOVER_DB = 3.0
GUARD_INTERVAL_S = 0.25
RECOVER_S = 4.0
CEILING_HOLD_S = 60.0
# The no-harm output scale (see Worker._scale_output): the lower confidence bound, SCALE_CONFIDENCE
# standard errors under the least-squares scale of the played anti-noise over the last
# SCALE_TIME_CONSTANT_S, the standard error from the spread of SCALE_SEGMENT_S segments; never
# below MIN_OUTPUT_SCALE (the estimate needs some anti-noise played; at 0.03 what it costs is
# 0.1% of the filter's output power).
SCALE_TIME_CONSTANT_S = 0.5
SCALE_SEGMENT_S = 0.02
SCALE_CONFIDENCE = 2.0
MIN_OUTPUT_SCALE = 0.03
# The scale's sums count each sample per unit of the disturbance's level, smoothed over this
# (per sample, in dsp/streaming.py, so the figures do not depend on how the audio is chunked): a passage
# 20 dB quieter than the one before it gets its own scale within the scale's memory instead of
# inheriting the loud one's (a quiet clip after a loud one played at the loud clip's 0.93 for
# a second where 0.5 was best, and that second was louder than off). Short against
# SCALE_TIME_CONSTANT_S; about one period of a jackhammer's 12 hits a second, so a hit and
# the gap after it still count mostly by their energy.
SCALE_LEVEL_TIME_CONSTANT_S = 0.1
# Records wait at most this much audio for the spool: one transaction (one fsync) a second
# instead of one per detection; a crash loses no more than the interval being measured.
SPOOL_FLUSH_S = 1.0


class RecordSink(Protocol):
    def append(self, records: list) -> Any: ...


@dataclass
class ClassChange:
    time_s: float
    noise_type: str
    confidence: float


@dataclass
class IntervalMetrics:
    time_s: float                 # end of the interval, audio time
    estimated_cancellation_db: float | None
    error_rms_dbfs: float
    output_rms_dbfs: float
    callback_p50_ms: float
    callback_p99_ms: float
    callback_max_ms: float
    jitter_p99_ms: float
    xruns: int
    cpu_utilization: float        # share of the interval spent in the engine
    step_size: float
    weight_norm: float
    mode: str
    noise_type: str | None

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _db(power_ratio: float) -> float:
    return 10.0 * math.log10(max(power_ratio, 1e-30))


def memory_mb() -> dict[str, float | None]:
    """Resident memory (MiB) now and at its peak, and now split into anonymous (this process's
    own), file-backed (shared libraries) and shared memory (JACK maps its server's segments
    into every client); None where /proc is missing."""
    fields = {"VmRSS": "rss_mb", "VmHWM": "rss_peak_mb", "RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb",
              "RssShmem": "rss_shmem_mb"}
    found: dict[str, float | None] = dict.fromkeys(fields.values())
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key = line.split(":", 1)[0]
                if key in fields:
                    found[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return found


@dataclass
class WorkerReport:
    metrics: list[IntervalMetrics] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    class_changes: list[ClassChange] = field(default_factory=list)
    safety_events: list[SafetyEvent] = field(default_factory=list)
    records_written: int = 0
    classifier_error: str | None = None
    modes: list[dict] = field(default_factory=list)     # [{t_s, mode}]: what the speaker played from when
    alarms: list[dict] = field(default_factory=list)    # [{kind, start_s, detected_s, end_s, ...}]


class Worker:
    def __init__(
        self,
        cfg: Config,
        ring: BlockRing,
        engine: AncEngine,
        classifier: Any | None = None,
        records: Any | None = None,
        sink: RecordSink | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.ring = ring
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.block_size = engine.block_size
        self.records = records
        self.sink = sink
        self.wall_clock = wall_clock
        self.report = WorkerReport()
        self.samples = 0
        self.last_signal_sample = 0  # microphones never give exact zeros; a disconnected device does
        self.interval_samples = max(self.block_size, int(cfg.runtime.metrics_interval_s * self.sample_rate))
        # Called with each chunk taken from the ring, (first sample index, reference, error,
        # output), before it is measured: the secondary-path tracker records its probe there.
        self.chunk_observers: list[Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]] = []
        self._secondary = engine.secondary_path.copy()
        self._secondary_reversed = np.ascontiguousarray(self._secondary[::-1])
        # The estimate's filter input: the last secondary.size - 1 samples played, then the chunk.
        self._secondary_input = np.zeros(self._secondary.size - 1 + 2048)
        self._speaker = np.empty(2048)    # the estimate's output, reused from poll to poll
        self._sums = np.zeros(7)
        self._scale_level = np.zeros(1)   # d_hat's power, smoothed per sample (the scale's sums count per unit of it)
        self._scale_level_coef = 1.0 - math.exp(-1.0 / (SCALE_LEVEL_TIME_CONSTANT_S * self.sample_rate))
        self._reset_interval()
        self.guard_samples = int(GUARD_INTERVAL_S * self.sample_rate)
        self._guard_error = self._guard_disturbance = 0.0
        self._guard_samples = 0
        self._guard_good_s = 0.0          # audio in a row cancelling well, s
        self._guard_calm_s = 0.0          # audio since the last harmful interval, s
        self._guard_ceiling = 1.0         # step factor the guard may grow back to
        self._session_error = 0.0
        self._session_disturbance = 0.0
        self._scale_cross = 0.0           # decayed sum of -<d_hat, s_hat * y_played> per unit output scale
        self._scale_power = 0.0           # decayed sum of |s_hat * y_played|^2 per unit output scale squared
        self.scale_segment_samples = max(1, int(SCALE_SEGMENT_S * self.sample_rate))
        self._reset_scale()
        self._pending: list = []
        self._flushed_at = 0              # the worker's sample count at the last spool write
        self.flush_samples = int(SPOOL_FLUSH_S * self.sample_rate)
        self._last_start: float | None = None
        self._last_stream = 0.0
        self.current_class: str | None = None
        # The user's settings (config, then the control channel); a forced preset stops the
        # classifier from switching presets.
        self.settings = AncSettings(bool(cfg.anc.enabled), float(cfg.anc.intensity), mode=cfg.anc.mode)
        # Warning-sound bypass: the alarm holding the speaker in hear-through, and the audio
        # time at which the wearer's mode comes back once it has ended.
        self.alarm_detector = (AlarmDetector(self.sample_rate, DetectorSettings.from_config(cfg.alarms))
                               if cfg.alarms.enabled else None)
        self.bypass: AlarmEvent | None = None
        self._bypass_until: float | None = None
        self.speaker_mode = ""
        self._apply_mode()
        self.preset_intensity = 1.0
        self.callback_durations = LatencyHistogram()
        self.callback_jitter = LatencyHistogram()

        self.classifier = classifier
        # With several ears: which ear this worker watches (named in its metric records), and
        # whether the classifier hears this ear's reference mic or is fed the ears' mix instead
        # (`device.core.ears.EarsSession`).
        self.ear: str | None = None
        self.classifies_own_reference = True
        if classifier is not None:
            from device.core.classifier import ClassTracker, UnknownRule
            from device.core.features import SAMPLE_RATE, StreamDecimator

            self._decimator = StreamDecimator(self.sample_rate, SAMPLE_RATE)
            # The last window of decimated audio, written circularly (oldest sample at
            # `_window_end`) and laid out in order into `_window` only when it is classified:
            # shifting the whole window on every poll cost more than the decimation.
            self._window = np.zeros(int(round(cfg.classifier.window_s * SAMPLE_RATE)))
            self._window_ring = np.zeros(self._window.size)
            self._window_end = 0
            self._window_fill = 0
            self._hop = int(round(cfg.classifier.hop_s * SAMPLE_RATE))
            self._since_hop = 0
            self._classifier_rate = SAMPLE_RATE
            self._tracker = ClassTracker(cfg.classifier.confidence_threshold, cfg.classifier.hysteresis_windows)
            self._unknown_rule = UnknownRule.from_config(cfg.classifier)

    def _reset_interval(self) -> None:
        self._interval_error = 0.0
        self._interval_disturbance = 0.0
        self._interval_output = 0.0
        self._interval_samples = 0
        self._durations: list[np.ndarray] = []
        self._jitter: list[np.ndarray] = []
        self._xruns = 0

    # -- main entry -------------------------------------------------------------------------
    def poll(self) -> int:
        """Process every block waiting in the ring; returns how many there were."""
        available = self.ring.available()
        if available == 0:
            return 0
        reference, error, output, meta = self.ring.take(available)
        for observer in self.chunk_observers:
            observer(self.samples, reference, error, output)
        position = 0
        # Cut the chunk at metrics-interval boundaries so each interval is exact.
        while position < error.size:
            room = self.interval_samples - self._interval_samples
            stop = min(error.size, position + room)
            first_block, last_block = position // self.block_size, -(-stop // self.block_size)
            self._observe(reference[position:stop], error[position:stop], output[position:stop],
                          meta[first_block:last_block] if position % self.block_size == 0 else meta[0:0])
            position = stop
            if self._interval_samples >= self.interval_samples:
                self._close_interval()
        if self.samples - self._flushed_at >= self.flush_samples:
            self._flush()
        return available

    def _observe(self, reference: np.ndarray, error: np.ndarray, output: np.ndarray, meta: np.ndarray) -> None:
        # The estimate's filter and its energies in one compiled pass (dsp/streaming.py).
        sums = self._sums
        self._estimate(output, error, self._speaker_buffer(output.size))
        e2, d2 = float(sums[0]), float(sums[1])
        self._interval_error += e2
        self._interval_disturbance += d2
        self._guard_error += e2
        self._guard_disturbance += d2
        self._guard_samples += error.size
        if self._guard_samples >= self.guard_samples:
            # Only anti-noise is judged: hear-through raises the error level by design.
            if self._guard_error > 0 and self.engine.mode == "run" and self.speaker_mode == "anc":
                self._guard_step(_db(self._guard_disturbance / self._guard_error))
            self._guard_error = self._guard_disturbance = 0.0
            self._guard_samples = 0
        self._interval_output += float(sums[2])
        self._interval_samples += error.size
        if self.engine.mode == "run" and self.speaker_mode == "anc":
            self._scale_from_sums(float(sums[5]), float(sums[6]), error.size)
            self._session_error += e2
            self._session_disturbance += d2
        if meta.size:
            self._durations.append(meta[:, 1].copy())
            starts, streams = meta[:, 0], meta[:, 3]
            if self._last_start is not None:
                previous = np.concatenate([[self._last_start], starts[:-1]])
                previous_stream = np.concatenate([[self._last_stream], streams[:-1]])
                period = self.block_size / self.sample_rate
                # Across a stream reopen the gap is an outage, reported as such, not jitter.
                jitter = np.abs(starts - previous - period)[streams == previous_stream]
                self._jitter.append(jitter)
            self._last_start, self._last_stream = float(starts[-1]), float(streams[-1])
            self._xruns += int(np.count_nonzero(meta[:, 2]))
        if reference.any() or error.any():
            self.last_signal_sample = self.samples + error.size
        self.samples += error.size
        if self.classifier is not None and self.classifies_own_reference \
                and self.samples - self.last_signal_sample < self.sample_rate:
            self._classify(reference)
        if self.alarm_detector is not None:
            self._listen(reference)

    # -- warning sounds -------------------------------------------------------------------------
    def _listen(self, reference: np.ndarray) -> None:
        """Run the detector; a detection holds the speaker in hear-through until `alarms.hold_s`
        after the sound ends (and never before the detector has seen it end)."""
        now = self.samples / self.sample_rate
        for event in self.alarm_detector.process(reference):
            if event.end_s is None:
                self.bypass, self._bypass_until = event, None
                log.warning("warning sound: %s (%.0f Hz, %.1f dBFS), hear-through on",
                            event.kind, event.frequency_hz, event.level_dbfs)
                self._apply_mode()
            else:
                self._close_alarm(event, now)
        if self._bypass_until is not None and now >= self._bypass_until and self.alarm_detector.active is None:
            self.bypass, self._bypass_until = None, None
            self._apply_mode()

    def _close_alarm(self, event: AlarmEvent, now: float) -> None:
        entry = event.to_dict()
        self.report.alarms.append(entry)
        self._bypass_until = event.end_s + self.cfg.alarms.hold_s
        log.info("warning sound ended: %s, %.1f s long", event.kind, event.end_s - event.start_s)
        if self.records is not None:
            wall = self.wall_clock()
            self._pending.append(self.records.alarm_detection(
                alarm_kind=event.kind, start_time=utc_iso(wall - (now - event.start_s)),
                end_time=utc_iso(wall - (now - event.end_s)), detected_s=round(event.detected_s - event.start_s, 3),
                duration_s=round(event.end_s - event.start_s, 3), confidence=entry["confidence"],
                level_dbfs=entry["level_dbfs"], frequency_hz=entry["frequency_hz"]))

    def _apply_mode(self) -> None:
        """Give the engine the mode the speaker should play: hear-through while a warning sound
        holds it, else the wearer's (off when anc_enabled is false). Recorded when it changes."""
        mode = "hear-through" if self.bypass is not None else self.settings.speaker_mode
        if mode == self.speaker_mode:
            return
        self.speaker_mode = mode
        self.engine.set_mode(mode)
        self.report.modes.append({"t_s": round(self.samples / self.sample_rate, 3), "mode": mode})

    def use_secondary_path(self, estimate: np.ndarray) -> None:
        """A new secondary-path estimate (as long as the old: re-identified on the fly) for the
        cancellation estimate; the no-harm guards start over, their history was the old path's."""
        np.copyto(self._secondary, estimate)
        np.copyto(self._secondary_reversed, self._secondary[::-1])
        self._guard_error = self._guard_disturbance = 0.0
        self._guard_samples = 0
        self._guard_good_s = self._guard_calm_s = 0.0
        self._guard_ceiling = 1.0
        self._reset_scale()
        self.engine.set_step_factor(1.0)
        self.engine.set_output_scale(1.0)

    def _speaker_buffer(self, size: int) -> np.ndarray:
        if self._speaker.size < size:
            self._speaker = np.empty(size)
        return self._speaker[:size]

    def _estimate(self, output: np.ndarray, error: np.ndarray, speaker: np.ndarray) -> None:
        """The speaker at the error mic into `speaker`, the chunk's energies into `_sums`."""
        kept = self._secondary.size - 1
        if self._secondary_input.size < kept + output.size:
            grown = np.zeros(kept + output.size)
            grown[:kept] = self._secondary_input[:kept]
            self._secondary_input = grown
        speaker_at_error(output, error, self._secondary_reversed, self._secondary_input, speaker, self._sums,
                         self._scale_level, self._scale_level_coef)

    def _speaker_at_error(self, output: np.ndarray) -> np.ndarray:
        """The speaker's contribution at the error mic, through the estimated secondary path,
        with the filter's input history carried from the previous chunk (a streaming FIR)."""
        speaker = np.empty(output.size)
        self._estimate(output, output, speaker)
        return speaker

    # -- classification -----------------------------------------------------------------------
    def _classify(self, reference: np.ndarray) -> None:
        decimated = self._decimator.process(reference)
        ring = self._window_ring
        size, count, end = ring.size, decimated.size, self._window_end
        if count >= size:
            ring[:] = decimated[count - size:]
            self._window_end = 0
        else:
            first = min(count, size - end)
            ring[end:end + first] = decimated[:first]
            ring[:count - first] = decimated[first:]
            self._window_end = (end + count) % size
        self._window_fill = min(size, self._window_fill + count)
        self._since_hop += count
        if self._window_fill < size or self._since_hop < self._hop:
            return
        self._since_hop = 0
        end = self._window_end
        self._window[:size - end] = ring[end:]
        self._window[size - end:] = ring[:end]
        from device.core.features import power_and_peak

        detection = self.classifier.classify(self._window, self._unknown_rule)
        power_db, peak_hz = power_and_peak(self._window, self._classifier_rate)
        time_s = self.samples / self.sample_rate
        entry = {
            "time_s": round(time_s, 3),
            "noise_type": detection.noise_type,
            "confidence": round(float(detection.confidence), 4),
            "probabilities": {k: round(float(v), 4) for k, v in detection.probabilities.items()},
            "avg_power_db": round(float(power_db), 2),
            "peak_frequency_hz": round(float(peak_hz), 1),
            "ood_score": None if detection.ood_score is None else round(float(detection.ood_score), 3),
        }
        self.report.detections.append(entry)
        if self.records is not None:
            self._pending.append(self.records.noise_detection(
                timestamp=self._timestamp(), noise_type=detection.noise_type,
                confidence=entry["confidence"], probabilities=entry["probabilities"],
                avg_power_db=entry["avg_power_db"], peak_frequency_hz=entry["peak_frequency_hz"]))
        switched = self._tracker.update(detection)
        if switched is not None:
            self.current_class = switched
            self.report.class_changes.append(ClassChange(time_s, switched, float(detection.confidence)))
            if self.settings.preset_override is None:
                self._apply_preset(switched)
                log.info("noise class %s (confidence %.2f)", switched, detection.confidence)

    # -- settings from the control channel ------------------------------------------------------
    def _apply_preset(self, name: str) -> None:
        from device.core.classifier import UNKNOWN

        if name == UNKNOWN:
            # Unlike every class the model knows: the neutral settings of the controller section.
            controller = self.cfg.controller
            self.preset_intensity = 1.0
            self.engine.apply_preset(controller.step_size, controller.leakage, self.settings.speaker_gain(1.0))
            log.info("noise unknown: neutral settings, step %.4g, leakage %.3g", controller.step_size,
                     controller.leakage)
            return
        preset = self.cfg.presets[name]
        self.preset_intensity = preset.intensity
        self.engine.apply_preset(preset.step_size, preset.leakage, self.settings.speaker_gain(preset.intensity))
        log.info("preset %s: step %.4g, leakage %.3g, intensity %.2f",
                 name, preset.step_size, preset.leakage, preset.intensity)

    def apply_settings(self, changes: dict) -> None:
        """Validated settings from the control channel, applied between blocks."""
        proposed = dataclasses.replace(self.settings)
        proposed.update(changes)
        if "anc_intensity" in changes:
            # First, so that a gain the engine refuses (UserError) leaves every setting as it was.
            self.engine.set_intensity(proposed.speaker_gain(self.preset_intensity))
        self.settings = proposed
        if "anc_enabled" in changes:
            self.engine.set_enabled(self.settings.enabled)
        if "anc_enabled" in changes or "anc_mode" in changes:
            self._apply_mode()
        if "preset" in changes:
            forced = self.settings.preset_override
            if forced is not None:
                self._apply_preset(forced)
            elif self.current_class is not None:
                self._apply_preset(self.current_class)

    def replace_classifier(self, classifier) -> None:
        """A new model (verified by the caller); the window and hysteresis carry on."""
        self.classifier = classifier

    # -- metrics --------------------------------------------------------------------------------
    def _close_interval(self) -> None:
        n = max(self._interval_samples, 1)
        durations = np.concatenate(self._durations) if self._durations else np.zeros(1)
        jitter = np.concatenate(self._jitter) if self._jitter else np.zeros(1)
        # The whole-run histograms take the interval at once (one call, not one per poll).
        if self._durations:
            self.callback_durations.add(durations)
        if self._jitter:
            self.callback_jitter.add(jitter)
        events = self.engine.drain_events()
        self.report.safety_events.extend(events)
        snapshot = self.engine.snapshot()
        cancellation = None
        if self._interval_error > 0 and snapshot["mode"] == "run" and self.speaker_mode == "anc":
            cancellation = _db(self._interval_disturbance / self._interval_error)
        interval_s = n / self.sample_rate
        metrics = IntervalMetrics(
            time_s=self.samples / self.sample_rate,
            estimated_cancellation_db=cancellation,
            error_rms_dbfs=_db(self._interval_error / n),
            output_rms_dbfs=_db(self._interval_output / n),
            callback_p50_ms=float(np.percentile(durations, 50) * 1e3),
            callback_p99_ms=float(np.percentile(durations, 99) * 1e3),
            callback_max_ms=float(durations.max() * 1e3),
            jitter_p99_ms=float(np.percentile(jitter, 99) * 1e3),
            xruns=self._xruns,
            cpu_utilization=float(durations.sum() / interval_s) if self._durations else 0.0,
            step_size=float(snapshot["step_size"]),
            weight_norm=float(snapshot["weight_norm"]),
            mode=snapshot["mode"],
            noise_type=self.current_class,
        )
        self.report.metrics.append(metrics)
        if self.records is not None:
            self._pending.append(self.records.processing_metric(
                timestamp=self._timestamp(),
                latency_ms=round(metrics.callback_p99_ms, 4),
                cpu_utilization=round(metrics.cpu_utilization, 4),
                memory_mb=memory_mb()["rss_mb"],
                cancellation_db=None if cancellation is None else round(cancellation, 2),
                algorithm="fxlms",
                extras={
                    "block_period_ms": round(1e3 * self.block_size / self.sample_rate, 4),
                    "callback_p50_ms": round(metrics.callback_p50_ms, 4),
                    "callback_max_ms": round(metrics.callback_max_ms, 4),
                    "jitter_p99_ms": round(metrics.jitter_p99_ms, 4),
                    "xruns": metrics.xruns,
                    "dropped_blocks": self.ring.dropped,
                    "step_size": metrics.step_size,
                    "weight_norm": round(metrics.weight_norm, 4),
                    "mode": metrics.mode,
                    "noise_type": metrics.noise_type,
                    "safety_events": [event.to_dict() for event in events],
                    **({} if self.ear is None else {"ear": self.ear}),
                },
            ))
        self._reset_interval()

    def _scale_output(self, disturbance: np.ndarray, speaker_at_error: np.ndarray) -> None:
        """Never louder: play the anti-noise at the lower confidence bound of the scale that
        minimizes the error power.

        With z = s_hat * y_played the anti-noise at the error mic and d_hat = e - z, playing
        a * y leaves |d_hat + a z|^2, least at a* = -<d_hat, z> / <z, z>. a* < 1 exactly when
        the residual error correlates with the anti-noise (<e, z> > 0): the output overshoots
        (a start-up transient on engine orders was 3-4 dB louder than off for half a second
        and tripped the watchdog) or is mostly misadjustment noise where the reachable optimum
        is ~1 dB (broadband noise on an earcup). At the optimum the residual is orthogonal to
        the output, a* = 1, and the rule costs nothing where control helps. The sums are kept
        per unit of the scale in force, so the scale is a least-squares estimate from the
        signals, not a loop around its own last value; the filter adapts whatever the scale
        (the kernel's adaptation gate ignores it and the modified-FxLMS error does not see what
        is played): with the model right nothing here can oscillate (with the real path over
        twice its estimate it can: the fixed step then held the scale in a limit cycle,
        docs/cancellation.md). z is what was played, not the filter's own w . x': while the
        weights move fast the two differ, and that difference is the harm.

        a* is an estimate, and playing a is louder than off exactly when the true optimum is
        under a / 2: where there is nothing to gain the estimate's own noise on a correlation
        near zero made seconds louder than off, and where the noise changes a scale learned on
        one second was applied to the next. So the scale played is a* - k sigma, sigma the
        standard error of a* from the spread of its SCALE_SEGMENT_S segments (C and P the
        weighted sums of the segments' c_i and p_i, var a* ~ sum w_i^2 (c_i - a* p_i)^2 / P^2,
        with the small-sample factor n / (n - 1) of the segments' effective number n): with
        C anywhere in C_hat -/+ k sigma P, the error power's worst case D - 2 a C_low + a^2 P
        is least at a = C_low / P, the lower bound. k = SCALE_CONFIDENCE = 2: the true optimum
        is under the bound's half (a louder second) with probability about 2% where it is
        near zero, against one half for a* itself; a larger k costs more where control helps
        and the segments' spread is a noisy estimate of sigma. Segments, not chunks, so that
        the bound does not depend on how the audio happens to be chunked."""
        sums = np.zeros(7)
        level_weighted_sums(np.ascontiguousarray(disturbance, dtype=np.float64),
                            np.ascontiguousarray(speaker_at_error, dtype=np.float64),
                            self._scale_level, self._scale_level_coef, sums)
        self._scale_from_sums(float(sums[5]), float(sums[6]), disturbance.size)

    def _reset_scale(self) -> None:
        self._scale_cross = self._scale_power = 0.0
        self._segment_cross = self._segment_power = 0.0   # the open segment's, decayed as the sums
        self._segment_samples = 0
        self._scale_cc = self._scale_cp = self._scale_pp = 0.0   # sums of w_i^2 c_i c_i, c_i p_i, p_i p_i
        self._scale_segments = self._scale_segments2 = 0.0     # sums of w_i and w_i^2 over segments
        self._scale_level[0] = 0.0

    def _scale_from_sums(self, cross: float, power: float, samples: int) -> None:
        """`_scale_output` from the chunk's <d_hat, z / L> and <z, z / L> over `samples` samples,
        L d_hat's power smoothed per sample over SCALE_LEVEL_TIME_CONSTANT_S: a* is a ratio, so
        a steady level cancels out of it, and across a change of level each passage weighs alike
        rather than by its energy."""
        scale = max(self.engine.output_scale, MIN_OUTPUT_SCALE)
        decay = math.exp(-samples / (SCALE_TIME_CONSTANT_S * self.sample_rate))
        decay2 = decay * decay
        c, p = -cross / scale, power / scale ** 2
        self._scale_cross = decay * self._scale_cross + c
        self._scale_power = decay * self._scale_power + p
        self._segment_cross = decay * self._segment_cross + c
        self._segment_power = decay * self._segment_power + p
        self._segment_samples += samples
        self._scale_cc *= decay2
        self._scale_cp *= decay2
        self._scale_pp *= decay2
        self._scale_segments *= decay
        self._scale_segments2 *= decay2
        if self._segment_samples >= self.scale_segment_samples:
            sc, sp = self._segment_cross, self._segment_power
            self._scale_cc += sc * sc
            self._scale_cp += sc * sp
            self._scale_pp += sp * sp
            self._scale_segments += 1.0
            self._scale_segments2 += 1.0
            self._segment_cross = self._segment_power = 0.0
            self._segment_samples = 0
        total = self._scale_power
        if not total > 1e-20:
            return
        best = self._scale_cross / total
        n2 = self._scale_segments * self._scale_segments
        if n2 > self._scale_segments2 * (1.0 + 1e-9):
            spread = self._scale_cc - 2.0 * best * self._scale_cp + best * best * self._scale_pp
            variance = max(0.0, spread) / (total * total) * n2 / (n2 - self._scale_segments2)
            bound = best - SCALE_CONFIDENCE * math.sqrt(variance)
        else:
            bound = MIN_OUTPUT_SCALE  # fewer than two segments: no spread to judge a* by
        bound = min(1.0, max(MIN_OUTPUT_SCALE, bound))
        if abs(bound - self.engine.output_scale) > 1e-3:
            self.engine.set_output_scale(bound)

    def _guard_step(self, cancellation_db: float) -> None:
        """Do no harm: where the noise is not predictable (broadband on a rig whose latency
        makes it non-causal) the optimum is ~0 dB and a large step only adds misadjustment
        noise, so the device would make things louder. Halve the step while the device's
        own estimate says it amplifies; grow it back slowly, on evidence, and not to a step
        that was harmful: halving and doubling on every judgement made the step oscillate
        between three values on a live duct while the cancellation collapsed. Growing back
        is a monotone climb that stops below the harmful step for CEILING_HOLD_S."""
        factor = self.engine.step_factor
        minimum = max(self.cfg.safety.min_step_size / max(self.engine.base_step_size, 1e-12), 1 / 64)
        if cancellation_db < -AMPLIFY_DB:
            self._guard_ceiling = max(minimum, factor * 0.5)
            factor = self._guard_ceiling
            self._guard_good_s = self._guard_calm_s = 0.0
        else:
            self._guard_calm_s += GUARD_INTERVAL_S
            self._guard_good_s = self._guard_good_s + GUARD_INTERVAL_S if cancellation_db > RECOVER_DB else 0.0
            if self._guard_calm_s >= CEILING_HOLD_S:
                self._guard_ceiling = min(1.0, self._guard_ceiling * math.sqrt(2.0))
                self._guard_calm_s = 0.0
            if self._guard_good_s >= RECOVER_S:
                factor = min(self._guard_ceiling, factor * math.sqrt(2.0))
                self._guard_good_s = 0.0
        if factor != self.engine.step_factor:
            self.engine.set_step_factor(factor)

    def _timestamp(self) -> str:
        return utc_iso(self.wall_clock())

    def submit(self, record) -> None:
        """A record made outside the worker (several ears' one session record), written to the
        sink after the worker's own, with the same retry."""
        self._pending.append(record)
        self._flush()

    def _flush(self) -> None:
        self._flushed_at = self.samples
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        if self.sink is not None:
            try:
                self.sink.append(batch)
                self.report.records_written += len(batch)
            except Exception as exc:  # the spool is an edge: never let it stop the audio worker
                log.error("spool write failed, %d records kept in memory for the next try: %s", len(batch), exc)
                self._pending = batch + self._pending

    # -- end of session ---------------------------------------------------------------------------
    @property
    def session_cancellation_db(self) -> float | None:
        if self._session_error <= 0:
            return None
        return _db(self._session_disturbance / self._session_error)

    @property
    def session_energies(self) -> tuple[float, float]:
        """(disturbance, error) energy over the session's anti-noise time, as the device
        estimates them: what several ears' cancellation is combined from."""
        return self._session_disturbance, self._session_error

    def finish(self, status: str = "completed", start_time: str | None = None, write_record: bool = True) -> dict:
        """Drain what is left, close the partial interval, write the session record (unless
        `write_record` is false: several ears write one record for the headphone)."""
        self.poll()
        if self.alarm_detector is not None:
            open_event = self.alarm_detector.finish(self.samples / self.sample_rate)
            if open_event is not None:
                self._close_alarm(open_event, self.samples / self.sample_rate)
        if self._interval_samples > 0:
            self._close_interval()
        self.report.safety_events.extend(self.engine.drain_events())
        snapshot = self.engine.snapshot()
        session = {
            "start_time": start_time,
            "end_time": self._timestamp(),
            "sample_rate": self.sample_rate,
            "anc_enabled": self.settings.enabled,
            "anc_intensity": self.settings.intensity,
            "total_samples": int(self.samples),
            "avg_cancellation_db": None if self.session_cancellation_db is None else round(self.session_cancellation_db, 2),
            "status": status,
        }
        if self.records is not None and write_record:
            self._pending.append(self.records.session(**session))
        self._flush()
        session["watchdog_trips"] = snapshot["watchdog_trips"]
        session["anc_mode"] = self.settings.mode
        session["modes"] = list(self.report.modes)
        session["alarms"] = list(self.report.alarms)
        return session


class LatencyHistogram:
    """Percentiles of callback timings over a whole run in constant memory: log-spaced bins
    from 1 us to 1 s, 2.3% wide, plus the exact maximum."""

    EDGES = np.geomspace(1e-6, 1.0, 601)

    def __init__(self):
        self.counts = np.zeros(self.EDGES.size + 1, dtype=np.int64)
        self.maximum = 0.0

    def add(self, seconds: np.ndarray) -> None:
        if seconds.size == 0:
            return
        self.counts += np.bincount(np.searchsorted(self.EDGES, seconds), minlength=self.counts.size)
        self.maximum = max(self.maximum, float(seconds.max()))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float | None:
        """Upper edge of the bin holding the q-th percentile (s), None when empty."""
        total = self.total
        if total == 0:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * total))
        return float(min(self.EDGES[min(index, self.EDGES.size - 1)], self.maximum))

    def summary_ms(self, prefix: str) -> dict:
        return {f"{prefix}_{name}_ms": None if (value := self.percentile(q) if q else (self.maximum if self.total else None)) is None
                else round(value * 1e3, 4)
                for name, q in (("p50", 50), ("p99", 99), ("p999", 99.9), ("max", None))}


def new_session_id() -> str:
    return uuid.uuid4().hex
