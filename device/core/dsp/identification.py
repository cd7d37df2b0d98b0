"""Identification of an acoustic path (speaker to microphone) from a played probe.

The same functions serve the simulator and the hardware: play `make_probe(...)` through
the speaker, record both microphones on the same stream clock, and call `identify_rig`
(`anc-device identify` and the simulator's `identify_plant` both do). Because `played[n]` and
`recorded[n]` share the stream index, the estimate includes the whole I/O latency, which
FxLMS needs or it diverges.

**Self-sized estimates** (`identify_sized`). A fixed-length estimate that is shorter than
latency plus the path leaves the tail out, and the tail is a model error FxLMS cannot
learn around. So the response is measured long (least squares with 512, 1024, 2048... taps,
until the measured length reaches past the point where the response has sunk into the
noise floor), and the estimate keeps the taps up to where the energy still to come, less
the estimation noise expected there, falls to `identification.max_left_out_db` of the
path's energy. The estimation noise per tap is residual power / (rows x probe power), the
variance of a least-squares tap on a white probe. The configured length
(`controller.secondary_path_taps`, `controller.feedback_path_taps`) is a maximum: a path
that needs more is a `UserError` naming the key and the length to set, never a silently
truncated estimate.

**Feedback detection.** The same probe gives the speaker-to-reference-mic path F. With the
controller W in place the reference is x_d + F y with y = W x, and cancellation needs
S W ~ -P (S: secondary path, P: primary path reference to error). The feedback's share
of the reference is then |F W| ~ |F P / S|, which is also the loop gain of the
feedback through the controller (instability as it nears 1). P is not known at
identification time; taking |P| <= 1 (the error mic does not hear the noise louder than the
reference mic: true of a cup, a duct and a room with the reference nearer the source) bounds
it by |F / S|. Feedback limits the attenuation to about -20 log10 |F P / S| and colours the
reference, so `feedback_ratio_db` = max over the band where the speaker works (|S| within
20 dB of its peak, smoothed over ~100 Hz) of 20 log10 |F / S|, and neutralization turns
on by itself when it exceeds `identification.feedback_threshold_db` (default -30 dB: the
feedback would cap cancellation near 30 dB). A measured F that does not rise above its own
estimation noise is no feedback path at all (the headphone).

**Controller length** (`recommended_controller_taps`). The optimal controller approximates
-P / S, whose impulse response lasts about the primary path's span after the secondary
path's delay, plus the secondary path's own ring-down (1/S lasts as long as S rings):
taps ~ primary span + secondary length - 2 x secondary delay, rounded up to 64 and bounded
by the controller's CPU budget `max_taps`. The primary span is measured from ambient noise
(reference to error mic, speaker silent; `ambient_primary_span`), which only works when the
ambient noise is broadband; otherwise the primary path is taken to last as long as the
secondary path (the same room, the same reverberation). Tonal ambient noise asks for one
more thing: the filter must span a period of its lowest strong tone
(`ambient_lowest_tone_period`), or the harmonics look alike over the filter and the weights
needed grow past any bound. The controller resolves `controller.taps: auto` with this one int.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from device.contract.errors import UserError
from device.core.dsp.lsfir import apply_fir, fit_fir, normal_equations, solve_fir

MEASURE_START_TAPS = 512      # first length of the long measurement, doubled until it sees the floor
MEASURE_LIMIT_TAPS = 4096     # longest measurement (85 ms at 48 kHz)
END_STEP = 16                 # the estimate length is a multiple of this
SIGNIFICANCE = 10.0           # a path's energy must exceed 10x its estimation noise to exist


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
    # Self-sized estimates: the length the measurement was made with, where the path ends
    # above the noise floor (latency included) and the energy beyond the estimate, relative to
    # the path's energy (dB; -inf when none is left out above the noise).
    measured_taps: int = 0
    path_samples: int = 0
    left_out_db: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "taps": int(self.estimate.size),
            "measured_taps": self.measured_taps,
            "path_samples": self.path_samples,
            "left_out_db": None if not math.isfinite(self.left_out_db) else round(self.left_out_db, 2),
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


@dataclass(frozen=True)
class LongResponse:
    response: np.ndarray       # least-squares FIR, `taps` long
    noise_per_tap: float       # expected squared estimation error of each tap
    residual_energy: float
    recorded_energy: float
    rows: int
    probe_power: float


def measure_response(played: np.ndarray, recorded: np.ndarray, taps: int) -> LongResponse:
    n = min(played.size, recorded.size)
    R, p = normal_equations(played[:n], recorded[:n], taps, taps - 1, n)
    response = solve_fir(R, p)
    window = slice(taps - 1, n)
    residual = recorded[:n] - apply_fir(response, played[:n])
    residual_energy = float(np.dot(residual[window], residual[window]))
    rows = n - taps + 1
    probe_power = float(np.mean(played[window] ** 2))
    return LongResponse(response, residual_energy / rows / max(rows * probe_power, 1e-300), residual_energy,
                        float(np.dot(recorded[window], recorded[window])), rows, probe_power)


def path_end(response: np.ndarray, noise_per_tap: float, max_left_out_db: float) -> tuple[int, float, float]:
    """(end, left-out dB, path energy): the shortest multiple of END_STEP after which the
    response's energy, less the estimation noise expected over those taps, is at most
    `max_left_out_db` of the path's energy. End 0 when the path does not rise above the noise."""
    energy = response * response
    taps = energy.size
    remaining = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])     # remaining[k] = sum_{i>=k}
    noise = noise_per_tap * (taps - np.arange(taps + 1))
    path_energy = remaining[0] - noise[0]
    if not path_energy > (SIGNIFICANCE - 1.0) * noise[0]:
        return 0, float("-inf"), max(path_energy, 0.0)
    excess = np.maximum(remaining - noise, 0.0) / path_energy
    limit = 10.0 ** (max_left_out_db / 10.0)
    candidates = np.arange(0, taps + 1, END_STEP)
    ok = candidates[excess[candidates] <= limit]
    end = int(ok[0]) if ok.size else taps
    left = float(excess[min(end, taps)])
    return max(end, END_STEP), (10.0 * math.log10(left) if left > 0 else float("-inf")), path_energy


def identify_sized(played: np.ndarray, recorded: np.ndarray, max_taps: int, max_left_out_db: float,
                   key: str = "controller.secondary_path_taps", allow_absent: bool = False) -> IdentificationResult | None:
    """An estimate as long as the path (latency included) and no longer, at most `max_taps`.

    Raises UserError naming `key` when the path needs more than `max_taps`. With
    `allow_absent`, a path that does not rise above its estimation noise gives None."""
    played = np.asarray(played, dtype=np.float64)
    recorded = np.asarray(recorded, dtype=np.float64)
    n = min(played.size, recorded.size)
    # Measure past the maximum when the path is longer, so a refusal can say what length to set.
    ceiling = min(MEASURE_LIMIT_TAPS, n // 8)
    taps = min(MEASURE_START_TAPS, ceiling)
    while True:
        long = measure_response(played[:n], recorded[:n], taps)
        end, left_out_db, _ = path_end(long.response, long.noise_per_tap, max_left_out_db)
        # The measurement must reach a quarter of its length past the end, or the end may be
        # where it stopped looking rather than where the path stops.
        if end == 0 or end + taps // 4 <= taps or taps >= ceiling:
            break
        taps = min(2 * taps, ceiling)
    if end == 0:
        if allow_absent:
            return None
        raise UserError(f"identification: the speaker's response at the microphone ({key}) does not rise above the "
                        "noise; is the speaker connected to audio.speaker_channel, the microphone on its channel, and "
                        "identification.probe_level_dbfs loud enough?")
    if end > max_taps:
        at_least = "at least " if end + taps // 4 > taps else ""
        raise UserError(
            f"identification: {key}: the path (I/O latency included) lasts {at_least}{end} samples above the noise "
            f"floor but {key} is {max_taps}; an estimate that short would leave out "
            f"{_left_out(long, max_taps):.1f} dB of its energy; set {key} to at least {_round_up(end, 64)}")
    estimate = long.response[:end].copy()
    residual = recorded[:n] - apply_fir(estimate, played[:n])
    window = slice(taps - 1, n)
    residual_energy = float(np.dot(residual[window], residual[window]))
    quality = 10.0 * math.log10((residual_energy + 1e-300) / (long.recorded_energy + 1e-300))
    estimate_error = 10.0 * math.log10((end * long.noise_per_tap + 1e-300) / (float(np.dot(estimate, estimate)) + 1e-300))
    return IdentificationResult(
        estimate=estimate,
        quality_db=quality,
        delay_samples=int(np.argmax(np.abs(estimate))),
        probe_rms_dbfs=_rms_dbfs(played[:n]),
        response_rms_dbfs=_rms_dbfs(recorded[:n]),
        estimate_error_db=estimate_error,
        measured_taps=taps,
        path_samples=end,
        left_out_db=left_out_db,
    )


def _round_up(value: int, step: int) -> int:
    return -(-int(value) // step) * step


def _left_out(long: LongResponse, taps: int) -> float:
    energy = long.response ** 2
    total = float(energy.sum()) - long.noise_per_tap * energy.size
    tail = float(energy[taps:].sum()) - long.noise_per_tap * max(energy.size - taps, 0)
    return 10.0 * math.log10(max(tail, 1e-300) / max(total, 1e-300))


def feedback_ratio_db(secondary_path: np.ndarray, feedback_path: np.ndarray, smoothing_hz: float = 100.0,
                      sample_rate: int = 48000) -> float:
    """max over the speaker's working band of 20 log10 |F / S| (see the module docstring)."""
    size = 1 << int(math.ceil(math.log2(max(secondary_path.size, feedback_path.size, 1024) * 2)))
    magnitude_s = np.abs(np.fft.rfft(secondary_path, size))
    magnitude_f = np.abs(np.fft.rfft(feedback_path, size))
    bins = max(1, int(round(smoothing_hz / (sample_rate / size))))
    kernel = np.ones(bins) / bins
    power_s = np.convolve(magnitude_s ** 2, kernel, mode="same")
    power_f = np.convolve(magnitude_f ** 2, kernel, mode="same")
    band = power_s >= 0.01 * power_s.max()
    return float(10.0 * np.log10(np.max(power_f[band] / np.maximum(power_s[band], 1e-300)) + 1e-300))


def spectral_flatness(x: np.ndarray, fs: int) -> float:
    """Geometric over arithmetic mean of the power spectrum from 100 Hz to 0.4 fs (1 = white)."""
    from device.core.features import welch_psd

    if x.size < 4096:
        return 0.0
    freqs, psd = welch_psd(np.asarray(x, dtype=np.float64), fs, 2048)
    band = psd[(freqs >= 100) & (freqs <= 0.4 * fs)] + 1e-30
    return float(np.exp(np.mean(np.log(band))) / np.mean(band))


MIN_AMBIENT_FLATNESS = 0.05   # below this the ambient is too tonal to tell a path's span (pink ~0.6)
AMBIENT_LAG = 96              # samples the error mic may hear the noise before the reference mic


def ambient_primary_span(reference: np.ndarray, error: np.ndarray, fs: int, max_taps: int,
                         max_left_out_db: float) -> int | None:
    """How long the reference-to-error response lasts (from the reference's arrival), from
    ambient noise with the speaker silent; None when the ambient noise cannot tell (tonal,
    too short, too quiet)."""
    reference = np.asarray(reference, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    if spectral_flatness(reference, fs) < MIN_AMBIENT_FLATNESS:
        return None
    # x[n] = reference[n + lag]: tap k of the fit is a delay of k - lag samples.
    x = reference[AMBIENT_LAG:]
    d = error[:x.size]
    taps = min(max_taps + AMBIENT_LAG, MEASURE_LIMIT_TAPS, x.size // 8)
    if taps < 64 or not np.any(x):
        return None
    long = measure_response(x, d, taps)
    # Ambient noise is not white: the estimation noise per tap is larger where the reference
    # is weak; the residual-based figure is a floor, which makes the span a lower bound.
    end, _, _ = path_end(long.response, long.noise_per_tap, max_left_out_db)
    if end == 0 or long.residual_energy > 0.5 * long.recorded_energy:
        return None
    return max(end - AMBIENT_LAG, 1)


TONE_PROMINENCE_DB = 10.0    # a spectral peak this far above its surroundings is a tone
TONE_MIN_SHARE = 0.01        # ... and it must carry this share of the ambient power to matter
# Tones below this do not set the controller's length: one period there is over 2400 taps
# at 48 kHz, past any CPU budget. It was the reference high-pass's corner when the rule was
# measured; the corner moved to 5 Hz, the rule's floor did not.
LOWEST_TONE_HZ = 20.0


def local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of `x`, as scipy.signal.find_peaks finds them: a sample above
    its left neighbour and above the first different sample to its right; a flat top counts
    once, at its middle (the lower middle of an even one). The ends are never peaks."""
    x = np.asarray(x, dtype=np.float64)
    peaks = []
    i, last = 1, x.size - 1
    while i < last:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < last and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                peaks.append((i + ahead - 1) // 2)
                i = ahead
        i += 1
    return np.asarray(peaks, dtype=np.int64)


def prominent_peaks(x: np.ndarray, prominence: float) -> np.ndarray:
    """The local maxima of `x` at least `prominence` above their surroundings, as
    scipy.signal.find_peaks(x, prominence=...) selects them: a peak's prominence is its height
    over the higher of the lowest points on each side before a higher sample (or the end)."""
    x = np.asarray(x, dtype=np.float64)
    kept = []
    for peak in local_maxima(x):
        height = x[peak]
        higher_left = np.flatnonzero(x[:peak] > height)
        higher_right = np.flatnonzero(x[peak + 1:] > height)
        left = higher_left[-1] + 1 if higher_left.size else 0
        right = peak + 1 + higher_right[0] if higher_right.size else x.size
        base = max(x[left:peak + 1].min(), x[peak:right].min())
        if height - base >= prominence:
            kept.append(peak)
    return np.asarray(kept, dtype=np.int64)


def ambient_lowest_tone_period(reference: np.ndarray, fs: int,
                               lowest_hz: float = LOWEST_TONE_HZ) -> int | None:
    """One period (samples) of the lowest strong tone in the ambient noise, or None.

    A filter shorter than the period of the lowest harmonic it must cancel sees the
    harmonics nearly alike: the least-squares weights grow huge (measured: a 50 Hz hum with
    harmonics on the headphone, 256 taps reach 5 dB with weight norm 437; 1024 taps 51 dB
    with norm 1.6), and no bounded filter gets there."""
    from device.core.features import welch_psd

    reference = np.asarray(reference, dtype=np.float64)
    segment = 1 << 14
    if reference.size < 2 * segment:
        return None
    freqs, psd = welch_psd(reference, fs, segment)
    band = freqs >= max(lowest_hz, 1.0)
    level = 10.0 * np.log10(psd + 1e-300)
    peaks = prominent_peaks(np.where(band, level, level.min()), TONE_PROMINENCE_DB)
    total = float(psd[band].sum())
    strong = [k for k in peaks if psd[max(k - 2, 0):k + 3].sum() >= TONE_MIN_SHARE * total]
    if not strong:
        return None
    return int(math.ceil(fs / freqs[min(strong)]))


def recommended_controller_taps(secondary_path_samples: int, secondary_delay_samples: int,
                                primary_span_samples: int | None, max_taps: int,
                                tone_period_samples: int | None = None) -> int:
    """Controller length for the rig (see the module docstring): an int, a multiple of 64,
    at least 128 and at most `max_taps` (the controller's CPU budget). With tonal ambient
    noise it also spans one period of the lowest strong tone."""
    ring = max(secondary_path_samples - secondary_delay_samples, 0)
    primary = ring if primary_span_samples is None else max(primary_span_samples, 0)
    wanted = _round_up(max(primary + ring, tone_period_samples or 0, 1), 64)
    return int(max(min(wanted, max_taps), min(128, max_taps)))


DEFAULT_TAP_BUDGET = 1024   # controller taps allowed when the config sets no `controller.max_taps`


def controller_tap_budget(controller) -> int:
    """The controller's CPU budget in taps: `controller.max_taps` where the config has it."""
    budget = controller["max_taps"] if "max_taps" in controller else DEFAULT_TAP_BUDGET
    return int(budget)


def resolved_controller_taps(controller, recommended: int) -> int:
    """`controller.taps` as an int: `auto` is the rig's recommendation."""
    return int(recommended) if controller.taps == "auto" else int(controller.taps)


@dataclass(frozen=True)
class RigIdentification:
    secondary: IdentificationResult
    feedback: IdentificationResult | None      # None: no feedback path above the noise
    feedback_ratio_db: float | None            # max |F/S| in the speaker's band, dB
    neutralize_feedback: bool                  # the runtime subtracts the feedback path
    primary_span_samples: int | None
    recommended_taps: int
    tone_period_samples: int | None = None     # one period of the lowest strong ambient tone

    def decisions(self) -> dict:
        """What identification decided for the rig, as `identify` and the simulator report it."""
        return {
            "feedback_measured": None if self.feedback is None else self.feedback.to_dict(),
            "feedback_ratio_db": None if self.feedback_ratio_db is None else round(self.feedback_ratio_db, 2),
            "feedback_neutralization": self.neutralize_feedback,
            "primary_span_samples": self.primary_span_samples,
            "tone_period_samples": self.tone_period_samples,
            "recommended_controller_taps": self.recommended_taps,
        }

    def to_dict(self) -> dict:
        decisions = self.decisions()
        return {"secondary": self.secondary.to_dict(), "feedback": decisions.pop("feedback_measured"), **decisions}


def identify_rig(played: np.ndarray, reference: np.ndarray, error: np.ndarray, controller, identification,
                 sample_rate: int, max_controller_taps: int, ambient_reference: np.ndarray | None = None,
                 ambient_error: np.ndarray | None = None) -> RigIdentification:
    """Everything one probe tells: the self-sized secondary path, the feedback path and whether
    to neutralize it, and the controller length. `controller` and `identification` are the
    config sections; `played`, `reference`, `error` share the stream clock."""
    left_out = identification.max_left_out_db
    secondary = identify_sized(played, error, controller.secondary_path_taps, left_out)
    feedback = identify_sized(played, reference, controller.feedback_path_taps, left_out,
                              key="controller.feedback_path_taps", allow_absent=True)
    ratio = None if feedback is None else feedback_ratio_db(secondary.estimate, feedback.estimate,
                                                            sample_rate=sample_rate)
    detected = ratio is not None and ratio >= identification.feedback_threshold_db
    # `controller.feedback_neutralization: true` forces it on where any feedback was measured;
    # with nothing above the noise there is nothing to subtract.
    neutralize = feedback is not None and (detected or bool(controller.feedback_neutralization))
    span = period = None
    if ambient_reference is not None and ambient_error is not None:
        span = ambient_primary_span(ambient_reference, ambient_error, sample_rate, max_controller_taps, left_out)
        period = ambient_lowest_tone_period(ambient_reference, sample_rate,
                                            max(controller.highpass_hz, LOWEST_TONE_HZ))
    taps = recommended_controller_taps(secondary.path_samples, secondary.delay_samples, span, max_controller_taps,
                                       period)
    return RigIdentification(secondary, feedback, ratio, neutralize, span, taps, period)
