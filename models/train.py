"""Train the noise classifier: Random Forest on `device.core.features`, exported to ONNX with a model card.

    python -m models.train [--data DIR] [--out models/noise_classifier.onnx] [--seed 0] [--no-eval]

Data: the real recordings in ``<repo>/../shared/data/noise/<class>/*.wav`` (16 kHz mono; its
README gives sources, licences and attribution, copied into the model card) plus seeded
synthetic white and pink noise made here. Every clip is cut into 2 s windows with a 0.5 s hop
(the device's `classifier.window_s` / `hop_s`), and each window becomes one
`device.core.features.feature_vector` -- the function the device runs.

Augmentation (training rows only; evaluation is on the clean windows), per copy of a clip,
each step drawn from a seeded generator:

* microphone / room EQ: a high-pass (20-300 Hz) and/or low-pass (3.5-7.5 kHz), one to three
  peaking filters (+-6 dB, 100 Hz-6 kHz) and low/high shelves (+-6 dB) -- white and pink get
  gentler settings (+-3 dB, no low-pass under 6.5 kHz) so they stay white and pink;
* a spectral tilt (recordings only): a first-order low-pass at 0.5-4 kHz or high-pass at
  50-400 Hz -- the colouring of a microphone, its mounting or a phone recorder (one Berlin
  street is ~10 dB darker above 1 kHz than the other);
* a room: convolution with the impulse response of a seeded shoebox room by the image-source
  method (pyroomacoustics; early reflections) or, the other half of the time, a synthetic
  exponentially decaying one (RT60 0.15-0.7 s, direct-to-reverberant ratio 0-10 dB);
* a second source at low level (12-30 dB below): a clip of another class, or synthetic
  brown/pink/white noise, or a hum;
* microphone self-noise (white, 35-60 dB below), a gain of -40..+6 dB;
* a slow gain swell (recordings only): 2-8 dB at 0.1-0.6 Hz, as a vehicle passing or people
  moving nearer; then clipping at full scale and 16-bit quantisation;
* speed and pitch (recordings only, applied first): playback 0.9-1.1x by polyphase resampling
  (an engine, a saw, voices a little faster or slower).

`AUG_PARAMS` holds the probabilities and ranges (copied into the model card); `models/ablation.py`
measures the feature groups under the same leave-one-source-out protocol.

Copies per clip are chosen so that each class gets about the same number of training rows.

Evaluation is LEAVE-ONE-SOURCE-OUT: each source recording (a Berlin street, a cafe, an ESC-10
chainsaw recording; the generated white/pink "recordings" of one generator index together) is
held out in turn; its windows, and every augmented row built from it (also as mixed-in
background), are absent from training. In each outer fold the feature set (`CANDIDATES`:
every feature, or without the lowest MFCC means that carry the microphone's EQ) and the forest
(`FOREST_CANDIDATES`) are chosen on a two-way inner split of the training recordings
(`select_settings`: a class left with one recording is split by time for training but not
scored), never on the held-out one, and so are the thresholds of the `unknown` answer and of the
class tracker (`THRESHOLD_RULES`, on the inner held-out windows of the chosen candidate).
The fold also computes the out-of-distribution statistics from its training rows and reports
which held-out windows the `unknown` rule with the fold's thresholds answers `unknown`, and a
reliability curve of the forest's probabilities.

The final model is trained on everything, with the feature set the inner split of all
recordings chooses, and written with its card (classes, feature spec, data summary and
attribution, hyper-parameters, evaluation, out-of-distribution statistics, sha256 of the ONNX
file).
Deterministic: the same command and data give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import functools
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

from device.core import features

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "noise"
DEFAULT_OUT = REPO / "models" / "noise_classifier.onnx"
CLASSES = ("white", "pink", "traffic", "office", "construction", "cafe")
REAL_CLASSES = ("traffic", "office", "construction", "cafe")
SR = features.SAMPLE_RATE
WINDOW_S = 2.0   # the device's classifier.window_s: 2 s beat 1 s by ~5 points in grouped CV (docs/classifier.md)
HOP_S = 0.5

FOREST_PARAMS = {
    "n_estimators": 60,     # as accurate as 150 over three seeds (docs/classifier.md) at 40% of the memory
    "max_depth": 16,
    "min_samples_split": 6,
    "min_samples_leaf": 3,
    "max_features": 5,      # sqrt(127) = 11 splits on recording-specific detail more (docs/classifier.md)
    "max_samples": 0.3,
    "class_weight": "balanced",
    "bootstrap": True,
}
ROWS_PER_CLASS = 800         # target training rows per class after augmentation (LOSO trains ~100 forests)
SYNTH_RECORDINGS = 10        # synthetic white and pink "recordings" per class
SYNTH_SECONDS = 8.0
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}  # onnxruntime >= 1.17 on the Pi


@dataclass
class Clip:
    key: str                  # file stem, unique
    label: str
    recording: str            # source recording (the evaluation group)
    order: int                # position of the clip within its recording (time)
    audio: np.ndarray
    licence: str = ""
    attribution: str = ""
    source: str = ""
    synthetic: bool = False


# -- data ------------------------------------------------------------------------------------

def recording_of(stem: str) -> tuple[str, int]:
    """Source recording and time order of a clip file stem.

    berlin_0619B0AD_00350 -> (berlin_0619B0AD, 350); esc10_chainsaw_1-19898-B ->
    (esc10_1-19898, 1) (ESC-10 cuts one freesound recording into clips A, B, C).
    """
    m = re.fullmatch(r"esc10_[a-z_]+_(\d+-\d+)-([A-Z])", stem)
    if m:
        return f"esc10_{m.group(1)}", ord(m.group(2)) - ord("A")
    m = re.fullmatch(r"(.+)_(\d+)", stem)
    if m:
        return m.group(1), int(m.group(2))
    return stem, 0


def _readme_rows(data_dir: Path) -> dict[str, dict[str, str]]:
    readme = data_dir / "README.md"
    rows: dict[str, dict[str, str]] = {}
    if not readme.exists():
        return rows
    header: list[str] | None = None
    for line in readme.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "file":
            header = cells
            continue
        if header and len(cells) == len(header) and not set(cells[0]) <= set("-: "):
            row = dict(zip(header, cells))
            rows[Path(row["file"]).stem] = row
    return rows


def load_real(data_dir: Path) -> list[Clip]:
    import soundfile

    if not data_dir.is_dir():
        raise SystemExit(f"train: data directory {data_dir} not found (use --data DIR)")
    meta = _readme_rows(data_dir)
    clips = []
    for label in REAL_CLASSES:
        for path in sorted((data_dir / label).glob("*.wav")):
            audio, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
            audio = audio[:, 0]
            if rate != SR:
                audio = scipy.signal.resample_poly(audio, SR, rate)
            recording, order = recording_of(path.stem)
            row = meta.get(path.stem, {})
            clips.append(Clip(path.stem, label, recording, order, audio,
                              licence=row.get("licence", ""), attribution=row.get("attribution", ""),
                              source=row.get("source repo", "")))
    if not clips:
        raise SystemExit(f"train: no WAV files under {data_dir}/<class>/")
    return clips


def pink_noise(rng: np.random.Generator, n: int, method: str) -> np.ndarray:
    """Pink (1/f power) noise by one of three generators, so the model does not learn one of them."""
    if method == "fft":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = 1.0
        return np.fft.irfft(spectrum / np.sqrt(f), n)
    if method == "kellet":  # Paul Kellet's refined -3 dB/octave filter
        b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
        a = [1.0, -2.494956002, 2.017265875, -0.522189400]
        return scipy.signal.lfilter(b, a, rng.standard_normal(n + 2000))[2000:]
    # Voss-McCartney: a sum of 16 sample-and-hold white sources updated at octave rates.
    rows = 16
    out = rng.standard_normal(n) * 0.5
    for k in range(rows):
        step = 2 ** k
        held = rng.standard_normal(n // step + 2)
        offset = int(rng.integers(0, step))
        out += held[(np.arange(n) + offset) // step]
    return out


def synthetic_clips(seed: int, recordings: int = SYNTH_RECORDINGS, seconds: float = SYNTH_SECONDS) -> list[Clip]:
    clips = []
    n = int(seconds * SR)
    for label in ("white", "pink"):
        for k in range(recordings):
            rng = np.random.default_rng([seed, 7, CLASSES.index(label), k])
            if label == "white":
                x = rng.standard_normal(n) if k % 3 else rng.uniform(-1.0, 1.0, n)
            else:
                x = pink_noise(rng, n, ("fft", "kellet", "voss")[k % 3])
            x = x / (np.sqrt(np.mean(x * x)) + 1e-30) * 10 ** (rng.uniform(-40, -12) / 20)
            clips.append(Clip(f"synth_{label}_{k:02d}", label, f"synth_{label}_{k:02d}", 0, x, synthetic=True,
                              licence="generated", attribution="generated by models/train.py",
                              source="models/train.py"))
    return clips


# -- augmentation ----------------------------------------------------------------------------

def _peaking(f0: float, gain_db: float, q: float) -> np.ndarray:
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / SR
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a]
    den = [1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a]
    return np.concatenate([np.array(b) / den[0], np.array(den) / den[0]])[None, :]


def _shelf(f0: float, gain_db: float, high: bool) -> np.ndarray:
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / SR
    alpha = np.sin(w0) / 2 * np.sqrt(2)
    cw, sa = np.cos(w0), 2 * np.sqrt(a) * alpha
    sign = -1 if high else 1
    b0 = a * ((a + 1) - sign * (a - 1) * cw + sa)
    b1 = sign * 2 * a * ((a - 1) - sign * (a + 1) * cw)
    b2 = a * ((a + 1) - sign * (a - 1) * cw - sa)
    a0 = (a + 1) + sign * (a - 1) * cw + sa
    a1 = -sign * 2 * ((a - 1) + sign * (a + 1) * cw)
    a2 = (a + 1) + sign * (a - 1) * cw - sa
    return np.array([[b0, b1, b2, a0, a1, a2]]) / a0


AUG_PARAMS = {
    "eq_p": 0.8,            # probability of the microphone/room EQ
    "highpass_max_hz": 300.0,  # EQ high-pass corner drawn from 20 Hz..this (white/pink: ..100 Hz)
    "room_p": 0.3,          # probability of a synthetic room (not white/pink)
    "image_source_share": 0.5,  # of those rooms, the share that are image-source rooms (the rest exponential decays)
    "mix_p": 0.5,           # probability of a second source at low level
    "mix_snr_db": (12.0, 30.0),
    "tilt_p": 0.5,          # probability of a spectral tilt (microphone / mounting colouring)
    "tilt_lowpass_hz": (500.0, 4000.0),   # first-order low-pass corner (highs down, log-uniform) ...
    "tilt_highpass_hz": (50.0, 400.0),    # ... or, half the time, first-order high-pass corner (lows down)
    "swell_p": 0.5,         # probability of a slow gain swell (passing vehicles, people moving)
    "swell_db": (2.0, 8.0),
    "swell_hz": (0.1, 0.6),
    "speed_p": 0.5,         # probability of a speed (and with it pitch) change (recordings only)
    "speed_range": (0.9, 1.1),  # playback speed factor: an engine, a saw or voices a little faster or slower
}


def random_eq(x: np.ndarray, rng: np.random.Generator, gentle: bool, highpass_max_hz: float = 300.0) -> np.ndarray:
    span = 3.0 if gentle else 6.0
    sections = []
    if rng.random() < 0.5:
        fc = rng.uniform(20, 100 if gentle else highpass_max_hz)
        sections.append(scipy.signal.butter(2, fc, btype="highpass", fs=SR, output="sos"))
    if rng.random() < (0.2 if gentle else 0.4):
        fc = rng.uniform(6500 if gentle else 3500, 7500)
        sections.append(scipy.signal.butter(4, fc, btype="lowpass", fs=SR, output="sos"))
    for _ in range(int(rng.integers(1, 4))):
        sections.append(_peaking(float(np.exp(rng.uniform(np.log(100), np.log(6000)))),
                                 rng.uniform(-span, span), rng.uniform(0.7, 3.0)))
    if rng.random() < 0.5:
        sections.append(_shelf(rng.uniform(100, 400), rng.uniform(-span, span), high=False))
    if rng.random() < 0.5:
        sections.append(_shelf(rng.uniform(2000, 5000), rng.uniform(-span, span), high=True))
    return scipy.signal.sosfilt(np.concatenate(sections), x)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `x` `factor` times faster (shorter, higher: speed and pitch together), by polyphase resampling."""
    from fractions import Fraction

    ratio = Fraction(1.0 / factor).limit_denominator(40)
    return scipy.signal.resample_poly(x, ratio.numerator, ratio.denominator)


ROOM_BANK_SIZE = 40  # image-source rooms computed once per seed (pyroomacoustics is slow per room)


@functools.lru_cache(maxsize=4)
def image_source_rooms(seed: int = 0, count: int = ROOM_BANK_SIZE) -> tuple[np.ndarray, ...]:
    """Impulse responses of seeded shoebox rooms by the image-source method (pyroomacoustics):
    3-12 x 3-10 x 2.4-4 m, RT60 0.15-0.8 s (Sabine), source and microphone at least 0.5 m from
    every wall; each response cut at 0.8 s and scaled to unit energy. Early reflections (comb
    filtering, flutter) that the exponential-decay rooms of `random_room` do not have."""
    import pyroomacoustics as pra

    rng = np.random.default_rng([seed, 23])
    out = []
    while len(out) < count:
        dims = np.array([rng.uniform(3, 12), rng.uniform(3, 10), rng.uniform(2.4, 4.0)])
        rt60 = rng.uniform(0.15, 0.8)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # a room too large for that RT60 (absorption would exceed 1)
            continue
        room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(absorption), max_order=min(max_order, 12))
        source = rng.uniform(0.5, dims - 0.5)
        mic = rng.uniform(0.5, dims - 0.5)
        room.add_source(source)
        room.add_microphone(mic)
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)[: int(0.8 * SR)]
        out.append(rir / (np.sqrt(np.sum(rir * rir)) + 1e-30))
    return tuple(out)


def image_source_room(x: np.ndarray, rng: np.random.Generator, seed: int = 0) -> np.ndarray:
    bank = image_source_rooms(seed)
    rir = bank[int(rng.integers(len(bank)))]
    delay = int(np.argmax(np.abs(rir)))  # keep the direct sound at time zero, as a nearby microphone hears it
    return scipy.signal.fftconvolve(x, rir[delay:])[: x.size]


def random_room(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.15, 0.7)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SR)] = 0.0
    drr_db = rng.uniform(0, 10)
    tail *= 10 ** (-drr_db / 20) / (np.sqrt(np.sum(tail * tail)) + 1e-30)
    tail[0] = 1.0
    return scipy.signal.fftconvolve(x, tail)[: x.size]


def _background(rng: np.random.Generator, n: int, pool: list[Clip], label: str) -> tuple[np.ndarray, str | None]:
    """Something else heard at low level: another class's clip or generated noise/hum."""
    choice = rng.random()
    others = [c for c in pool if c.label != label]
    if choice < 0.6 and others:
        other = others[int(rng.integers(len(others)))]
        reps = -(-n // other.audio.size)
        start = int(rng.integers(0, other.audio.size))
        return np.tile(np.roll(other.audio, -start), reps)[:n], other.key
    if choice < 0.8:
        brown = np.cumsum(rng.standard_normal(n))
        return scipy.signal.sosfilt(scipy.signal.butter(1, 20, btype="highpass", fs=SR, output="sos"), brown), None
    if choice < 0.9:
        return pink_noise(rng, n, "kellet"), None
    f0 = rng.uniform(45, 130)
    t = np.arange(n) / SR
    return sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 6.3)) for k in range(4)), None


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) + 1e-30


def augment(clip: Clip, rng: np.random.Generator, pool: list[Clip],
            params: dict | None = None) -> tuple[np.ndarray, set[str]]:
    """One randomly altered copy of a clip, and the clips it was built from."""
    p = AUG_PARAMS if params is None else params
    x = clip.audio.copy()
    deps = {clip.key}
    gentle = clip.label in ("white", "pink")
    if p.get("speed_p") and not gentle and rng.random() < p["speed_p"]:
        x = change_speed(x, rng.uniform(*p["speed_range"]))
    if rng.random() < p["eq_p"]:
        x = random_eq(x, rng, gentle, p["highpass_max_hz"])
    if p["tilt_p"] and not gentle and rng.random() < p["tilt_p"]:
        lowpass = rng.random() < 0.5
        lo, hi = p["tilt_lowpass_hz"] if lowpass else p["tilt_highpass_hz"]
        fc = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        x = scipy.signal.sosfilt(scipy.signal.butter(1, fc, btype="lowpass" if lowpass else "highpass", fs=SR,
                                                     output="sos"), x)
    if not gentle and rng.random() < p["room_p"]:
        if rng.random() < p.get("image_source_share", 0.0):
            x = image_source_room(x, rng)
        else:
            x = random_room(x, rng)
    if rng.random() < p["mix_p"]:
        bg, key = _background(rng, x.size, pool, clip.label)
        lo, hi = p["mix_snr_db"]
        snr_db = rng.uniform(max(lo, 15.0) if gentle else lo, hi)
        x = x + bg * (_rms(x) / _rms(bg) * 10 ** (-snr_db / 20))
        if key:
            deps.add(key)
    if rng.random() < 0.5:
        x = x + rng.standard_normal(x.size) * _rms(x) * 10 ** (-rng.uniform(35, 60) / 20)
    x = x * 10 ** (rng.uniform(-40, 6) / 20)
    if p["swell_p"] and not gentle and rng.random() < p["swell_p"]:
        t = np.arange(x.size) / SR
        swell_db = rng.uniform(*p["swell_db"]) * np.sin(2 * np.pi * rng.uniform(*p["swell_hz"]) * t + rng.uniform(0, 2 * np.pi))
        x = x * 10 ** (swell_db / 20)
    return np.round(np.clip(x, -1.0, 1.0) * 32767) / 32767, deps


# -- windows and features ----------------------------------------------------------------------

def windows(audio: np.ndarray, offset: int = 0) -> list[np.ndarray]:
    size, hop = int(WINDOW_S * SR), int(HOP_S * SR)
    return [audio[s:s + size] for s in range(offset, audio.size - size + 1, hop)]


@dataclass
class Rows:
    X: np.ndarray
    y: np.ndarray
    clip: np.ndarray        # index into the clip list of the window's own clip
    deps: list[frozenset]   # clip keys each row was built from
    clean: np.ndarray       # True for unaltered windows (the evaluation rows)
    level: np.ndarray       # RMS level of the window in dBFS, before the features normalise it


def build_rows(clips: list[Clip], seed: int, rows_per_class: int, log=print,
               params: dict | None = None) -> Rows:
    from device.core.classifier import window_level_dbfs

    X, y, idx, deps, clean, level = [], [], [], [], [], []
    windows_per_class = {c: sum(len(windows(k.audio)) for k in clips if k.label == c) for c in CLASSES}
    real_pool = [c for c in clips if not c.synthetic]
    for i, clip in enumerate(clips):
        for w in windows(clip.audio):
            X.append(features.feature_vector(w)); y.append(CLASSES.index(clip.label))
            idx.append(i); deps.append(frozenset({clip.key})); clean.append(True); level.append(window_level_dbfs(w))
        have = windows_per_class[clip.label]
        copies = max(1, int(round(rows_per_class / max(have, 1)))) if have else 0
        for c in range(copies):
            rng = np.random.default_rng([seed, 11, i, c])
            audio, used = augment(clip, rng, real_pool, params)
            for w in windows(audio, offset=int(rng.integers(0, int(HOP_S * SR)))):
                X.append(features.feature_vector(w)); y.append(CLASSES.index(clip.label))
                idx.append(i); deps.append(frozenset(used)); clean.append(False); level.append(window_level_dbfs(w))
    log(f"train: {len(X)} rows ({int(np.sum(clean))} clean windows) from {len(clips)} clips")
    return Rows(np.array(X, dtype=np.float32), np.array(y), np.array(idx), deps, np.array(clean),
                np.array(level))


# -- feature groups and the inner selection ----------------------------------------------------

def _names(prefix: str, rng: range | None = None) -> tuple[str, ...]:
    if rng is not None:
        return tuple(f"{prefix}{i}" for i in rng)
    return tuple(n for n in features.FEATURE_NAMES if n.startswith(prefix))


FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "mfcc_mean_low": _names("mfcc_mean_", range(0, 4)),    # level, tilt: the microphone and its EQ
    "mfcc_mean_high": _names("mfcc_mean_", range(4, features.N_MFCC)),
    "mfcc_std": _names("mfcc_std_"),
    "delta_std": _names("delta_std_"),
    "flatness": _names("flatness_"),
    "level_dynamics": ("level_std_db", "level_range_db"),
    "flux": _names("flux_"),
    "modulation": _names("mod_") + ("comodulation",),
    "onsets": _names("onset_"),
    "tonality": ("crest_mean_db", "crest_std_db", "peak_persistence"),
}
# Candidate feature sets (groups left out) the inner split chooses between in each outer fold.
# Fixed before the nested run: every feature; without the four lowest MFCC means (the level and
# tilt of the microphone); without all 40 MFCC means (a fixed EQ adds a constant to each log-mel
# band, so it moves the means and cancels out of the standard deviations and deltas, which stay).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "all": (),
    "no_mfcc_mean_low": ("mfcc_mean_low",),
    "no_mfcc_mean": ("mfcc_mean_low", "mfcc_mean_high"),
}


def column_mask(dropped: tuple[str, ...]) -> np.ndarray:
    """True for the feature columns the forest may use. Dropped columns stay in the vector the
    device computes (the ONNX input is always every feature); the forest is trained with them
    held constant, so no tree splits on them."""
    keep = np.ones(features.N_FEATURES, dtype=bool)
    for group in dropped:
        for name in FEATURE_GROUPS[group]:
            keep[features.FEATURE_NAMES.index(name)] = False
    return keep


def _masked(X: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if keep.all():
        return X
    out = X.copy()
    out[:, ~keep] = 0.0
    return out


def inner_folds(clips: list[Clip], members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two inner folds (0/1) for the clips `members` (indices into `clips`), and which clips count
    in the inner score. A class's recordings alternate between the folds and count; a class left
    with ONE recording is split by time into halves so that both inner trainings still know it,
    but it does not count: other moments of the same recording measure the recording, not the
    class, and would favour the features that describe the recording."""
    fold = np.full(len(clips), -1)
    counts = np.zeros(len(clips), dtype=bool)
    by_class: dict[str, dict[str, list[int]]] = {}
    for i in members:
        by_class.setdefault(clips[i].label, {}).setdefault(clips[i].recording, []).append(int(i))
    for label, recordings in sorted(by_class.items()):
        names = sorted(recordings)
        if len(names) == 1:
            ordered = sorted(recordings[names[0]], key=lambda k: clips[k].order)
            half = len(ordered) // 2
            for j, k in enumerate(ordered):
                fold[k] = 0 if j < half else 1
            continue
        for r, name in enumerate(names):
            for k in recordings[name]:
                fold[k] = r % 2
                counts[k] = True
    return fold, counts


def source_group(clip: Clip) -> str:
    """The held-out unit of the outer evaluation: the source recording; the generated white and
    pink "recordings" of one generator index k are held out together (synth_k), which halves
    their folds and tests each on an unseen seed all the same."""
    if clip.synthetic:
        return "synth_" + clip.recording.rsplit("_", 1)[-1]
    return clip.recording


def _train_rows(rows: Rows, excluded_keys: set[str], within: np.ndarray | None = None) -> np.ndarray:
    mask = np.array([not (d & excluded_keys) for d in rows.deps])
    return mask if within is None else mask & within


def _balanced(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean([np.mean(y_pred[y_true == k] == k) for k in np.unique(y_true)]))


# Forest settings the inner split chooses between (with the feature set) in each outer fold; fixed
# before any nested result was seen: the previous version's settings, and a more regularised forest
# (shallower trees, larger leaves) that should lean less on one recording's detail.
FOREST_CANDIDATES: dict[str, dict] = {
    "as_before": FOREST_PARAMS,
    "shallow": {**FOREST_PARAMS, "max_depth": 10, "min_samples_leaf": 8, "min_samples_split": 16},
}

# How the thresholds of the `unknown` answer and of the class tracker are chosen: on the inner
# split's held-out windows of the real classes (never on the outer fold), by rules fixed before
# any nested result was seen. The level margin is a design value (not tuned): it is how far a
# microphone's gain may differ from the recordings' before the level alone says `unknown`.
THRESHOLD_RULES = {
    "distance_quantile": 0.98,         # unknown_distance: 2 % of the inner held-out real windows lie beyond it
    "probability_budget": 0.03,        # unknown_min_probability: the highest floor (grid) below which at most 3 % fall
    "probability_grid": (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    "confidence_accuracy": 0.95,       # confidence_threshold: the lowest (grid) above which 95 % are right
    "confidence_grid": (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
    "level_margin_db": 10.0,
}


def choose_thresholds(distance: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> dict:
    """The thresholds, by `THRESHOLD_RULES`, from the inner held-out real windows' distance to the
    nearest class, top probability and whether the top class was right."""
    r = THRESHOLD_RULES
    max_distance = float(np.ceil(np.quantile(distance, r["distance_quantile"]) * 10) / 10)
    floors = [p for p in r["probability_grid"] if np.mean(confidence < p) <= r["probability_budget"]]
    min_probability = max(floors) if floors else min(r["probability_grid"])
    sure = [p for p in r["confidence_grid"]
            if np.any(confidence >= p) and np.mean(correct[confidence >= p]) >= r["confidence_accuracy"]]
    confidence_threshold = min(sure) if sure else max(r["confidence_grid"])
    return {"unknown_distance": max_distance, "unknown_min_probability": float(min_probability),
            "unknown_level_margin_db": r["level_margin_db"], "confidence_threshold": float(confidence_threshold)}


@dataclass
class Settings:
    features: str                   # key of CANDIDATES
    forest: str                     # key of the forest candidates
    params: dict                    # the forest's hyper-parameters
    thresholds: dict                # choose_thresholds on the inner split
    inner_scores: dict[str, float]  # balanced accuracy of every candidate on the inner split


def select_settings(clips: list[Clip], rows: Rows, members: np.ndarray, allowed: np.ndarray, seed: int,
                    forest_candidates: dict[str, dict]) -> Settings:
    """The feature set and forest with the best balanced accuracy on the two-way inner split of
    `members` (training rows limited to `allowed`; ties go to the earlier candidate), and the
    thresholds chosen on that candidate's inner held-out windows."""
    fold, counts = inner_folds(clips, members)
    keys = np.array([c.key for c in clips])
    real = np.array([not c.synthetic for c in clips])
    inner = []
    for f in (0, 1):
        test_clips = np.flatnonzero(fold == f)
        train = _train_rows(rows, set(keys[test_clips]), allowed)
        test = rows.clean & np.isin(rows.clip, test_clips[counts[test_clips]])
        if test.any() and train.any():
            inner.append((train, test))
    scores, held_out = {}, {}
    for feature_name, dropped in CANDIDATES.items():
        keep = column_mask(dropped)
        for forest_name, params in forest_candidates.items():
            name = f"{feature_name}/{forest_name}"
            y_true, proba = [], []
            for train, test in inner:
                forest = make_forest(seed, params)
                forest.fit(_masked(rows.X[train], keep), rows.y[train])
                p = np.zeros((int(test.sum()), len(CLASSES)))
                p[:, forest.classes_] = predict_proba(forest, _masked(rows.X[test], keep))
                y_true.append(rows.y[test]); proba.append(p)
            y_true_all, proba_all = np.concatenate(y_true), np.concatenate(proba)
            scores[name] = round(_balanced(y_true_all, np.argmax(proba_all, axis=1)), 4)
            held_out[name] = (y_true_all, proba_all)
    order = list(scores)
    best = max(order, key=lambda n: (scores[n], -order.index(n)))
    feature_name, forest_name = best.split("/")
    # Distances from each inner training's own statistics, as the device computes them from the card's.
    distance = np.concatenate([_scores(ood_statistics(rows, train), rows.X[test]) for train, test in inner])
    is_real = np.concatenate([real[rows.clip[test]] for _, test in inner])
    y_true_all, proba_all = held_out[best]
    thresholds = choose_thresholds(distance[is_real], proba_all[is_real].max(axis=1),
                                   np.argmax(proba_all[is_real], axis=1) == y_true_all[is_real])
    return Settings(feature_name, forest_name, dict(forest_candidates[forest_name]), thresholds, scores)


# -- out-of-distribution statistics ------------------------------------------------------------

LEVEL_PERCENTILES = (0.5, 99.5)  # of the clean training windows' levels: the range the classes were heard at


def ood_statistics(rows: Rows, train: np.ndarray) -> dict:
    """Per class, per feature mean and standard deviation of the training rows (augmented ones
    included: they stand for other rooms and microphones), and the level range of the clean
    training windows (the augmented gains are arbitrary; the recordings' levels are what was heard)."""
    X = rows.X[train].astype(np.float64)
    y = rows.y[train]
    mean, std = {}, {}
    for k, name in enumerate(CLASSES):
        members = X[y == k]
        mean[name] = [round(float(v), 5) for v in members.mean(axis=0)]
        std[name] = [round(float(v), 5) for v in np.maximum(members.std(axis=0), 1e-3)]
    low, high = np.percentile(rows.level[train & rows.clean], LEVEL_PERCENTILES)
    return {"mean": mean, "std": std, "level_dbfs": [round(float(low), 2), round(float(high), 2)],
            "score": ("sqrt(min over classes of the mean of the 10 largest ((x - mean) / std)^2 over the "
                      "features), device.core.classifier.OodStatistics"),
            "level_percentiles": list(LEVEL_PERCENTILES)}


def unknown_rule(thresholds: dict):
    from device.core.classifier import UnknownRule

    return UnknownRule(thresholds["unknown_distance"], thresholds["unknown_min_probability"],
                       thresholds["unknown_level_margin_db"])


def _unknown_flags(ood: dict, X: np.ndarray, level: np.ndarray, confidence: np.ndarray, rule) -> np.ndarray:
    from device.core.classifier import OodStatistics

    stats = OodStatistics(ood, CLASSES, "train")
    flags = np.zeros(X.shape[0], dtype=bool)
    low, high = stats.level_dbfs
    for i in range(X.shape[0]):
        flags[i] = (stats.score(X[i]) > rule.max_distance
                    or not low - rule.level_margin_db <= level[i] <= high + rule.level_margin_db
                    or confidence[i] < rule.min_probability)
    return flags


def _scores(ood: dict, X: np.ndarray) -> np.ndarray:
    from device.core.classifier import OodStatistics

    stats = OodStatistics(ood, CLASSES, "train")
    return np.array([stats.score(x) for x in X])


def reliability(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability curve: per bin of the top probability, windows, mean top probability, accuracy."""
    confidence = proba.max(axis=1)
    correct = np.argmax(proba, axis=1) == y_true
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (confidence >= lo) & ((confidence < hi) if b < bins - 1 else (confidence <= hi))
        if m.any():
            out.append({"bin": [round(lo, 2), round(hi, 2)], "windows": int(m.sum()),
                        "mean_confidence": round(float(confidence[m].mean()), 4),
                        "accuracy": round(float(correct[m].mean()), 4)})
    return out


def expected_calibration_error(curve: list[dict]) -> float:
    total = sum(b["windows"] for b in curve)
    return round(sum(b["windows"] * abs(b["accuracy"] - b["mean_confidence"]) for b in curve) / max(total, 1), 4)


# -- model -------------------------------------------------------------------------------------

def make_forest(seed: int, params: dict | None = None, n_jobs: int = 2):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **(params or FOREST_PARAMS))


def predict_proba(forest, X: np.ndarray) -> np.ndarray:
    """The forest's probabilities summed on one thread: with several, the trees' votes are added
    in whatever order the threads finish, and a probability exactly on a threshold (0.5 of 10
    trees) may fall either side of it from one run to the next."""
    n_jobs = forest.n_jobs
    forest.n_jobs = 1
    try:
        return forest.predict_proba(X)
    finally:
        forest.n_jobs = n_jobs


def export_onnx(forest, n_features: int = features.N_FEATURES) -> bytes:
    """ONNX bytes of a fitted forest: input `features` float32 [N, n_features], outputs `label`
    (int64 index into CLASSES) and `probabilities` (float32 [N, n_classes], no ZipMap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        forest,
        initial_types=[("features", FloatTensorType([None, n_features]))],
        options={id(forest): {"zipmap": False}},
        target_opset=ONNX_OPSETS,
    )
    onx.graph.name = "noise_classifier"  # skl2onnx puts a random uuid here; the bytes must be reproducible
    onx.producer_name = "anc-device models/train.py"
    onx.doc_string = "noise classifier: RandomForest on device.core.features.feature_vector"
    return onx.SerializeToString()


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    m = np.zeros((n, n), dtype=int)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _per_class(conf: np.ndarray) -> dict[str, dict[str, float | int]]:
    out = {}
    for i, name in enumerate(CLASSES):
        tp = conf[i, i]
        support = int(conf[i].sum())
        predicted = int(conf[:, i].sum())
        if support == 0 and predicted == 0:
            continue
        out[name] = {
            "precision": round(float(tp / predicted), 4) if predicted else None,
            "recall": round(float(tp / support), 4) if support else None,
            "support": support,
        }
    return out


def _accuracy(y_true, y_pred) -> float | None:
    return round(float(np.mean(y_true == y_pred)), 4) if len(y_true) else None


def cross_validate(clips: list[Clip], rows: Rows, seed: int, forest_candidates: dict[str, dict],
                   log=print) -> dict:
    """Leave-one-source-out: each source recording (a street, a cafe, a chainsaw recording, a
    generator seed) is tested by a forest trained without it and without every augmented row
    built from it (also as mixed-in background); the feature set is chosen in each fold on an
    inner split of the training recordings only."""
    keys = np.array([c.key for c in clips])
    rec_of = np.array([source_group(c) for c in clips])
    recordings = sorted(set(rec_of))
    y_pred = np.full(rows.y.size, -1)
    proba = np.zeros((rows.y.size, len(CLASSES)))
    scores = np.full(rows.y.size, np.nan)
    unknown = np.zeros(rows.y.size, dtype=bool)
    tested = np.zeros(rows.y.size, dtype=bool)
    chosen: dict[str, Settings] = {}
    above_threshold = np.zeros(rows.y.size, dtype=bool)
    for n, rec in enumerate(recordings):
        test_clips = np.flatnonzero(rec_of == rec)
        train = _train_rows(rows, set(keys[test_clips]))
        test = rows.clean & np.isin(rows.clip, test_clips)
        members = np.flatnonzero(rec_of != rec)
        settings = select_settings(clips, rows, members, train, seed, forest_candidates)
        chosen[rec] = settings
        rule = unknown_rule(settings.thresholds)
        keep = column_mask(CANDIDATES[settings.features])
        forest = make_forest(seed, settings.params)
        forest.fit(_masked(rows.X[train], keep), rows.y[train])
        fold_proba = np.zeros((int(test.sum()), len(CLASSES)))
        fold_proba[:, forest.classes_] = predict_proba(forest, _masked(rows.X[test], keep))
        proba[test] = fold_proba
        y_pred[test] = np.argmax(fold_proba, axis=1)
        ood = ood_statistics(rows, train)
        scores[test] = _scores(ood, rows.X[test])
        unknown[test] = _unknown_flags(ood, rows.X[test], rows.level[test], fold_proba.max(axis=1), rule)
        above_threshold[test] = fold_proba.max(axis=1) >= settings.thresholds["confidence_threshold"]
        tested |= test
        log(f"train: LOSO {n + 1}/{len(recordings)} {rec}: {settings.features}/{settings.forest} "
            f"(inner {settings.inner_scores}), thresholds {settings.thresholds}, "
            f"{int(train.sum())} training rows, {int(test.sum())} windows, "
            f"accuracy {np.mean(y_pred[test] == rows.y[test]):.3f}, unknown {np.mean(unknown[test]):.3f}")
    y_true, pred = rows.y[tested], y_pred[tested]
    clip_of = rows.clip[tested]
    is_real = np.array([not clips[i].synthetic for i in clip_of])
    labels = np.array([clips[i].label for i in clip_of])
    unk = unknown[tested]
    conf = _confusion(y_true, pred)
    conf_real = _confusion(y_true[is_real], pred[is_real])
    per_recording = {}
    for rec in recordings:
        mask = np.array([source_group(clips[i]) == rec for i in clip_of])
        per_recording[rec] = {
            "class": clips[clip_of[mask][0]].label,
            "windows": int(mask.sum()),
            "accuracy": _accuracy(y_true[mask], pred[mask]),
            "unknown_rate": round(float(unk[mask].mean()), 4),
            "features": chosen[rec].features,
            "forest": chosen[rec].forest,
            "thresholds": chosen[rec].thresholds,
            "predicted": {CLASSES[k]: int(v) for k, v in zip(*np.unique(pred[mask], return_counts=True))},
        }
    # File-level: mean probability over a clip's windows, as `anc-device classify` does for a file.
    clip_true, clip_pred, clip_real = [], [], []
    for i in np.unique(clip_of):
        mask = rows.clean & tested & (rows.clip == i)
        clip_true.append(CLASSES.index(clips[i].label))
        clip_pred.append(int(np.argmax(proba[mask].mean(axis=0))))
        clip_real.append(not clips[i].synthetic)
    clip_true, clip_pred, clip_real = np.array(clip_true), np.array(clip_pred), np.array(clip_real)
    per_class = {c: _accuracy(y_true[labels == c], pred[labels == c]) for c in CLASSES}
    per_class_clips = {c: _accuracy(clip_true[clip_true == k], clip_pred[clip_true == k])
                       for k, c in enumerate(CLASSES)}
    real_per_class = {c: per_class[c] for c in REAL_CLASSES}
    curve = reliability(y_true[is_real], proba[tested][is_real])
    known = ~unk & is_real
    tested_scores = scores[tested]
    sure = above_threshold[tested] & is_real
    threshold_values = {k: sorted({v.thresholds[k] for v in chosen.values()})
                        for k in next(iter(chosen.values())).thresholds}
    return {
        "method": ("leave-one-source-out: every source recording held out in turn (its windows, and every "
                   "augmented row built from it, also as mixed-in background, absent from training); the "
                   "feature set, the forest settings and the unknown/tracker thresholds chosen in each fold "
                   "(nested) on a two-way inner split of the training recordings "
                   "(recordings alternate; a class left with one recording is split by time for training "
                   "and left out of the inner score), never on the held-out recording; evaluation on the "
                   "clean 2 s windows (0.5 s hop)"),
        "folds": len(recordings),
        "real_accuracy": _accuracy(y_true[is_real], pred[is_real]),
        "real_balanced_accuracy": round(float(np.mean([v for v in real_per_class.values()])), 4),
        "accuracy_per_class": per_class,
        "real_clip_accuracy": _accuracy(clip_true[clip_real], clip_pred[clip_real]),
        "real_clips": int(clip_real.sum()),
        "clip_accuracy_per_class": per_class_clips,
        "clip_note": ("file-level: the mean probability over the windows of each 4-10 s clip (what `anc-device "
                      "classify` reports for a file)"),
        "synthetic_accuracy": _accuracy(y_true[~is_real], pred[~is_real]),
        "overall_accuracy": _accuracy(y_true, pred),
        "windows": int(tested.sum()),
        "real_windows": int(is_real.sum()),
        "unknown": {
            "rule": ("each fold's thresholds chosen on its inner split (THRESHOLD_RULES); the values the "
                     "folds chose are in thresholds_chosen, each fold's in per_recording"),
            "rate_real": round(float(unk[is_real].mean()), 4),
            "rate_synthetic": round(float(unk[~is_real].mean()), 4),
            "rate_per_class": {c: round(float(unk[labels == c].mean()), 4) for c in CLASSES},
            "accuracy_of_answered_real": _accuracy(y_true[known], pred[known]),
            "score_percentiles_real": {str(q): round(float(np.percentile(tested_scores[is_real], q)), 3)
                                       for q in (50, 90, 95, 99)},
        },
        "calibration": {"reliability_real": curve, "expected_calibration_error_real":
                        expected_calibration_error(curve)},
        "features_chosen": {name: sum(1 for v in chosen.values() if v.features == name) for name in CANDIDATES},
        "forest_chosen": {name: sum(1 for v in chosen.values() if v.forest == name) for name in forest_candidates},
        "thresholds_chosen": threshold_values,
        "confidence_threshold": {
            "share_of_real_windows_at_or_above": round(float(sure.sum() / max(is_real.sum(), 1)), 4),
            "accuracy_of_those": _accuracy(y_true[sure], pred[sure])},
        "per_class": _per_class(conf),
        "confusion_matrix": {"rows_true_cols_predicted": list(CLASSES), "all": conf.tolist(),
                             "real_only": conf_real.tolist()},
        "per_recording": per_recording,
    }


def data_summary(clips: list[Clip]) -> dict:
    recordings: dict[str, dict] = {}
    for c in clips:
        entry = recordings.setdefault(c.recording, {
            "class": c.label, "clips": 0, "seconds": 0.0, "licence": c.licence,
            "attribution": c.attribution, "source": c.source, "synthetic": c.synthetic})
        entry["clips"] += 1
        entry["seconds"] = round(entry["seconds"] + c.audio.size / SR, 2)
    per_class = {}
    for label in CLASSES:
        members = [c for c in clips if c.label == label]
        per_class[label] = {
            "recordings": len({c.recording for c in members}),
            "clips": len(members),
            "seconds": round(sum(c.audio.size for c in members) / SR, 1),
            "windows": sum(len(windows(c.audio)) for c in members),
        }
    return {"per_class": per_class, "recordings": recordings}


def train(data_dir: Path, out: Path, seed: int = 0, rows_per_class: int = ROWS_PER_CLASS,
          params: dict | None = None, evaluate: bool = True, synth_recordings: int = SYNTH_RECORDINGS,
          clips: list[Clip] | None = None, log=print) -> dict:
    """Train, evaluate, export `out` (.onnx) and its card (.json); returns the card. `params`, when
    given, is the only forest candidate (else the inner split chooses among FOREST_CANDIDATES)."""
    started = time.perf_counter()
    forest_candidates = FOREST_CANDIDATES if params is None else {"given": dict(params)}
    if clips is None:
        clips = load_real(data_dir) + synthetic_clips(seed, synth_recordings)
    rows = build_rows(clips, seed, rows_per_class, log=log)
    evaluation = cross_validate(clips, rows, seed, forest_candidates, log=log) if evaluate else None
    everything = np.ones(rows.y.size, dtype=bool)
    settings = select_settings(clips, rows, np.arange(len(clips)), everything, seed, forest_candidates)
    chosen, params = settings.features, settings.params
    log(f"train: {chosen}/{settings.forest} (inner split of all recordings: {settings.inner_scores}), "
        f"thresholds {settings.thresholds}")
    forest = make_forest(seed, params)
    forest.fit(_masked(rows.X, column_mask(CANDIDATES[chosen])), rows.y)
    ood = ood_statistics(rows, everything)
    onnx_bytes = export_onnx(forest, features.N_FEATURES)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onnx_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    n_nodes = int(sum(t.tree_.node_count for t in forest.estimators_))
    card = {
        "name": "noise_classifier",
        "format": "onnx",
        "onnx_file": out.name,
        "sha256": sha,
        "size_bytes": len(onnx_bytes),
        "classes": list(CLASSES),
        "n_features": features.N_FEATURES,
        "input": {"name": "features", "type": "float32", "shape": [None, features.N_FEATURES]},
        "outputs": {"label": "int64 index into classes", "probabilities": "float32 [N, n_classes], classes order"},
        "features": features.feature_spec(),
        "window_s": WINDOW_S,
        "hop_s": HOP_S,
        "model": {"type": "sklearn.ensemble.RandomForestClassifier", "random_state": seed,
                  "hyper_parameters": params, "total_nodes": n_nodes,
                  "onnx_opsets": ONNX_OPSETS},
        "training": {
            "command": "python -m models.train",
            "seed": seed,
            "data": data_summary(clips),
            "rows": int(rows.y.size),
            "clean_windows": int(rows.clean.sum()),
            "rows_per_class": {c: int(np.sum(rows.y == i)) for i, c in enumerate(CLASSES)},
            "augmentation": AUGMENTATION,
            "augmentation_params": {k: list(v) if isinstance(v, tuple) else v for k, v in AUG_PARAMS.items()},
            "synthetic": (f"{synth_recordings} seeded white recordings (Gaussian, every third uniform) and "
                          f"{synth_recordings} pink (FFT 1/f shaping, Kellet filter, Voss-McCartney in turn), "
                          f"{SYNTH_SECONDS:g} s each, -40..-12 dBFS"),
            "feature_set": {"chosen": chosen, "left_out_groups": list(CANDIDATES[chosen]),
                            "inner_split_balanced_accuracy": settings.inner_scores,
                            "candidates": {k: list(v) for k, v in CANDIDATES.items()}},
            "forest": {"chosen": settings.forest, "candidates": forest_candidates},
            "thresholds": {"chosen": settings.thresholds,
                           "rules": {k: list(v) if isinstance(v, tuple) else v for k, v in THRESHOLD_RULES.items()},
                           "note": ("chosen on the inner split of all recordings; config/default.yaml's "
                                    "classifier.confidence_threshold and unknown_* carry these values")},
            "data_notes": DATA_NOTES,
        },
        "evaluation": evaluation,
        "ood": ood,
    }
    import sklearn

    card["model"]["versions"] = {"scikit-learn": sklearn.__version__, "numpy": np.__version__}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    log(f"train: wrote {out} ({len(onnx_bytes) / 1e6:.2f} MB, sha256 {sha[:12]}) and {out.with_suffix('.json').name} "
        f"in {time.perf_counter() - started:.0f} s")
    return card


AUGMENTATION = [
    "EQ (p=0.8): high-pass 20-300 Hz (p=0.5), low-pass 3.5-7.5 kHz (p=0.4), 1-3 peaking filters +-6 dB "
    "100 Hz-6 kHz, low shelf 100-400 Hz and high shelf 2-5 kHz +-6 dB (p=0.5 each); white/pink: +-3 dB, "
    "high-pass <= 100 Hz, low-pass >= 6.5 kHz (p=0.2)",
    "room (p=0.3, not white/pink): half the time a seeded shoebox room by the image-source method "
    "(pyroomacoustics; 40 rooms 3-12 x 3-10 x 2.4-4 m, RT60 0.15-0.8 s, reflection order <= 12), else a synthetic "
    "exponentially decaying noise impulse response, RT60 0.15-0.7 s, direct-to-reverberant 0-10 dB",
    "second source (p=0.5) 12-30 dB below (white/pink 15-30 dB): a clip of another class (60%), brown noise "
    "(20%), pink noise (10%) or a 45-130 Hz hum with 4 harmonics (10%)",
    "spectral tilt (p=0.5, not white/pink): a first-order low-pass at 500-4000 Hz (highs down) or, half the "
    "time, a first-order high-pass at 50-400 Hz (lows down), corner log-uniform -- microphone, mounting and "
    "phone-recorder colouring",
    "microphone self-noise (p=0.5): white 35-60 dB below",
    "gain -40..+6 dB",
    "slow gain swell (p=0.5, not white/pink): 2-8 dB sinusoidal at 0.1-0.6 Hz (a vehicle passing, people "
    "moving closer), then clipping at full scale and 16-bit quantisation",
    "speed and pitch (p=0.5, not white/pink): playback 0.9-1.1x by polyphase resampling",
    "windows start at a random offset 0-0.5 s",
]
DATA_NOTES = (
    "The real data are few and narrow: traffic is two street recordings from Berlin/Potsdam, office two short "
    "SSE library ambiences (movement/walla and small objects; no typing, printers or air conditioning), "
    "construction is ESC-10 chainsaw only (no jackhammer, drills or hammering) and cafe one SSE recording. "
    "The model recognises noise like these; other sources of the same names (a jackhammer, an open-plan "
    "office with HVAC) are outside what it was shown."
)


def summarise(card: dict) -> str:
    ev = card.get("evaluation")
    lines = [f"model      {card['onnx_file']}  {card['size_bytes'] / 1e6:.2f} MB  sha256 {card['sha256'][:16]}",
             f"features   {card['training']['feature_set']['chosen']}, forest {card['training']['forest']['chosen']}",
             f"thresholds {card['training']['thresholds']['chosen']}"]
    if ev:
        unk = ev["unknown"]
        lines += [
            f"leave-one-source-out ({ev['folds']} folds)",
            f"  real recordings   accuracy {ev['real_accuracy']:.3f}  balanced {ev['real_balanced_accuracy']:.3f}  "
            f"({ev['real_windows']} windows); per clip {ev['real_clip_accuracy']:.3f} ({ev['real_clips']} clips)",
            f"  synthetic white/pink  {ev['synthetic_accuracy']:.3f}",
            "  per class (windows / clips): " + ", ".join(
                f"{c} {ev['accuracy_per_class'][c]:.3f}/{ev['clip_accuracy_per_class'][c]:.3f}" for c in CLASSES),
            f"  unknown: {unk['rate_real']:.3f} of real windows, {unk['rate_synthetic']:.3f} of synthetic; "
            f"accuracy of the answered real windows {unk['accuracy_of_answered_real']}",
            f"  calibration (real windows): expected calibration error {ev['calibration']['expected_calibration_error_real']:.3f}",
            "confusion (rows true, cols predicted): " + " ".join(c[:5] for c in CLASSES),
        ]
        for name, row in zip(CLASSES, ev["confusion_matrix"]["all"]):
            lines.append(f"  {name:<12} " + " ".join(f"{v:5d}" for v in row))
        lines.append("per recording:")
        for rec, v in ev["per_recording"].items():
            if not rec.startswith("synth"):
                lines.append(f"  {rec:<32} {v['class']:<12} {v['accuracy']:.3f}  unknown {v['unknown_rate']:.2f}  "
                             f"{v['features']}/{v['forest']}  {v['predicted']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"noise data directory (default {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="ONNX file to write; the card goes beside it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-class", type=int, default=ROWS_PER_CLASS)
    parser.add_argument("--no-eval", action="store_true", help="skip the grouped cross-validation")
    args = parser.parse_args(argv)
    card = train(args.data, args.out, seed=args.seed, rows_per_class=args.rows_per_class, evaluate=not args.no_eval)
    print(summarise(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
