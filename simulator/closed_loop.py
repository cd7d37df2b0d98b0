"""The plant in closed loop with a controller.

`run_closed_loop` processes block by block exactly as the audio callback does: the engine
sees a block of ref/err, returns a speaker block, and that block reaches the microphones
`latency_samples` later through the secondary and feedback paths (the plant's model is
`simulator.plant`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

from device.core.dsp.lsfir import fft_convolve
from device.core.dsp.tracking import engine_block
from simulator.plant import PathChange, Plant

CLOCK_MONOTONIC = 1       # Linux's clock id, the clock of time.perf_counter
_NO_FEEDBACK = np.zeros(0)


@dataclass
class ClosedLoopResult:
    sample_rate: int
    block_size: int
    reference: np.ndarray          # reference mic, as the controller saw it
    error_off: np.ndarray          # error mic without control (same sensor noise)
    error_on: np.ndarray           # error mic with control
    output: np.ndarray             # speaker signal
    disturbance_reference: np.ndarray  # reference mic without the speaker's leak
    wall_time_s: float
    engine_time_s: float

    @property
    def duration_s(self) -> float:
        return self.error_on.size / self.sample_rate


@dataclass
class ClosedLoopChunk:
    """One stretch of a closed-loop run, `start` samples into the scene."""
    start: int
    reference: np.ndarray
    error_off: np.ndarray
    error_on: np.ndarray
    output: np.ndarray
    disturbance_reference: np.ndarray


class StreamingFir:
    """An FIR filter applied chunk by chunk (overlap-add with the tail carried over): the
    chunks join up to the full convolution's first samples, at FFT cost."""

    def __init__(self, taps: np.ndarray):
        self.taps = np.asarray(taps, dtype=np.float64)
        self.carry = np.zeros(max(0, self.taps.size - 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.taps.size == 1:
            return x * self.taps[0]
        y = fft_convolve(x, self.taps)
        y[:self.carry.size] += self.carry   # y is x.size + len(taps) - 1 long: the carry always fits
        out = y[:x.size]
        self.carry = y[x.size:].copy()
        return out


@numba.njit(cache=True, nogil=True)
def _microphone_blocks(reference_free, error_off, to_reference, to_error, a, ref_block, err_block):
    """What the microphones hear in the block starting at `a`: the noise plus the speaker's
    earlier blocks, already landed in `to_reference` / `to_error`."""
    for i in range(ref_block.size):
        ref_block[i] = reference_free[a + i] + to_reference[a + i]
        err_block[i] = error_off[a + i] + to_error[a + i]


@numba.njit(cache=True, nogil=True)
def _speaker_block(out_block, ref_block, err_block, a, land, secondary, feedback,
                   to_error, to_reference, reference_in, error_on, output):
    """Record the block and send the speaker's block through the secondary (and feedback)
    path, landing `land` samples into the chunk's timeline."""
    for i in range(out_block.size):
        reference_in[a + i] = ref_block[i]
        error_on[a + i] = err_block[i]
        y = out_block[i]
        output[a + i] = y
        if y != 0.0:
            for j in range(secondary.size):
                to_error[land + i + j] += y * secondary[j]
            for j in range(feedback.size):
                to_reference[land + i + j] += y * feedback[j]


class ClosedLoop:
    """The plant and a controller in closed loop, fed the scene chunk by chunk.

    `process_block(ref, err, out, meta)` runs once per block exactly as in the audio callback;
    the speaker block reaches the microphones `latency_samples` later through the secondary
    and feedback paths. Memory is bounded by the chunk length, not the scene's.
    The plant's own `path_changes` and `secondary_path_changes` [(sample index, new path)]
    change the real plant mid-run (the controller is not told), e.g. to test the watchdog or
    path tracking."""

    def __init__(self, plant: Plant, process_block: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None],
                 block_size: int, seed: int, secondary_path_changes: list[tuple[int, np.ndarray]] | None = None):
        plant.check_block_size(block_size)
        self.plant = plant
        self.process_block = process_block
        self.block_size = block_size
        self.reference_noise = np.random.default_rng([seed, 0, 0])
        self.error_noise = np.random.default_rng([seed, 0, 1])
        self.reference_fir = StreamingFir(plant.reference_path)
        self.primary_fir = StreamingFir(plant.primary_path)
        self.secondary = plant.secondary_path
        self.feedback = plant.feedback_path
        self.changes = sorted([*plant.path_changes, *(PathChange(int(at), np.asarray(path, dtype=np.float64))
                                                      for at, path in (secondary_path_changes or []))],
                              key=lambda change: change.at_sample)
        self.tail = max([self.secondary.size, 0 if self.feedback is None else self.feedback.size]
                        + [max(c.secondary_path.size, 0 if c.feedback_path is None else c.feedback_path.size)
                           for c in self.changes])
        # Speaker contributions still to land, from `position` on.
        self.to_error = np.zeros(plant.latency_samples + block_size + self.tail)
        self.to_reference = np.zeros_like(self.to_error)
        self.position = 0
        self.wall_time_s = 0.0
        self.engine_time_s = 0.0
        self._ref_block = np.empty(block_size)
        self._err_block = np.empty(block_size)
        self._out_block = np.empty(block_size)
        self._meta = np.zeros(4)
        self._clock_zero = time.perf_counter()

    def run(self, scene_chunk: np.ndarray) -> ClosedLoopChunk:
        """Simulate one chunk of the scene (a whole number of blocks except for the last chunk)."""
        clock = time.perf_counter
        started = clock()
        plant, block_size = self.plant, self.block_size
        size = scene_chunk.size
        n = -(-size // block_size) * block_size
        s = np.zeros(n)
        s[:size] = scene_chunk
        reference_free = self.reference_fir(s) + plant.sensor_noise(n, self.reference_noise)
        error_off = self.primary_fir(s) + plant.sensor_noise(n, self.error_noise)
        latency = plant.latency_samples
        keep = self.to_error.size
        to_error = np.zeros(n + keep)
        to_error[:keep] = self.to_error
        to_reference = np.zeros(n + keep)
        to_reference[:keep] = self.to_reference
        reference_in = np.empty(n)
        error_on = np.empty(n)
        output = np.empty(n)
        base = self.position
        self.engine_time_s += self._run_blocks(n, latency, reference_free, error_off, to_reference, to_error,
                                               reference_in, error_on, output)
        self.to_error = to_error[n:n + keep].copy()
        self.to_reference = to_reference[n:n + keep].copy()
        self.position += n
        self.wall_time_s += clock() - started
        return ClosedLoopChunk(base, reference_in[:size], error_off[:size], error_on[:size], output[:size],
                               reference_free[:size])

    def _apply_changes(self, sample: int) -> None:
        """The real paths in effect from `sample` on (the changes at or before it)."""
        while self.changes and self.changes[0].at_sample <= sample:
            change = self.changes.pop(0)
            self.secondary = change.secondary_path
            if change.feedback_path is not None:
                self.feedback = change.feedback_path

    def _run_blocks(self, n, latency, reference_free, error_off, to_reference, to_error, reference_in, error_on,
                    output) -> float:
        """The chunk's blocks, one `process_block` call each; returns the time spent in them."""
        clock = time.perf_counter
        ref_block, err_block, out_block, meta = self._ref_block, self._err_block, self._out_block, self._meta
        base = self.position
        callback = self.process_block
        engine_time = 0.0
        for a in range(0, n, self.block_size):
            self._apply_changes(base + a)
            feedback_path = _NO_FEEDBACK if self.feedback is None else self.feedback
            _microphone_blocks(reference_free, error_off, to_reference, to_error, a, ref_block, err_block)
            t0 = clock()
            meta[0] = t0 - self._clock_zero
            callback(ref_block, err_block, out_block, meta)
            t1 = clock()
            meta[1] = t1 - t0
            engine_time += t1 - t0
            _speaker_block(out_block, ref_block, err_block, a, a + latency, self.secondary, feedback_path,
                           to_error, to_reference, reference_in, error_on, output)
        return engine_time


class EngineClosedLoop(ClosedLoop):
    """`ClosedLoop` with the engine's kernel called from numba over `blocks_per_call` blocks at a
    time, the plant's speaker paths in the same compiled loop, and no Python per block.

    `kernel_state` is the engine's `AncEngine.kernel_state`: the numba loop calls the device's
    `engine_block` on it, block by block, exactly as `engine.process` does. After each call,
    `on_blocks(reference, error, output, meta)` gets the blocks just run (the session's ring and
    worker). Calls end at multiples of `blocks_per_call` blocks from the start of the run (and
    at chunk ends and path changes, which split a call), so a worker polled there sees the same
    blocks, and changes the engine's settings before the same block, as with a per-block
    callback that polls every `blocks_per_call` blocks: the samples are the same. Each block's
    meta row holds its kernel call's start (s, on `time.perf_counter`'s clock from the loop's
    creation) and the previous call's duration."""

    def __init__(self, plant: Plant, kernel_state: tuple, on_blocks: Callable[[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray], None],
                 block_size: int, seed: int, blocks_per_call: int,
                 secondary_path_changes: list[tuple[int, np.ndarray]] | None = None):
        super().__init__(plant, None, block_size, seed, secondary_path_changes)
        self.kernel_state = kernel_state
        self.on_blocks = on_blocks
        self.blocks_per_call = blocks_per_call
        self.blocks = 0                      # blocks run so far
        self.kernel_time_s = 0.0             # in the kernel calls alone (engine_time_s adds the worker)
        self._meta_rows = np.zeros((blocks_per_call, 4))
        self._previous_duration = 0.0
        self._clock_zero_ns = int(round(self._clock_zero * 1e9))
        # Compile (or load from the numba cache) now, on no blocks, so the run's clocks do not
        # count it: what `AncEngine.warm_up` does for the kernel.
        empty = np.zeros(0)
        _closed_loop_blocks(0, 0, block_size, plant.latency_samples, empty, empty, empty, empty, self.secondary,
                            _NO_FEEDBACK if self.feedback is None else self.feedback, empty, empty, empty,
                            self._ref_block, self._err_block, self._out_block, self._meta_rows[:0], 0.0,
                            self._clock_zero_ns, *kernel_state)

    def _run_blocks(self, n, latency, reference_free, error_off, to_reference, to_error, reference_in, error_on,
                    output) -> float:
        clock = time.perf_counter
        block_size = self.block_size
        base = self.position
        engine_time = 0.0
        a = 0
        while a < n:
            self._apply_changes(base + a)
            stop = min(n, a + (self.blocks_per_call - self.blocks % self.blocks_per_call) * block_size)
            if self.changes:
                # A change applies from the first block that starts at or after it.
                stop = min(stop, -(-(self.changes[0].at_sample - base) // block_size) * block_size)
            meta = self._meta_rows[:(stop - a) // block_size]
            feedback_path = _NO_FEEDBACK if self.feedback is None else self.feedback
            self._previous_duration, kernel_time = _closed_loop_blocks(
                a, stop, block_size, latency, reference_free, error_off, to_reference, to_error, self.secondary,
                feedback_path, reference_in, error_on, output, self._ref_block, self._err_block, self._out_block,
                meta, self._previous_duration, self._clock_zero_ns, *self.kernel_state)
            self.blocks += meta.shape[0]
            self.kernel_time_s += kernel_time
            handed = clock()
            self.on_blocks(reference_in[a:stop], error_on[a:stop], output[a:stop], meta)
            engine_time += kernel_time + clock() - handed
            a = stop
        return engine_time


@intrinsic
def _monotonic_ns(typingctx):
    """clock_gettime(CLOCK_MONOTONIC) in ns from compiled code, the clock of `time.perf_counter`
    on Linux: a per-block timing inside the loop costs tens of ns, not a trip to Python."""
    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        timespec = ir.LiteralStructType([i64, i64])   # time_t and long: 64-bit on x86_64 and arm64
        clock_gettime = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, timespec.as_pointer()]), "clock_gettime")
        now = cgutils.alloca_once(builder, timespec)
        builder.call(clock_gettime, [ir.Constant(i32, CLOCK_MONOTONIC), now])
        zero = ir.Constant(i32, 0)
        seconds = builder.load(builder.gep(now, [zero, ir.Constant(i32, 0)]))
        nanoseconds = builder.load(builder.gep(now, [zero, ir.Constant(i32, 1)]))
        return builder.add(builder.mul(seconds, ir.Constant(i64, 1_000_000_000)), nanoseconds)

    return numba.types.int64(), codegen


@numba.njit(cache=True, nogil=True)
def _closed_loop_blocks(first, stop, block_size, latency, reference_free, error_off, to_reference, to_error,
                        secondary, feedback, reference_in, error_on, output, ref_block, err_block, out_block,
                        meta, previous_duration, clock_zero_ns, *kernel_state):
    """Blocks [first, stop) of the chunk (sample indices) through the plant and the device's
    kernel; returns the last kernel call's duration and the time in kernel calls (s)."""
    kernel_ns = 0
    row = 0
    for a in range(first, stop, block_size):
        _microphone_blocks(reference_free, error_off, to_reference, to_error, a, ref_block, err_block)
        started = _monotonic_ns()
        meta[row, 0] = (started - clock_zero_ns) * 1e-9
        meta[row, 1] = previous_duration
        engine_block(ref_block, err_block, out_block, *kernel_state)
        elapsed = _monotonic_ns() - started
        previous_duration = elapsed * 1e-9
        kernel_ns += elapsed
        _speaker_block(out_block, ref_block, err_block, a, a + latency, secondary, feedback,
                       to_error, to_reference, reference_in, error_on, output)
        row += 1
    return previous_duration, kernel_ns * 1e-9


def run_closed_loop(
    scene: np.ndarray,
    plant: Plant,
    process_block: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None],
    block_size: int,
    seed: int,
    secondary_path_changes: list[tuple[int, np.ndarray]] | None = None,
    chunk_blocks: int = 1500,
) -> ClosedLoopResult:
    """The whole scene through `ClosedLoop`, kept in memory (tests and short scenes)."""
    loop = ClosedLoop(plant, process_block, block_size, seed, secondary_path_changes)
    step = chunk_blocks * block_size
    parts = [loop.run(scene[start:start + step]) for start in range(0, scene.size, step)]

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return ClosedLoopResult(
        sample_rate=plant.sample_rate,
        block_size=block_size,
        reference=joined("reference"),
        error_off=joined("error_off"),
        error_on=joined("error_on"),
        output=joined("output"),
        disturbance_reference=joined("disturbance_reference"),
        wall_time_s=loop.wall_time_s,
        engine_time_s=loop.engine_time_s,
    )
