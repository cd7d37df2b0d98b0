"""Identification of an acoustic path (speaker to microphone) from a played probe.

The same functions serve the simulator and the hardware: play `make_probe(...)` through
the speaker, record the microphone on the same stream clock, and fit an FIR with
`identify_path`. Because `played[n]` and `recorded[n]` share the stream index, the estimate
includes the whole I/O latency, which FxLMS needs or it diverges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.core.dsp.lsfir import apply_fir, fit_fir


@dataclass(frozen=True)
class IdentificationResult:
    estimate: np.ndarray      # FIR, taps samples, latency included
    quality_db: float         # modelling error: residual power over recorded power, dB (lower is better)
    delay_samples: int        # index of the largest tap: latency plus acoustic delay
    probe_rms_dbfs: float
    response_rms_dbfs: float
    # Expected error of the estimate itself, |h_hat - h|^2 / |h_hat|^2 in dB, from the residual
    # (room noise plus what the FIR cannot model) and the probe's energy: taps * residual power /
    # (samples * probe power * |h_hat|^2). Room noise makes the modelling error look bad while a
    # long probe still pins the path down; this figure says how well, and FxLMS needs that.
    estimate_error_db: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "taps": int(self.estimate.size),
            "quality_db": round(self.quality_db, 2),
            "estimate_error_db": round(self.estimate_error_db, 2),
            "delay_samples": self.delay_samples,
            "probe_rms_dbfs": round(self.probe_rms_dbfs, 2),
            "response_rms_dbfs": round(self.response_rms_dbfs, 2),
        }


def make_probe(n_samples: int, level_dbfs: float, fade_samples: int, seed: int) -> np.ndarray:
    """White Gaussian noise at `level_dbfs` RMS with raised-cosine fades at both ends."""
    rng = np.random.default_rng(seed)
    probe = rng.standard_normal(n_samples) * 10.0 ** (level_dbfs / 20.0)
    fade_samples = min(fade_samples, n_samples // 2)
    if fade_samples > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_samples) / fade_samples)
        probe[:fade_samples] *= ramp
        probe[n_samples - fade_samples:] *= ramp[::-1]
    return probe


def configured_probe(identification, sample_rate: int) -> np.ndarray:
    """The probe the `identification` config section describes (level, duration, fades, seed),
    the same for `anc-device identify`, `anc-device latency` and the simulator."""
    return make_probe(int(identification.duration_s * sample_rate), identification.probe_level_dbfs,
                      int(identification.fade_ms * 1e-3 * sample_rate), identification.seed)


def _rms_dbfs(x: np.ndarray) -> float:
    return 10.0 * np.log10(np.mean(np.square(x)) + 1e-30)


def identify_path(played: np.ndarray, recorded: np.ndarray, taps: int) -> IdentificationResult:
    """Least-squares FIR from `played` to `recorded` (same stream clock, same length)."""
    played = np.asarray(played, dtype=np.float64)
    recorded = np.asarray(recorded, dtype=np.float64)
    n = min(played.size, recorded.size)
    if n < 4 * taps:
        raise ValueError(f"identification needs at least {4 * taps} samples, got {n}")
    estimate = fit_fir(played[:n], recorded[:n], taps)
    residual = recorded[:n] - apply_fir(estimate, played[:n])
    window = slice(taps, n)
    residual_energy = float(np.sum(residual[window] ** 2))
    quality = 10.0 * np.log10((residual_energy + 1e-300) / (np.sum(recorded[window] ** 2) + 1e-300))
    samples = n - taps
    probe_power = float(np.mean(played[window] ** 2))
    estimate_error = 10.0 * np.log10(
        (taps * residual_energy / samples + 1e-300) / (samples * probe_power * float(np.dot(estimate, estimate)) + 1e-300))
    return IdentificationResult(
        estimate=estimate,
        quality_db=float(quality),
        delay_samples=int(np.argmax(np.abs(estimate))),
        probe_rms_dbfs=_rms_dbfs(played[:n]),
        response_rms_dbfs=_rms_dbfs(recorded[:n]),
        estimate_error_db=float(estimate_error),
    )
