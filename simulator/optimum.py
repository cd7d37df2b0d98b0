"""The causal optimum: the best any fixed causal FIR controller of the same length could do.

For a plant with true secondary path s (latency included) and reference x, the error with a
fixed filter w is e = d + w * (s * x). The w minimising the error energy over the evaluation
window is a least-squares problem on the filtered reference, solved here by the covariance
method (`device.core.dsp.lsfir`), which is exact on tonal scenes where the Toeplitz shortcut is not.

Two optima are reported:

* **unconstrained**: plain least squares. On tonal scenes with long filters it can ask for
  weights far larger than the controller may ever hold (the watchdog resets the filter
  above `safety.max_weight_norm`), so it promises what no run can reach.
* **reachable**: the least-squares filter under the controller's own bound, ||w||_2 <=
  `max_weight_norm`. This is a norm constraint; its solution is the diagonally loaded
  (ridge) solution (R + delta I) w = p with the smallest delta >= 0 that meets the bound
  (the KKT conditions of the constrained problem), found by bisection on delta over the
  eigendecomposition of R. When the unconstrained weights already meet the bound the two
  are the same filter. The summary's gap is measured to this one.

The reference is the one the controller would see with perfect feedback neutralization:
the optimum says what the plant, the latency, the filter length and the weight bound allow,
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from device.core.dsp.lsfir import apply_fir, normal_equations, solve_fir


@dataclass(frozen=True)
class Optimum:
    weights: np.ndarray
    error: np.ndarray   # the error-mic signal the optimal filter would leave (full length)
    loading: float = 0.0  # diagonal loading delta that the norm bound needed (0: none)

    @property
    def weight_norm(self) -> float:
        return float(np.linalg.norm(self.weights))


@dataclass(frozen=True)
class Optima:
    reachable: Optimum
    unconstrained: Optimum
    max_weight_norm: float


def _bounded_weights(R: np.ndarray, p: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """argmin ||d - Xw||^2 subject to ||w|| <= max_norm, and the loading it took."""
    eigenvalues, vectors = scipy.linalg.eigh(R)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projected = vectors.T @ p

    def norm(delta: float) -> float:
        return float(np.linalg.norm(projected / np.maximum(eigenvalues + delta, 1e-300)))

    # ||w(delta)|| falls monotonically with delta; ||p|| / max_norm is always enough.
    low, high = 0.0, max(float(np.linalg.norm(p)) / max_norm, 1e-300)
    for _ in range(200):
        middle = 0.5 * (low + high)
        if norm(middle) > max_norm:
            low = middle
        else:
            high = middle
        if high - low <= 1e-9 * high:
            break
    return vectors @ (projected / (eigenvalues + high)), high


def causal_optima(reference: np.ndarray, disturbance: np.ndarray, secondary_path_with_latency: np.ndarray,
                  taps: int, start: int, stop: int, max_weight_norm: float) -> Optima:
    """The unconstrained optimum and the one within ||w|| <= max_weight_norm."""
    filtered = apply_fir(secondary_path_with_latency, reference)
    R, p = normal_equations(filtered, -np.asarray(disturbance, dtype=np.float64), taps, start, stop)
    free = solve_fir(R, p)
    unconstrained = Optimum(weights=free, error=disturbance + apply_fir(free, filtered))
    if np.linalg.norm(free) <= max_weight_norm:
        reachable = unconstrained
    else:
        bounded, loading = _bounded_weights(R, p, max_weight_norm)
        reachable = Optimum(weights=bounded, error=disturbance + apply_fir(bounded, filtered), loading=loading)
    return Optima(reachable=reachable, unconstrained=unconstrained, max_weight_norm=max_weight_norm)


def causal_optimum(reference: np.ndarray, disturbance: np.ndarray, secondary_path_with_latency: np.ndarray,
                   taps: int, start: int, stop: int) -> Optimum:
    """The unconstrained optimum alone."""
    filtered = apply_fir(secondary_path_with_latency, reference)
    R, p = normal_equations(filtered, -np.asarray(disturbance, dtype=np.float64), taps, start, stop)
    weights = solve_fir(R, p)
    return Optimum(weights=weights, error=disturbance + apply_fir(weights, filtered))
