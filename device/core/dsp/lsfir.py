"""Least-squares FIR fitting by the covariance method.

Finds the causal FIR `h` of `taps` coefficients minimising sum_n (d[n] - (h * x)[n])^2 over a
window of n, with the data matrix X[n, i] = x[n - i] built from the actual samples (no
windowing, no assumption of stationarity). The Toeplitz/autocorrelation shortcut assumes
the signal is zero outside the window and is far off on tonal signals; this one is exact.

Used for secondary-path identification (x = probe played, d = microphone) and for the causal
optimum of a controller (x = filtered reference, d = -disturbance).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

# Below this many taps on the shorter side a direct convolution beats the FFT's set-up.
DIRECT_CONVOLUTION_TAPS = 64


def normal_equations(x: np.ndarray, d: np.ndarray, taps: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """R = X^T X and p = X^T d for rows n in [start, stop); x[m] = 0 for m < 0."""
    x, d, xp, a, b = _rows(x, d, taps, start, stop)
    window = xp[a:b]
    first_row = np.empty(taps)
    for lag in range(taps):
        first_row[lag] = window @ xp[a - lag:b - lag]
    p = cross_correlation(x, d, taps, start, stop)
    # R[i+1, j+1] = R[i, j] + x[a-1-i] x[a-1-j] - x[b-1-i] x[b-1-j]  (shift the window by one)
    R = np.empty((taps, taps))
    head = xp[a - taps:a][::-1]      # head[m] = xp[a-1-m]
    tail = xp[b - taps:b][::-1]      # tail[m] = xp[b-1-m]
    for lag in range(taps):
        count = taps - lag
        increments = head[:count - 1] * head[lag:lag + count - 1] - tail[:count - 1] * tail[lag:lag + count - 1]
        diagonal = first_row[lag] + np.concatenate([[0.0], np.cumsum(increments)])
        index = np.arange(count)
        R[index, index + lag] = diagonal
        R[index + lag, index] = diagonal
    return R, p


def cross_correlation(x: np.ndarray, d: np.ndarray, taps: int, start: int, stop: int) -> np.ndarray:
    """p = X^T d alone: p[lag] = sum over rows n in [start, stop) of d[n] x[n - lag]; x[m] = 0
    for m < 0. What a fit against a new target with the same input (the same R) needs."""
    x, d, xp, a, b = _rows(x, d, taps, start, stop)
    window = d[start:stop]
    p = np.empty(taps)
    for lag in range(taps):
        p[lag] = window @ xp[a - lag:b - lag]
    return p


def _rows(x, d, taps: int, start: int, stop: int):
    """x and d as float64 (the window checked against both), x with `taps` zeros in front
    (xp[m + taps] = x[m]) and the window's bounds in xp."""
    x = np.asarray(x, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if not 0 <= start < stop <= min(x.size, d.size):
        raise ValueError(f"window [{start}, {stop}) outside signals of length {x.size}, {d.size}")
    xp = np.concatenate([np.zeros(taps), x])
    return x, d, xp, start + taps, stop + taps


def solve_fir(R: np.ndarray, p: np.ndarray, relative_ridge: float = 1e-9) -> np.ndarray:
    """Solve R h = p with a tiny ridge so a rank-deficient R (a pure tone) stays solvable."""
    taps = R.shape[0]
    ridge = relative_ridge * max(np.trace(R) / taps, 1e-300)
    try:
        return scipy.linalg.solve(R + ridge * np.eye(taps), p, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return scipy.linalg.lstsq(R + ridge * np.eye(taps), p)[0]


def fit_fir(x: np.ndarray, d: np.ndarray, taps: int, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """The FIR h minimising sum over [start, stop) of (d - h * x)^2."""
    start = taps - 1 if start is None else start
    stop = min(len(x), len(d)) if stop is None else stop
    R, p = normal_equations(x, d, taps, start, stop)
    return solve_fir(R, p)


def fft_convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The full linear convolution of `a` and `b` (a.size + b.size - 1 samples), as
    scipy.signal.fftconvolve gives it: one real FFT of a fast length, or a direct sum when one
    side is short. Written here because the device and the simulator import no scipy.signal
    (about a second of start-up here, seconds on a Raspberry Pi)."""
    # Imported here: the live path imports this module and convolves only off the callback
    # (identification, re-identification), so the runtime does not start up slower for it.
    import scipy.fft

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return np.zeros(0)
    if min(a.size, b.size) <= DIRECT_CONVOLUTION_TAPS:
        return np.convolve(a, b)
    length = a.size + b.size - 1
    size = scipy.fft.next_fast_len(length, real=True)
    return scipy.fft.irfft(scipy.fft.rfft(a, size) * scipy.fft.rfft(b, size), size)[:length]


def apply_fir(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Causal filtering of x by h, same length as x (scipy.signal.lfilter(h, [1.0], x))."""
    return fft_convolve(x, h)[:np.asarray(x).size]
