"""Several ears, one engine call per block.

`EarsEngine` builds one `AncEngine` per ear (its settings, estimates, hear-through equalizer
and checks are the one-ear engine's), then moves each ear's kernel state into rows of
stacked arrays and points that ear's engine at its rows. `process` runs all ears in one nogil
numba call (`device.core.dsp.ears.process_ears`); `ears[i]` is ear i's `AncEngine`, whose
read-outs and setters (snapshot, drain_events, set_mode, fade_out...) work on its rows as they
do for one ear, so a worker or a summary written for one engine serves each ear unchanged.
Each ear has its own watchdog, limiter and fades: one ear tripping leaves the others playing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from device.contract.config import Config, ear_channels
from device.contract.errors import UserError
from device.core.dsp import ears as E
from device.core.dsp.ears import process_ears
from device.core.engine import AncEngine

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
)
# Fixed-size per-ear arrays (the layout's params, status and cursors, and the event ring).
_FIXED = ("params", "status", "cursors", "events", "update_state", "twiddles")


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
        self._kernel_state = (self.lengths, s["weights"], s["secondary_path"], s["feedback_path"],
                              s["reference_buffer"], s["filtered_buffer"], s["output_buffer"],
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
        saved = [a.copy() for a in (s["weights"], s["status"], s["cursors"])]
        shape = (len(self.ears), self.block_size)
        for dtype in (np.float32, np.float64):
            self.process(np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype))
        s["weights"][...], s["status"][...], s["cursors"][...] = saved
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

    def snapshots(self) -> dict[str, dict]:
        return {name: engine.snapshot() for name, engine in zip(self.names, self.ears)}


class EarsSession:
    """One `Session` per ear (its ring, worker, metrics, watchdog events, no-harm guard) around
    one `EarsEngine`: `process_block` takes (ears x block) arrays, runs every ear's controller
    in one kernel call and hands each ear's block to that ear's worker."""

    ears_at_once = True   # the duplex stream hands it all ears' blocks in one call

    def __init__(self, engine: EarsEngine, sessions: Sequence):
        if len(sessions) != len(engine):
            raise ValueError("one session per ear")
        self.engine = engine
        self.names = engine.names
        self.sessions = dict(zip(engine.names, sessions))
        self._rings = tuple(session.ring for session in sessions)
        self._shared: dict = {}   # worker -> the alarm another ear heard that holds it in hear-through

    def process_block(self, references: np.ndarray, errors: np.ndarray, outs: np.ndarray, meta: np.ndarray) -> None:
        """Audio-callback safe: one nogil numba call and a few preallocated copies per ear."""
        self.engine.process(references, errors, outs)
        for ear, ring in enumerate(self._rings):
            ring.push(references[ear], errors[ear], outs[ear], meta)

    def poll(self) -> int:
        """Every ear's worker, then one warning-sound bypass for the whole headphone: an alarm
        one cup's reference mic hears switches every ear to hear-through, and they come back
        together when the ear that heard it lets go."""
        blocks = sum(session.poll() for session in self.sessions.values())
        workers = [session.worker for session in self.sessions.values()]
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

    def stop(self, status: str = "completed") -> dict[str, dict]:
        return {name: session.stop(status) for name, session in self.sessions.items()}
