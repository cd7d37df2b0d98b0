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


@nb.njit(cache=True, nogil=True, fastmath=REASSOCIATE)
def speaker_at_error(output: np.ndarray, error: np.ndarray, secondary_reversed: np.ndarray, extended: np.ndarray,
                     speaker: np.ndarray, sums: np.ndarray) -> None:
    """The speaker's contribution at the error mic through the estimated secondary path, and
    the energies the worker's estimates need, in one pass.

    speaker[n] = sum_j secondary[j] * output[n - j] (`secondary_reversed` is secondary[::-1]).
    `extended` carries the filter's input: on entry its first secondary.size - 1 samples are
    the last ones played before this chunk (oldest first); the chunk is copied in after them
    (extended must hold both), and on return they are the last ones of this chunk. sums gets
    [<e, e>, <d, d>, <y, y>, <d, z>, <z, z>] with e = error, z = speaker, d = e - z (the
    disturbance estimate) and y = output."""
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
    for k in range(kept):  # ascending: the source is never behind the destination
        extended[k] = extended[n + k]
    sums[0] = e2
    sums[1] = d2
    sums[2] = y2
    sums[3] = dz
    sums[4] = z2
