"""The live runtime: a controller session on a PortAudio stream, kept alive for hours.

Threads, and why this shape bounds what can delay the audio callback:

* PortAudio's callback thread runs `DuplexStream._callback`: copies, one nogil numba call,
  the ring push. It needs the GIL only for a few microseconds per block.
* The worker thread (`Session.start_worker`) does metrics, classification, records and the
  control channel. Its heavy parts release the GIL (numpy on whole blocks, onnxruntime, the
  SQLite write), and the interpreter's switch interval is cut from 5 ms to
  `SWITCH_INTERVAL_S`, so Python code on the worker gives the GIL back within that when the
  callback asks for it.
* The garbage collector is frozen after start-up (everything loaded so far is never scanned)
  and disabled; the worker runs a full collection every `GC_INTERVAL_S` between blocks and
  the pause is measured (`gc_max_ms`). A collection can therefore never start inside the
  callback, which allocates (sounddevice wraps each buffer in a new array).
* This main thread sleeps on an event; it checks the stream, fades in/out, restarts the
  stream after an error, and pings the systemd watchdog only while both the callback and the
  worker make progress.

Every figure is measured and reported per metrics interval and on exit (p50/p99/p99.9/max
of the callback duration and start jitter against the block period).

The session is a `Session` (one ear) or an `EarsSession` (several ears in one stream, one
kernel call per block for all of them): the callback figures are the whole callback's, and
the summary gives each ear's cancellation estimate, watchdog trips and safety events under
`ears`.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
import time
from typing import Any

from device.rig import sdnotify
from device.rig.audio import DuplexStream, process_age_s, rescan_devices, resolve_stream
from device.contract.config import Config
from device.rig.control import RuntimeControl
from device.rig.memory import page_out_cold_libraries, return_freed_memory
from device.contract.errors import UserError
from device.core import summary as session_summary_parts
from device.core.session import Session
from device.core.worker import memory_mb

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0002   # s, longest the worker's Python code holds the GIL against the callback
GC_INTERVAL_S = 10.0         # s between full garbage collections on the worker
STALL_S = 2.0                # s without a callback on an "active" stream counts as a stream error
SILENCE_S = 2.0              # s of exact digital zeros on both mics counts as a disconnected device
RETRY_FIRST_S = 1.0          # s, first wait before reopening a failed stream
RETRY_MAX_S = 30.0           # s, longest wait between reopen attempts
TICK_S = 0.05                # s, period of the main thread's checks


class Supervisor:
    def __init__(self, cfg: Config, sd, session: Session, stream: DuplexStream,
                 spool: Any | None = None, quiet: bool = False):
        self.cfg = cfg
        self.sd = sd
        self.session = session
        self.engine = session.engine
        self.stream = stream
        self.spool = spool
        self.quiet = quiet
        self.stop_requested = threading.Event()
        self.stop_reason = "completed"
        self.stream_errors = 0
        self.stream_restarts = 0
        self.last_stream_error: str | None = None
        self.unmuted_after_s: float | None = None
        self.gc_max_ms = 0.0
        self._last_gc = time.monotonic()
        self._blocks_before = 0  # blocks and xruns of earlier streams (a restart starts new counters)
        self._xruns_before = 0
        self.unmuted_pending = True
        self._silence_reported_at = 0  # worker sample count at the last silence report
        self.control = RuntimeControl(cfg.runtime.state_dir, session.worker, health=self.health,
                                      workers=session.workers)
        # One tracker per ear (an `EarsSession` holds a session per ear), each storing its own ear's estimate.
        ear_sessions = getattr(session, "sessions", None)
        trackers = ([(name, ear_session.tracker) for name, ear_session in ear_sessions.items()] if ear_sessions
                    else [(None, getattr(session, "tracker", None))])
        for ear, tracker in trackers:
            if tracker is not None and tracker.enabled:
                tracker.listeners.append(functools.partial(self._store_reidentified, ear=ear))

    def _store_reidentified(self, estimate, ear: str | None = None) -> None:
        """A secondary-path estimate re-identified on the fly replaces the stored one (of `ear`,
        with several ears), so the next `run` starts with it (on the worker thread, never the
        callback: two small files written atomically, as `identify` writes them). The stored
        metadata is kept, marked."""
        from device.contract.files import utc_now_iso
        from device.rig.estimates import load_estimates, save_estimates

        identity = self.stream.spec.identity
        current = load_estimates(self.cfg.runtime.state_dir, identity, ear=ear)
        details = {key: value for key, value in current.metadata.items() if key not in ("identity", "created_at")}
        details["reidentified"] = {"at": utc_now_iso(), "replaces_estimate_of": current.metadata.get("created_at"),
                                   "reidentifications": int(details.get("reidentified", {}).get("reidentifications", 0)) + 1}
        path = save_estimates(self.cfg.runtime.state_dir, estimate, current.feedback_path, identity, details, ear=ear)
        log.info("re-identified secondary path%s stored in %s", f" of ear {ear}" if ear else "", path)

    # -- shared read-outs ----------------------------------------------------------------------
    @property
    def blocks(self) -> int:
        return self._blocks_before + self.stream.blocks

    @property
    def xruns(self) -> int:
        return self._xruns_before + self.stream.xruns

    def health(self) -> dict[str, Any]:
        return {
            "stream_active": self.stream.active,
            "stream_errors": self.stream_errors,
            "last_stream_error": self.last_stream_error,
            "xruns": self.xruns,
            "dropped_blocks": self.session.ring.dropped,
            "session_id": self.session.session_id,
        }

    # -- worker-side periodic jobs ----------------------------------------------------------------
    def _on_worker_poll(self) -> None:
        self.control.poll()
        now = time.monotonic()
        if now - self._last_gc >= GC_INTERVAL_S:
            started = time.perf_counter()
            gc.collect()
            self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - started) * 1e3)
            self._last_gc = now

    # -- stream lifecycle ---------------------------------------------------------------------------
    def _report_stream_error(self, message: str) -> None:
        self.stream_errors += 1
        if message != self.last_stream_error:  # once per distinct error, not once per retry
            log.error("audio stream: %s; retrying with backoff", message)
            sdnotify.status(f"audio stream error: {message}; retrying")
        self.last_stream_error = message

    def _start_stream(self) -> bool:
        """Open and start the stream once; False (error reported) if PortAudio refuses."""
        try:
            self.stream.start()
            return True
        except self.sd.PortAudioError as exc:
            self.stream.close()
            self._report_stream_error(str(exc))
            return False

    def _reopen_stream(self) -> bool:
        """After an error: rescan the devices (the card or JACK client may be back under a new
        index), check it is still the stream the estimate was made for, and start again."""
        self._blocks_before += self.stream.blocks
        self._xruns_before += self.stream.xruns
        self.stream.close()
        try:
            rescan_devices(self.sd)
            spec = resolve_stream(self.sd, self.cfg)
        except UserError as exc:
            self._report_stream_error(str(exc))
            return False
        except self.sd.PortAudioError as exc:
            self._report_stream_error(str(exc))
            return False
        if spec.identity != self.stream.spec.identity:
            raise UserError(f"audio: the device changed ({spec.describe()}); run `anc-device identify` again")
        self.stream = DuplexStream(self.sd, spec, self.session, number=self.stream_restarts + 1)
        # A gap in the audio: start again muted, re-measure the baseline, fade in.
        self.engine.reset()
        self.unmuted_pending = True
        if not self._start_stream():
            return False
        self.stream_restarts += 1
        log.info("audio stream restarted on %s", spec.describe())
        return True

    def request_stop(self, signum=None, frame=None) -> None:
        if signum is not None:
            self.stop_reason = "stopped"
        self.stop_requested.set()

    # -- main loop -------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        previous_handlers = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous_switch = sys.getswitchinterval()
        self.unmuted_pending = True
        status = "completed"
        try:
            self.session.start_worker(on_poll=self._on_worker_poll)
            gc.collect()
            gc.freeze()
            gc.disable()
            return_freed_memory()
            page_out_cold_libraries()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            status = self._loop(duration_s)
        finally:
            self._shutdown()
            sys.setswitchinterval(previous_switch)
            gc.enable()
            gc.unfreeze()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        summary = self.session.stop(status=status)
        self.control.final_report(status)
        return self._summary(summary)

    def _loop(self, duration_s: float | None) -> str:
        started = time.monotonic()
        retry_delay = RETRY_FIRST_S
        retry_at = 0.0
        streaming = self._start_stream()
        if streaming:
            log.info("audio stream started on %s", self.stream.spec.describe())
        watchdog_period = sdnotify.watchdog_period_s()
        next_ping = time.monotonic()
        last_blocks, last_progress = self.blocks, time.monotonic()
        last_iterations = self.session.worker_iterations
        ready_sent = False
        while not self.stop_requested.is_set():
            now = time.monotonic()
            if duration_s is not None and now - started >= duration_s:
                break
            if watchdog_period and now >= next_ping:
                iterations = self.session.worker_iterations
                # Alive means the worker drains blocks and, while a stream is open, callbacks arrive.
                # While a lost device is being retried the service is alive too (STATUS says so):
                # a restart by systemd would not bring the device back.
                if iterations != last_iterations and (not streaming or now - last_progress < STALL_S):
                    sdnotify.watchdog()
                last_iterations = iterations
                next_ping = now + watchdog_period / 2
            if not streaming:
                if not ready_sent:  # up, but waiting for its device: do not let the start time out
                    ready_sent = sdnotify.ready(f"waiting for the audio device: {self.last_stream_error}") or True
                if retry_at == 0.0:
                    retry_at = now + retry_delay
                elif now >= retry_at:
                    streaming = self._reopen_stream()
                    retry_delay = RETRY_FIRST_S if streaming else min(RETRY_MAX_S, retry_delay * 2)
                    retry_at = 0.0 if streaming else time.monotonic() + retry_delay
                    last_blocks, last_progress = self.blocks, time.monotonic()
                self.stop_requested.wait(TICK_S)
                continue
            blocks = self.blocks
            if blocks != last_blocks:
                last_blocks, last_progress = blocks, now
            if self.stream.callback_errors and self.stream.last_callback_error:
                log.error("audio callback raised %s (output silenced for that block; %d so far)",
                          self.stream.last_callback_error, self.stream.callback_errors)
                self.stream.last_callback_error = None
            failure = None
            worker = self.session.worker
            # Every microphone of every ear: one ear's mics may be silent on their own.
            last_signal = max(w.last_signal_sample for w in self.session.workers)
            if self.stream.finished.is_set() or not self.stream.active:
                failure = "the stream stopped (device gone or PortAudio error)"
            elif now - last_progress > STALL_S:
                failure = f"no audio callback for {STALL_S:.0f} s"
            elif worker.samples - max(last_signal, self._silence_reported_at) \
                    > SILENCE_S * self.stream.spec.sample_rate:
                # JACK keeps a stream running when the client it was connected to vanishes, and a
                # dead USB card may deliver zeros: reopening re-finds and reconnects the device.
                # The worker owns last_signal_sample; this thread only notes what it reported.
                self._silence_reported_at = worker.samples
                failure = (f"{'every' if len(self.session.workers) > 1 else 'both'} microphones digitally silent "
                           f"for {SILENCE_S:.0f} s (device disconnected?)")
            if failure is not None:
                self._report_stream_error(failure)
                streaming, retry_at = False, 0.0
                continue
            if self.unmuted_pending and self.engine.mode == "run":
                self.unmuted_pending = False
                if self.unmuted_after_s is None:
                    self.unmuted_after_s = process_age_s()
                    log.info("anti-noise on (%.2f s after process start)", self.unmuted_after_s or -1)
                sdnotify.ready(f"cancelling on {self.stream.spec.describe()}")
                ready_sent = True
            self.stop_requested.wait(TICK_S)
        return self.stop_reason

    def _shutdown(self) -> None:
        sdnotify.stopping()
        if self.stream.active:
            self.engine.fade_out()
            deadline = time.monotonic() + 3 * self.cfg.safety.fade_ms / 1e3 + 0.5
            while not self.engine.is_silent and time.monotonic() < deadline and self.stream.active:
                time.sleep(0.005)
        self._blocks_before += self.stream.blocks
        self._xruns_before += self.stream.xruns
        self.stream.close()
        self.stream.blocks = self.stream.xruns = 0

    def _summary(self, session: dict[str, Any]) -> dict[str, Any]:
        worker = self.session.worker
        spec = self.stream.spec
        period_ms = spec.block_size * 1e3 / spec.sample_rate
        shared = session_summary_parts.session_parts(self.session)
        summary = {
            "status": session["status"],
            "device": spec.describe(),
            "sample_rate": spec.sample_rate,
            "block_size": spec.block_size,
            "block_period_ms": round(period_ms, 4),
            "blocks": self.blocks,
            "duration_s": round(self.blocks * spec.block_size / spec.sample_rate, 3),
            **worker.callback_durations.summary_ms("callback"),
            **worker.callback_jitter.summary_ms("jitter"),
            "xruns": self.xruns,
            "dropped_blocks": self.session.ring.dropped,
            "callback_errors": self.stream.callback_errors,
            "stream_errors": self.stream_errors,
            "stream_restarts": self.stream_restarts,
            "last_stream_error": self.last_stream_error,
            "unmuted_after_s": None if self.unmuted_after_s is None else round(self.unmuted_after_s, 3),
            "gc_max_ms": round(self.gc_max_ms, 3),
            **memory_mb(),
            "estimated_cancellation_db": session["avg_cancellation_db"],
            "estimated_cancellation_recent_db": session_summary_parts.mean_cancellation_db(worker.report.metrics, last=5),
            "watchdog_trips": session["watchdog_trips"],
            "safety_events": shared["safety_events"],
            "path_checks": session_summary_parts.path_checks(shared["safety_events"]),
            "noise_classes": shared["noise_classes"],
            "classifier": shared["classifier"],
            "records_written": shared["records_written"],
            "session_id": shared["session_id"],
            "anc_mode": session["anc_mode"],
            "modes": session["modes"],
            "alarms": session["alarms"],
        }
        p99 = summary["callback_p99_ms"]
        summary["callback_p99_of_period"] = None if p99 is None else round(p99 / period_ms, 4)
        if "ears" in session:
            summary["ears"] = {
                name: {
                    "estimated_cancellation_db": ear["avg_cancellation_db"],
                    "estimated_cancellation_recent_db": session_summary_parts.mean_cancellation_db(
                        worker.report.metrics, last=5),
                    "watchdog_trips": int(ear["watchdog_trips"]),
                    "diverged": ear["watchdog_trips"] > 0,
                    "safety_events": session_summary_parts.safety_events(worker.report),
                    "stopped_for_reidentification": any(event.kind == "stopped_reidentify"
                                                        for event in worker.report.safety_events),
                }
                for (name, ear), worker in zip(session["ears"].items(), self.session.workers)}
            recent = [ear["estimated_cancellation_recent_db"] for ear in summary["ears"].values()
                      if ear["estimated_cancellation_recent_db"] is not None]
            # Over several ears: the mean of the ears' figures (the session's is over every error mic).
            summary["estimated_cancellation_recent_db"] = round(sum(recent) / len(recent), 2) if recent else None
        return summary


def format_summary(summary: dict[str, Any]) -> str:
    from device.core.alarms import format_alarms

    _value = session_summary_parts.value_or_dash

    def ms(key):
        value = summary.get(key)
        return "-" if value is None else f"{value:.3f}"

    period = summary["block_period_ms"]
    lines = [
        f"status       {summary['status']} after {summary['duration_s']} s of audio ({summary['blocks']} blocks)",
        f"device       {summary['device']}",
        f"callback     p50 {ms('callback_p50_ms')}  p99 {ms('callback_p99_ms')}  p99.9 {ms('callback_p999_ms')}  "
        f"max {ms('callback_max_ms')} ms  (block period {period:.3f} ms)",
        f"start jitter p50 {ms('jitter_p50_ms')}  p99 {ms('jitter_p99_ms')}  p99.9 {ms('jitter_p999_ms')}  max {ms('jitter_max_ms')} ms",
        f"xruns        {summary['xruns']}   dropped blocks {summary['dropped_blocks']}   "
        f"stream errors {summary['stream_errors']} (restarts {summary['stream_restarts']})",
        f"cancellation {_value(summary['estimated_cancellation_recent_db'])} dB over the last intervals, "
        f"{_value(summary['estimated_cancellation_db'])} dB over the session (device estimates)   "
        f"watchdog trips {summary['watchdog_trips']}",
        *[f"{name:<12} {_value(ear['estimated_cancellation_recent_db'])} dB over the last intervals, "
          f"{_value(ear['estimated_cancellation_db'])} dB over the session; "
          + (f"watchdog tripped {ear['watchdog_trips']}x"
             + ("; anti-noise stopped: run `anc-device identify`" if ear["stopped_for_reidentification"] else "")
             if ear["diverged"] else "no watchdog events") for name, ear in (summary.get("ears") or {}).items()],
        *[line for line in session_summary_parts.safety_lines(summary["path_checks"]) if line.startswith("path")],
        f"start        anti-noise on {summary['unmuted_after_s'] if summary['unmuted_after_s'] is not None else '-'} s "
        f"after process start   gc max {summary['gc_max_ms']} ms",
        f"memory       {_value(summary['rss_mb'])} MiB resident (peak {_value(summary['rss_peak_mb'])}): "
        f"{_value(summary['rss_anon_mb'])} own, {_value(summary['rss_file_mb'])} libraries, "
        f"{_value(summary['rss_shmem_mb'])} shared memory (JACK)",
        f"classifier   {summary['classifier']}; classes {session_summary_parts.class_intervals(summary['noise_classes'], summary['duration_s'])}",
        f"records      {summary['records_written']} written to the spool",
        format_alarms(summary["alarms"], summary["modes"]),
    ]
    return "\n".join(lines)

