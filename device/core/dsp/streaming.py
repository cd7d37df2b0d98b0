"""Compiled inner loops of the worker's streaming filters: the classifier's polyphase
decimator and the device's cancellation estimate.

Both run on the worker every poll (about 50 times a second), on chunks of about a thousand
samples. In NumPy each needed a gather or a convolution plus a handful of reductions and
temporaries per call; as one numba call each they cost a few microseconds. State is explicit
and owned by the caller (`features.StreamDecimator`, `worker.Worker`), like the kernel's.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Reassociation lets the dot products vectorize (as the kernel's do); NaN and Inf keep their
# meaning.
REASSOCIATE = {"reassoc", "contract", "nsz", "arcp"}


@nb.njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def polyphase_outputs(buffer: np.ndarray, phases: np.ndarray, first_time: int, up: int, down: int,
                      history: int, out: np.ndarray) -> None:
    """out[k] = sum_j buffer[t_k // up + history - j] * phases[t_k % up, j], t_k = first_time + k*down:
    the outputs of a polyphase resampler whose input history ends at `buffer[history - 1]`."""
    taps = phases.shape[1]
    for k in range(out.size):
        time = first_time + k * down
        phase = time % up
        base = time // up + history
        total = 0.0
        for j in range(taps):
            total += buffer[base - j] * phases[phase, j]
        out[k] = total


@nb.njit(cache=True, inline="always")
def _per_unit_level(disturbance: float, speaker: float, level: float, level_coef: float):
    """One sample of the no-harm scale's level-weighted sums: the disturbance's power smoothed
    per sample (the first sample starts it), and d z and z z divided by it. Per sample, so
    the sums do not depend on how the audio is chunked."""
    power = disturbance * disturbance
    level = level + level_coef * (power - level) if level > 0.0 else power
    if level > 1e-20:
        return level, disturbance * speaker / level, speaker * speaker / level
    return level, 0.0, 0.0


@nb.njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def level_weighted_sums(disturbance: np.ndarray, speaker: np.ndarray, level: np.ndarray, level_coef: float,
                        sums: np.ndarray) -> None:
    """sums[5:7] = [sum d z / L, sum z z / L] over a chunk of d and z, L the disturbance's
    power smoothed per sample by `level_coef`; `level[0]` carries L from chunk to chunk
    (0 = start afresh). What `speaker_at_error` computes beside its other sums."""
    current = level[0]
    dz = 0.0
    z2 = 0.0
    for i in range(disturbance.size):
        current, weighted_dz, weighted_z2 = _per_unit_level(disturbance[i], speaker[i], current, level_coef)
        dz += weighted_dz
        z2 += weighted_z2
    level[0] = current
    sums[5] = dz
    sums[6] = z2


@nb.njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def speaker_at_error(output: np.ndarray, error: np.ndarray, secondary_reversed: np.ndarray, extended: np.ndarray,
                     speaker: np.ndarray, sums: np.ndarray, level: np.ndarray, level_coef: float) -> None:
    """The speaker's contribution at the error mic through the estimated secondary path, and
    the energies the worker's estimates need, in one pass.

    speaker[n] = sum_j secondary[j] * output[n - j] (`secondary_reversed` is secondary[::-1]).
    `extended` carries the filter's input: on entry its first secondary.size - 1 samples are
    the last ones played before this chunk (oldest first); the chunk is copied in after them
    (extended must hold both), and on return they are the last ones of this chunk. sums gets
    [<e, e>, <d, d>, <y, y>, <d, z>, <z, z>, <d, z / L>, <z, z / L>] with e = error,
    z = speaker, d = e - z (the disturbance estimate), y = output and L d's power smoothed per
    sample by `level_coef` (`level_weighted_sums`; `level[0]` carries it between chunks)."""
    n = output.size
    taps = secondary_reversed.size
    kept = taps - 1
    for i in range(n):
        extended[kept + i] = output[i]
    e2 = 0.0
    d2 = 0.0
    y2 = 0.0
    dz = 0.0
    z2 = 0.0
    current = level[0]
    dz_weighted = 0.0
    z2_weighted = 0.0
    for i in range(n):
        total = 0.0
        for k in range(taps):
            total += secondary_reversed[k] * extended[i + k]
        speaker[i] = total
        e = error[i]
        d = e - total
        y = output[i]
        e2 += e * e
        d2 += d * d
        y2 += y * y
        dz += d * total
        z2 += total * total
        current, weighted_dz, weighted_z2 = _per_unit_level(d, total, current, level_coef)
        dz_weighted += weighted_dz
        z2_weighted += weighted_z2
    for k in range(kept):  # ascending: the source is never behind the destination
        extended[k] = extended[n + k]
    sums[0] = e2
    sums[1] = d2
    sums[2] = y2
    sums[3] = dz
    sums[4] = z2
    sums[5] = dz_weighted
    sums[6] = z2_weighted
    level[0] = current


def warm_up() -> None:
    """Compile both loops (or load them from numba's cache) on a few samples, now."""
    polyphase_outputs(np.zeros(8), np.zeros((1, 2)), 0, 1, 1, 1, np.empty(4))
    speaker_at_error(np.zeros(4), np.zeros(4), np.zeros(2), np.zeros(5), np.empty(4), np.empty(7), np.zeros(1), 0.5)
    level_weighted_sums(np.zeros(4), np.zeros(4), np.zeros(1), 0.5, np.empty(7))
