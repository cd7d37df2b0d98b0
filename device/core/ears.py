"""Several ears, one engine call per block.

`EarsEngine` builds one `AncEngine` per ear (its settings, estimates, hear-through equalizer
and checks are the one-ear engine's), then moves each ear's kernel state into rows of
stacked arrays and points that ear's engine at its rows. `process` runs all ears in one nogil
numba call (`device.core.dsp.ears.process_ears`); `ears[i]` is ear i's `AncEngine`, whose
read-outs and setters (snapshot, drain_events, set_mode, fade_out...) work on its rows as they
do for one ear, so a worker or a summary written for one engine serves each ear unchanged.
Each ear has its own watchdog, limiter and fades: one ear tripping leaves the others playing.
Each ear also re-identifies its own secondary path (its session's `PathTracker` drives that
ear's rows of the command word, probe and candidates): while one ear probes, the others cancel.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from device.contract.config import Config, ear_channels
from device.contract.errors import UserError
from device.core.dsp import ears as E
from device.core.dsp.ears import process_ears
from device.core.dsp.identification import make_probe
from device.core.engine import AncEngine
from device.core.features import warm_up as warm_up_features
from device.core.ringbuffer import BlockRing
from device.core.session import RING_SECONDS, Session, WorkerThread, load_classifier
from device.core.worker import new_session_id

# The per-ear 1-D state arrays of `AncEngine`, in the order of `process_ears`' padded rows and
# of the `LEN_*` columns of `lengths`.
_PADDED = (
    ("weights", E.LEN_WEIGHTS),
    ("secondary_path", E.LEN_SECONDARY),
    ("feedback_path", E.LEN_FEEDBACK),
    ("reference_buffer", E.LEN_REFERENCE_BUFFER),
    ("filtered_buffer", E.LEN_FILTERED_BUFFER),
    ("output_buffer", E.LEN_OUTPUT_BUFFER),
    ("hear_through", E.LEN_HEAR_THROUGH),
    ("probe", E.LEN_PROBE),
    ("secondary_candidate", E.LEN_SECONDARY_CANDIDATE),
    ("hear_candidate", E.LEN_HEAR_CANDIDATE),
    ("weights_candidate", E.LEN_WEIGHTS_CANDIDATE),
)
# Fixed-size per-ear arrays (the layout's params, status and cursors, the event ring and the
# re-identification's command word).
_FIXED = ("params", "status", "cursors", "events", "update_state", "twiddles", "tracking")


class EarsEngine:
    """N ears' controllers with their state stacked; `process` is one nogil call for all."""

    def __init__(self, names: Sequence[str], engines: Sequence[AncEngine]):
        if not engines or len(names) != len(engines):
            raise ValueError("one name per ear engine, at least one ear")
        first = engines[0]
        for engine in engines[1:]:
            if (engine.sample_rate, engine.block_size) != (first.sample_rate, first.block_size):
                raise ValueError("every ear runs at the stream's sample rate and block size")
        self.names = tuple(names)
        self.ears = tuple(engines)
        self.sample_rate = first.sample_rate
        self.block_size = first.block_size
        count = len(engines)
        for ear, engine in enumerate(engines):
            if ear and engine.probe.size:
                # Each ear's re-identification probe of its own: two ears checked at once hear
                # each other's probe through the crosstalk, which must not correlate with their own.
                s = engine.settings
                engine.probe = make_probe(engine.probe.size, s.reidentify_probe_level_dbfs,
                                          int(s.probe_fade_ms * 1e-3 * s.sample_rate), s.probe_seed + 1 + ear)
        self.lengths = np.zeros((count, E.N_LENGTHS), dtype=np.int64)
        self.stacked: dict[str, np.ndarray] = {}
        for name, column in _PADDED:
            arrays = [getattr(engine, name) for engine in engines]
            stacked = np.zeros((count, max(a.size for a in arrays)), dtype=np.float64)
            for ear, (engine, array) in enumerate(zip(engines, arrays)):
                stacked[ear, :array.size] = array
                self.lengths[ear, column] = array.size
                setattr(engine, name, stacked[ear, :array.size])
            self.stacked[name] = stacked
        for name in _FIXED:
            arrays = [getattr(engine, name) for engine in engines]
            stacked = np.stack(arrays)
            for engine, row in zip(engines, stacked):
                setattr(engine, name, row)
            self.stacked[name] = stacked
        s = self.stacked
        self._kernel_state = (self.lengths, s["tracking"], s["probe"], s["secondary_candidate"],
                              s["hear_candidate"], s["weights_candidate"], s["weights"], s["secondary_path"],
                              s["feedback_path"], s["reference_buffer"], s["filtered_buffer"], s["output_buffer"],
                              s["params"], s["status"], s["cursors"], s["events"], s["hear_through"],
                              s["update_state"], s["twiddles"])
        for engine in engines:
            engine.bind_kernel_state()

    @classmethod
    def from_config(cls, cfg: Config, secondary_paths: Sequence[np.ndarray],
                    feedback_paths: Sequence[np.ndarray | None] | None = None,
                    sample_rate: int | None = None, block_size: int | None = None) -> "EarsEngine":
        """One engine per configured ear (`audio.ears`, in order), from that ear's estimates."""
        names = [ear.name for ear in ear_channels(cfg.audio)]
        if len(secondary_paths) != len(names):
            raise UserError(f"secondary path estimates: {len(secondary_paths)} for {len(names)} configured ears "
                            f"({', '.join(names)}); run identification again")
        feedback = list(feedback_paths) if feedback_paths is not None else [None] * len(names)
        if len(feedback) != len(names):
            raise UserError(f"feedback path estimates: {len(feedback)} for {len(names)} configured ears")
        engines = [AncEngine.from_config(cfg, secondary, fb, sample_rate=sample_rate, block_size=block_size)
                   for secondary, fb in zip(secondary_paths, feedback)]
        return cls(names, engines)

    def __len__(self) -> int:
        return len(self.ears)

    def ear(self, name: str) -> AncEngine:
        return self.ears[self.names.index(name)]

    # -- the real-time call --------------------------------------------------------------
    def process(self, references: np.ndarray, errors: np.ndarray, outs: np.ndarray) -> None:
        """One block for every ear: C-contiguous (ears x block) arrays; `outs` is written."""
        process_ears(references, errors, outs, *self._kernel_state)

    def warm_up(self) -> None:
        """Compile (or load from the cache) the kernel for float32 and float64 blocks, then
        restore the initial state (as `AncEngine.warm_up` does for one ear)."""
        s = self.stacked
        saved = [a.copy() for a in (s["weights"], s["status"], s["cursors"], s["tracking"])]
        shape = (len(self.ears), self.block_size)
        for dtype in (np.float32, np.float64):
            self.process(np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype))
        s["weights"][...], s["status"][...], s["cursors"][...], s["tracking"][...] = saved
        for name in ("reference_buffer", "filtered_buffer", "output_buffer", "update_state"):
            s[name][...] = 0.0

    def reset(self) -> None:
        for engine in self.ears:
            engine.reset()

    # -- settings that concern the whole headphone ----------------------------------------
    def set_mode(self, mode: str) -> None:
        for engine in self.ears:
            engine.set_mode(mode)

    def set_enabled(self, enabled: bool) -> None:
        for engine in self.ears:
            engine.set_enabled(enabled)

    def fade_out(self) -> None:
        for engine in self.ears:
            engine.fade_out()

    @property
    def is_silent(self) -> bool:
        return all(engine.is_silent for engine in self.ears)

    @property
    def mode(self) -> str:
        """The headphone's kernel mode: "run" while any ear plays anti-noise (one ear's watchdog
        trip leaves the other running), else the first ear's."""
        modes = [engine.mode for engine in self.ears]
        return "run" if "run" in modes else modes[0]

    def snapshots(self) -> dict[str, dict]:
        return {name: engine.snapshot() for name, engine in zip(self.names, self.ears)}


def compose_ears_session(ear_configs: dict[str, Config], secondary_paths: Sequence[np.ndarray],
                         feedback_paths: Sequence[np.ndarray | None], *, sample_rate: int, block_size: int,
                         spool: Any | None = None,
                         classifier: tuple[Any | None, str | None] | None = None) -> "EarsSession":
    """`compose_session` for several ears: each ear's engine from its own configuration (the
    controller length and feedback decision its identification made) and estimates, stacked and
    warmed up (the workers' feature and filter loops too), one session per ear sharing one
    session id, and the classifier (the same rules as for one ear: a missing or refused model
    is a UserError before anything is compiled)."""
    names = list(ear_configs)
    cfg = ear_configs[names[0]]
    model, classifier_error = classifier if classifier is not None else load_classifier(cfg, required=True)
    engines = [AncEngine.from_config(ear_configs[name], secondary, feedback, sample_rate=sample_rate,
                                     block_size=block_size)
               for name, secondary, feedback in zip(names, secondary_paths, feedback_paths)]
    engine = EarsEngine(names, engines)
    engine.warm_up()
    # Each ear's worker runs the same feature and filter loops as one ear's: compiled here, not
    # on the first classification window while the stream runs (a compile then overflows the rings).
    warm_up_features()
    session_id = new_session_id()
    sessions = [Session(ear_configs[name], ear, classifier=model if k == 0 else None, spool=spool,
                        session_id=session_id, classifier_error=classifier_error)
                for k, (name, ear) in enumerate(zip(names, engine.ears))]
    return EarsSession(engine, sessions)


class EarsSession(WorkerThread):
    """One `Session` per ear (its ring, worker, metrics, watchdog events, no-harm guard) around
    one `EarsEngine`: `process_block` takes (ears x block) arrays, runs every ear's controller
    in one kernel call and hands each ear's block to that ear's worker.

    The noise classifier, when the first ear's session has one, hears the mean of every ear's
    reference mic (the outer mics of both cups hear the same room; their mean has the room's
    noise at the same level and each mic's self-noise 3 dB lower for two ears). The callback
    writes the mean into a preallocated block and a ring of its own; the first ear's worker
    classifies it, and the preset it picks goes to every ear. One session record is written
    for the headphone (`stop`), with each ear's cancellation and watchdog trips in it."""

    ears_at_once = True   # the duplex stream hands it all ears' blocks in one call

    def __init__(self, engine: EarsEngine, sessions: Sequence[Session]):
        if len(sessions) != len(engine):
            raise ValueError("one session per ear")
        self.engine = engine
        self.names = engine.names
        self.sessions = dict(zip(engine.names, sessions))
        self._rings = tuple(session.ring for session in sessions)
        self._shared: dict = {}   # worker -> the alarm another ear heard that holds it in hear-through
        first = sessions[0]
        self.cfg = first.cfg
        self.session_id = first.session_id
        self.start_time = first.start_time
        self.workers = tuple(session.worker for session in sessions)
        for name, session in zip(self.names, sessions):
            session.worker.ear = name
            session.tracker.ear = name
        # The first ear's worker stands for the whole callback (every ear's ring gets the same
        # timing), runs the classifier and answers for the headphone's settings.
        self.worker = first.worker
        self._mix_ring: BlockRing | None = None
        self._class_applied: str | None = None
        if self.worker.classifier is not None:
            self.worker.classifies_own_reference = False
            # The mean as one matrix-vector product into a block of the input's type (a sound
            # card's float32, the simulator's float64): one call, a sixth of a sum and a scaling.
            dtypes = (np.dtype(np.float32), np.dtype(np.float64))
            self._mix_weights = {dtype: np.full(len(sessions), 1.0 / len(sessions), dtype=dtype) for dtype in dtypes}
            self._mixes = {dtype: np.zeros(engine.block_size, dtype=dtype) for dtype in dtypes}
            self._mix_ring = BlockRing(first.ring.capacity, engine.block_size)

    @property
    def ring(self) -> BlockRing:
        """The first ear's ring: every ear's ring is pushed in the same callback and drained by
        the same thread, so what one drops the others drop too."""
        return self._rings[0]

    def process_block(self, references: np.ndarray, errors: np.ndarray, outs: np.ndarray, meta: np.ndarray) -> None:
        """Audio-callback safe: one nogil numba call and a few preallocated copies per ear."""
        self.engine.process(references, errors, outs)
        for ear, ring in enumerate(self._rings):
            ring.push(references[ear], errors[ear], outs[ear], meta)
        if self._mix_ring is not None:
            mix = self._mixes[references.dtype]
            np.dot(self._mix_weights[references.dtype], references, out=mix)
            self._mix_ring.push(mix, mix, mix, meta)

    def poll(self) -> int:
        """Every ear's worker, then the classifier on the ears' mix, then one warning-sound
        bypass for the whole headphone: an alarm one cup's reference mic hears switches every
        ear to hear-through, and they come back together when the ear that heard it lets go."""
        blocks = sum(session.poll() for session in self.sessions.values())
        self._classify_mix()
        workers = list(self.workers)
        for worker in workers:
            if worker in self._shared and worker.bypass is not self._shared[worker]:
                del self._shared[worker]   # it heard an alarm of its own meanwhile: its own to end
        heard = next((w.bypass for w in workers if w.bypass is not None and w not in self._shared), None)
        for worker in workers:
            if heard is not None and worker.bypass is None:
                worker.bypass = self._shared[worker] = heard
                worker._apply_mode()
            elif heard is None and worker in self._shared:
                worker.bypass = None
                del self._shared[worker]
                worker._apply_mode()
        return blocks

    def _classify_mix(self) -> None:
        if self._mix_ring is None:
            return
        worker = self.worker
        available = self._mix_ring.available()
        if available and worker.classifier is not None \
                and worker.samples - worker.last_signal_sample < worker.sample_rate:
            mix, _, _, _ = self._mix_ring.take(available)
            worker._classify(mix)
        elif available:
            self._mix_ring.take(available)
        chosen = worker.current_class
        if chosen is not None and chosen != self._class_applied:
            self._class_applied = chosen
            for other in self.workers[1:]:
                other.current_class = chosen
                if other.settings.preset_override is None:
                    other._apply_preset(chosen)

    def apply_settings(self, changes: dict) -> None:
        """Settings from the control channel, for every ear (the first refuses a bad value
        before any ear changes)."""
        for worker in self.workers:
            worker.apply_settings(changes)

    def stop(self, status: str = "completed") -> dict:
        """Stop the worker thread (if any), drain every ear, write one session record for the
        headphone; the summary of the whole (the one-ear keys) with each ear's under `ears`."""
        self.stop_worker()
        self._classify_mix()
        per_ear = {name: session.worker.finish(status=status, start_time=self.start_time, write_record=False)
                   for name, session in self.sessions.items()}
        disturbance = sum(worker.session_energies[0] for worker in self.workers)
        error = sum(worker.session_energies[1] for worker in self.workers)
        cancellation = None if error <= 0 else round(10.0 * np.log10(max(disturbance, 1e-30) / error), 2)
        first = per_ear[self.names[0]]
        record = {key: first[key] for key in ("start_time", "end_time", "sample_rate", "anc_enabled",
                                              "anc_intensity", "total_samples", "status")}
        record["avg_cancellation_db"] = cancellation
        record["ears"] = {name: {"avg_cancellation_db": ear["avg_cancellation_db"],
                                 "watchdog_trips": int(ear["watchdog_trips"])} for name, ear in per_ear.items()}
        session = self.sessions[self.names[0]]
        if session.records is not None:
            session.worker.submit(session.records.session(**record))
        # Each cup's detector reports what it heard, so an alarm both cups heard is listed twice.
        alarms = sorted(({**alarm, "ear": name} for name, ear in per_ear.items() for alarm in ear["alarms"]),
                        key=lambda alarm: alarm.get("start_s", 0.0))
        return {**record, "watchdog_trips": sum(ear["watchdog_trips"] for ear in per_ear.values()),
                "anc_mode": first["anc_mode"], "modes": first["modes"], "alarms": alarms, "ears": per_ear}
