"""Figures of a simulation run: attenuation, band attenuation, convergence, the PNG report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.signal

BAND_HZ = (50.0, 1000.0)
STEADY_STATE_S = 3.0
FRAME_S = 0.1


def steady_window(n_samples: int, sample_rate: int) -> slice:
    """The last 3 s of the scene, or its last third when that is shorter (scenes under 9 s),
    so the steady state never includes the first two thirds of the run."""
    length = max(1, min(int(STEADY_STATE_S * sample_rate), n_samples // 3))
    return slice(n_samples - length, n_samples)


def _db(ratio: float) -> float:
    return 10.0 * math.log10(max(ratio, 1e-30))


def attenuation_db(off: np.ndarray, on: np.ndarray) -> float:
    return _db(float(np.dot(off, off)) / max(float(np.dot(on, on)), 1e-30))


def spectrum(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    nperseg = min(8192, max(256, 2 ** int(math.log2(max(x.size // 4, 256)))))
    return scipy.signal.welch(x, sample_rate, nperseg=nperseg)


def band_attenuation_db(off: np.ndarray, on: np.ndarray, sample_rate: int, band: tuple[float, float] = BAND_HZ) -> float:
    f, p_off = spectrum(off, sample_rate)
    _, p_on = spectrum(on, sample_rate)
    mask = (f >= band[0]) & (f <= band[1])
    return _db(float(p_off[mask].sum()) / max(float(p_on[mask].sum()), 1e-30))


def attenuation_over_time(off: np.ndarray, on: np.ndarray, sample_rate: int, frame_s: float = FRAME_S) -> tuple[np.ndarray, np.ndarray]:
    frame = max(1, int(frame_s * sample_rate))
    count = off.size // frame
    a = off[:count * frame].reshape(count, frame)
    b = on[:count * frame].reshape(count, frame)
    ratio = np.sum(a * a, axis=1) / np.maximum(np.sum(b * b, axis=1), 1e-30)
    times = (np.arange(count) + 1) * frame / sample_rate
    return times, 10.0 * np.log10(np.maximum(ratio, 1e-30))


def convergence_time(off: np.ndarray, on: np.ndarray, sample_rate: int, steady_db: float, margin_db: float = 3.0) -> float | None:
    """Time from the start after which the 100 ms attenuation stays within `margin_db` of the
    steady state; None when there is no meaningful cancellation to converge to."""
    if steady_db < margin_db:
        return None
    times, att = attenuation_over_time(off, on, sample_rate)
    below = np.flatnonzero(att < steady_db - margin_db)
    if below.size == 0:
        return float(times[0]) if times.size else 0.0
    if below[-1] + 1 >= times.size:
        return None
    return float(times[below[-1] + 1])


MODE_COLOURS = {"off": "0.6", "anc": None, "hear-through": "tab:orange"}


def write_png(path: Path, result, window: slice, optimum_error: np.ndarray, title: str,
              modes: list[dict] | None = None, alarms: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = result.sample_rate
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    for signal, label, style in ((result.error_off[window], "control off", "-"),
                                 (result.error_on[window], "control on", "-"),
                                 (optimum_error[window], "causal optimum", "--")):
        f, p = spectrum(signal, fs)
        top.semilogx(f[1:], 10 * np.log10(p[1:] + 1e-30), style, label=label)
    top.axvspan(*BAND_HZ, color="0.9", zorder=-1, label="50-1000 Hz band")
    top.set_xlim(20, fs / 2)
    top.set_xlabel("frequency (Hz)")
    top.set_ylabel("error mic PSD (dB/Hz)")
    top.set_title(f"{title}: error-mic spectra over the steady state")
    top.legend()
    top.grid(True, which="both", alpha=0.3)
    times, att = attenuation_over_time(result.error_off, result.error_on, fs)
    bottom.plot(times, att)
    bottom.axvspan(window.start / fs, window.stop / fs, color="0.9", zorder=-1, label="steady state")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("attenuation (dB, 100 ms frames)")
    # The speaker's mode over time (shaded when not anti-noise) and every warning sound heard.
    modes = modes or []
    for index, change in enumerate(modes):
        colour = MODE_COLOURS.get(change["mode"])
        if colour is None:
            continue
        end = modes[index + 1]["t_s"] if index + 1 < len(modes) else result.error_on.size / fs
        bottom.axvspan(change["t_s"], end, color=colour, alpha=0.2, zorder=-1,
                       label=change["mode"] if change["mode"] not in [m["mode"] for m in modes[:index]] else None)
    for alarm in alarms or []:
        bottom.axvline(alarm["start_s"], color="tab:red", linestyle=":")
        bottom.axvline(alarm["detected_s"], color="tab:red")
        bottom.annotate(f"{alarm['kind']}", (alarm["detected_s"], 0.95), xycoords=("data", "axes fraction"),
                        color="tab:red", fontsize=8)
    bottom.set_title("attenuation over time" + ("; alarm onset (dotted) and detection (red)" if alarms else ""))
    bottom.grid(True, alpha=0.3)
    bottom.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
