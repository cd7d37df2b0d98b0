"""Hear-through: the outer (reference) microphone replayed by the driver so the wearer hears
the room at roughly its open-ear level.

Design of the equalizer H (fitted once, when the engine is built, from the identified
secondary-path estimate; a fixed FIR afterwards):

    ear = P * s + S * H * s        P: the cup's passive leak, S: the secondary path
                                    (I/O latency included), s: the ambient at the outer mic

Open ear would be s itself. S * H arrives at least the loop delay D after P * s (1.5 ms on
the bundled headphone), so the two cannot be phase-aligned: across an octave band their phase
difference turns through a large angle (at 250 Hz, D alone is 135 degrees), and what reaches
the ear there is the sum of their *powers*, |P|^2 + |S H|^2. So H restores only the power the
cup takes away: the target is

    S * H  ~  g * z^-(D + M) * C,    |C|^2 = max(0, 1 - |P_nominal|^2),  C minimum phase

with P_nominal a nominal over-ear passive curve (2nd-order low-pass, `PASSIVE_CORNER_HZ`,
Q `PASSIVE_Q`, gain `PASSIVE_GAIN`: a closed cup passes the lows and blocks the highs, mass
law), D the onset of the estimate, M a few samples of modelling delay so the inverse can be
causal, and g the configured gain (`anc.hear_through_gain_db`). An amplitude complement
1 - P_nominal would be right only if the replay arrived with the leak: with the leak's phase
lag near the corner it asks for a replay near full level at 125-500 Hz, where the cup already
passes the sound, and the ear got 4-5 dB too much there. Above the cup's corner the ear gets
s delayed by D at gain g; below it mostly the passive leak. H is the least-squares FIR
(`anc.hear_through_taps` taps, Tikhonov-regularized so the inverse of the driver's roll-off
below its resonance cannot blow up) solving that target over the estimate's length. A short
FIR fitted from the estimate, rather than a fixed filter, because it follows the driver and
the latency of the rig it was identified on; the nominal passive curve is the one assumption,
and the simulator measures what it gives (`docs/alarms.md`).

`hear_through_output` is the per-sample FIR the kernel calls over the reference history it
already keeps.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from device.core.causality import onset

PASSIVE_CORNER_HZ = 300.0
PASSIVE_Q = 1.2
PASSIVE_GAIN = 0.8
MODELLING_DELAY = 8
REGULARIZATION = 1e-3
# FFT length of the power complement's design grid (1 Hz-ish spacing at 48 kHz resolves the cup's corner).
COMPLEMENT_FFT = 8192
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@nb.njit(cache=True, nogil=True, fastmath=FASTMATH, inline="always")
def hear_through_output(equalizer, reference_buffer, position):
    """sum_k equalizer[k] * r(n - k): the newest reference sample sits at `position` of the
    double-length history, so the window is one contiguous slice."""
    count = equalizer.shape[0]
    window = reference_buffer[position:position + count]
    acc = 0.0
    for k in range(count):
        acc += equalizer[k] * window[k]
    return acc


def _lowpass_response(corner_hz: float, q: float, gain: float, rate: int, length: int) -> np.ndarray:
    """Impulse response of an RBJ 2nd-order low-pass (the nominal passive leak)."""
    w0 = 2 * math.pi * corner_hz / rate
    alpha = math.sin(w0) / (2 * q)
    cos = math.cos(w0)
    b = np.array([(1 - cos) / 2, 1 - cos, (1 - cos) / 2])
    a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    b, a = b / a[0], a / a[0]
    h = np.zeros(length)
    x1 = x2 = y1 = y2 = 0.0
    for n in range(length):
        x = 1.0 if n == 0 else 0.0
        y = b[0] * x + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
        x2, x1, y2, y1 = x1, x, y1, y
        h[n] = gain * y
    return h


def _power_complement(corner_hz: float, q: float, gain: float, rate: int, length: int) -> np.ndarray:
    """The minimum-phase impulse response C with |C|^2 = max(0, 1 - |P_nominal|^2) (real cepstrum:
    fold the log magnitude's cepstrum onto positive quefrencies)."""
    size = max(COMPLEMENT_FFT, 2 * length)
    passive = np.fft.fft(_lowpass_response(corner_hz, q, gain, rate, size))
    # Floor the magnitude so its log is finite where the leak passes everything.
    magnitude = np.sqrt(np.maximum(1.0 - np.abs(passive) ** 2, 1e-8))
    cepstrum = np.fft.ifft(np.log(magnitude)).real
    folded = np.zeros(size)
    folded[0] = cepstrum[0]
    folded[1:size // 2] = 2.0 * cepstrum[1:size // 2]
    folded[size // 2] = cepstrum[size // 2]
    return np.fft.ifft(np.exp(np.fft.fft(folded))).real[:length]


def design_equalizer(secondary_estimate: np.ndarray, taps: int, gain_db: float, rate: int) -> np.ndarray:
    """The hear-through FIR H (see the module docstring)."""
    s_hat = np.asarray(secondary_estimate, dtype=np.float64)
    length = s_hat.size + taps - 1
    delay = onset(s_hat) + MODELLING_DELAY
    target = np.zeros(length)
    if delay < length:
        target[delay:] = _power_complement(PASSIVE_CORNER_HZ, PASSIVE_Q, PASSIVE_GAIN, rate, length - delay)
    target *= 10.0 ** (gain_db / 20.0)
    # Convolution matrix: (s_hat * h)[n] = sum_k s_hat[n - k] h[k].
    matrix = np.zeros((length, taps))
    for k in range(taps):
        matrix[k:k + s_hat.size, k] = s_hat
    gram = matrix.T @ matrix
    gram += REGULARIZATION * np.trace(gram) / taps * np.eye(taps)
    return np.linalg.solve(gram, matrix.T @ target)
