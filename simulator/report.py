"""Figures of a simulation run: attenuation, band attenuation, convergence, the PNG report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.core.features import welch_psd

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


def _segment_length(length: int) -> int:
    return min(8192, max(256, 2 ** int(math.log2(max(length // 4, 256)))))


def spectrum(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch spectrum of `x` along its last axis (each row of a 2-D `x` on its own); a segment
    longer than the signal is shortened to it, as scipy.signal.welch does."""
    x = np.asarray(x, dtype=np.float64)
    nperseg = min(_segment_length(x.shape[-1]), x.shape[-1])
    if x.ndim == 1:
        return welch_psd(x, sample_rate, nperseg)
    rows = [welch_psd(row, sample_rate, nperseg) for row in x]
    return rows[0][0], np.stack([psd for _, psd in rows])


def band_attenuation_db(off: np.ndarray, on: np.ndarray, sample_rate: int, band: tuple[float, float] = BAND_HZ) -> float:
    f, (p_off, p_on) = spectrum(np.stack([off, on]), sample_rate)
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


CONVERGENCE_MARGIN_DB = 3.0
CONVERGENCE_HOLD_S = 2.0
DIP_MIN_S = 0.5
CONVERGENCE_RULE = (f"the first time the 100 ms attenuation stays within {CONVERGENCE_MARGIN_DB:g} dB of the "
                    f"steady state for at least {CONVERGENCE_HOLD_S:g} s (or to the end of the scene); later falls "
                    f"below that band lasting {DIP_MIN_S:g} s or more are reported as dips")


@dataclass(frozen=True)
class Convergence:
    time_s: float | None          # None: no meaningful cancellation, or it never held
    meaningful: bool              # the steady state cancels at least the margin
    dips: list[dict]              # [{"start_s", "end_s", "min_db"}] after convergence


def convergence(times: np.ndarray, attenuation: np.ndarray, steady_db: float,
                margin_db: float = CONVERGENCE_MARGIN_DB, hold_s: float = CONVERGENCE_HOLD_S,
                dip_min_s: float = DIP_MIN_S) -> Convergence:
    """When the controller settled (see CONVERGENCE_RULE), from the attenuation per 100 ms
    frame ending at `times`. A dip late in the run does not move the convergence time: it is
    reported on its own."""
    if steady_db < margin_db or times.size == 0:
        return Convergence(None, False, [])
    frame_s = float(times[0])
    inside = attenuation >= steady_db - margin_db
    hold = max(1, int(round(hold_s / frame_s)))
    settled = None
    run = 0
    for index in range(inside.size):
        run = run + 1 if inside[index] else 0
        start = index - run + 1
        if run >= hold or (index == inside.size - 1 and run > 0):
            settled = start
            break
    if settled is None:
        return Convergence(None, True, [])
    dips = []
    minimum = max(1, int(round(dip_min_s / frame_s)))
    index = settled
    while index < inside.size:
        if inside[index]:
            index += 1
            continue
        end = index
        while end < inside.size and not inside[end]:
            end += 1
        if end - index >= minimum:
            dips.append({"start_s": round(float(times[index] - frame_s), 2), "end_s": round(float(times[end - 1]), 2),
                         "min_db": round(float(np.min(attenuation[index:end])), 1)})
        index = end
    return Convergence(float(times[settled] - frame_s), True, dips)


MODE_COLOURS = {"off": "0.6", "anc": None, "hear-through": "tab:orange"}


def _figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot (its import and a layout engine were most of
    the time report.png took); margins are set by hand."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def write_png(path: Path, sample_rate: int, off: np.ndarray, on: np.ndarray, optimum_error: np.ndarray,
              times: np.ndarray, attenuation: np.ndarray, steady_s: tuple[float, float], title: str,
              modes: list[dict] | None = None, alarms: list[dict] | None = None) -> None:
    """Spectra over the steady window and attenuation over time (from per-frame energies: the
    whole signals are never needed)."""
    fig = _figure(10, 8)
    top, bottom = fig.subplots(2, 1)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.95, hspace=0.3)
    _spectra_panel(top, sample_rate, off, on, optimum_error, f"{title}: error-mic spectra over the steady state")
    _attenuation_panel(bottom, times, attenuation, steady_s)
    # The speaker's mode over time (shaded when not anti-noise) and every warning sound heard.
    modes = modes or []
    for index, change in enumerate(modes):
        colour = MODE_COLOURS.get(change["mode"])
        if colour is None:
            continue
        end = modes[index + 1]["t_s"] if index + 1 < len(modes) else float(times[-1]) if times.size else change["t_s"]
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


def _spectra_panel(axis, sample_rate: int, off, on, optimum_error, title: str) -> None:
    """Error-mic spectra with control off, on and for the causal optimum, the band shaded."""
    for signal, label, style in ((off, "control off", "-"), (on, "control on", "-"),
                                 (optimum_error, "causal optimum", "--")):
        f, p = spectrum(signal, sample_rate)
        axis.semilogx(f[1:], 10 * np.log10(p[1:] + 1e-30), style, label=label)
    axis.axvspan(*BAND_HZ, color="0.9", zorder=-1, label="50-1000 Hz band")
    axis.set_xlim(20, sample_rate / 2)
    axis.set_xlabel("frequency (Hz)")
    axis.set_ylabel("error mic PSD (dB/Hz)")
    axis.set_title(title)
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)


def _attenuation_panel(axis, times, attenuation, steady_s: tuple[float, float]) -> None:
    """Attenuation per 100 ms frame over time, the steady window shaded."""
    axis.plot(times, attenuation)
    axis.axvspan(*steady_s, color="0.9", zorder=-1, label="steady state")
    axis.set_xlabel("time (s)")
    axis.set_ylabel("attenuation (dB, 100 ms frames)")


def write_ears_png(path: Path, sample_rate: int, ears: dict[str, tuple], steady_s: tuple[float, float],
                   title: str) -> None:
    """One row per ear: its error-mic spectra over the steady window (off, on, causal optimum)
    and its attenuation over time. `ears`: name -> (off, on, optimum_error, times, attenuation)."""
    fig = _figure(14, 4 * len(ears))
    axes = fig.subplots(len(ears), 2, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.3 / len(ears), top=1 - 0.2 / len(ears), wspace=0.2,
                        hspace=0.35)
    for (name, (off, on, optimum_error, times, attenuation)), (left, right) in zip(ears.items(), axes):
        _spectra_panel(left, sample_rate, off, on, optimum_error,
                       f"{title}, {name} ear: error-mic spectra over the steady state")
        _attenuation_panel(right, times, attenuation, steady_s)
        right.set_title(f"{name} ear: attenuation over time")
        right.grid(True, alpha=0.3)
        right.legend()
    fig.savefig(path, dpi=100)
