"""The causal optimum: the best any fixed causal FIR controller of the same length could do.

For a plant with true secondary path s (latency included) and reference x, the error with a
fixed filter w is e = d + w * (s * x). The w minimising the error energy over the evaluation
window is a least-squares problem on the filtered reference, solved here by the covariance
method (`device.core.dsp.lsfir`), which is exact on tonal scenes where the Toeplitz shortcut is not.

The reference is the one the controller would see with perfect feedback neutralization:
the optimum says what the plant, the latency and the filter length allow, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.core.dsp.lsfir import apply_fir, fit_fir


@dataclass(frozen=True)
class Optimum:
    weights: np.ndarray
    error: np.ndarray   # the error-mic signal the optimal filter would leave (full length)


def causal_optimum(reference: np.ndarray, disturbance: np.ndarray, secondary_path_with_latency: np.ndarray,
                   taps: int, start: int, stop: int) -> Optimum:
    filtered = apply_fir(secondary_path_with_latency, reference)
    weights = fit_fir(filtered, -disturbance, taps, start, stop)
    return Optimum(weights=weights, error=disturbance + apply_fir(weights, filtered))
