"""Train the noise classifier: Random Forest on `device.core.features`, exported to ONNX with a model card.

    python -m models.train [--data DIR] [--out models/noise_classifier.onnx] [--seed 0] [--quick]

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
* a room: convolution with a synthetic exponentially decaying impulse response (RT60
  0.15-0.7 s, direct-to-reverberant ratio 0-10 dB);
* a second source at low level (12-30 dB below): a clip of another class, or synthetic
  brown/pink/white noise, or a hum;
* microphone self-noise (white, 35-60 dB below), a gain of -40..+6 dB;
* a slow gain swell (recordings only): 2-8 dB at 0.1-0.6 Hz, as a vehicle passing or people
  moving nearer; then clipping at full scale and 16-bit quantisation.

`AUG_PARAMS` holds the probabilities and ranges (copied into the model card); `models/ablation.py`
measures variants of them, and of the features and forest, under the same grouped CV.

Copies per clip are chosen so that each class gets about the same number of training rows.

Evaluation is grouped by SOURCE RECORDING, never by clip or window: in each of the 5 folds the
test recordings (and every augmented row built from them, including as mixed-in background)
are absent from training. Traffic (2 Berlin recordings), office (2 SSE recordings) and
construction (17 ESC-10 chainsaw recordings, split by ESC-10's own folds, which keep a
freesound source together) are tested on recordings the model has never heard. Cafe has ONE
recording, so leave-one-recording-out is impossible: it is split by time into 5 blocks of
consecutive clips with a guard gap of one clip (4 s) on each side, and reported separately --
that figure says the model recognises other moments of the same cafe, not other cafes. The
synthetic white/pink are held out by generator seed.

The final model is trained on everything and written with its card (classes, feature spec,
data summary and attribution, hyper-parameters, evaluation, sha256 of the ONNX file).
Deterministic: the same command and data give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
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
N_FOLDS = 5

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
ROWS_PER_CLASS = 2400        # target training rows per class after augmentation
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
    fold: int = -1
    guard: set[str] = field(default_factory=set)   # clips excluded from training when this one is tested


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
    "mix_p": 0.5,           # probability of a second source at low level
    "mix_snr_db": (12.0, 30.0),
    "tilt_p": 0.5,          # probability of a spectral tilt (microphone / mounting colouring)
    "tilt_lowpass_hz": (500.0, 4000.0),   # first-order low-pass corner (highs down, log-uniform) ...
    "tilt_highpass_hz": (50.0, 400.0),    # ... or, half the time, first-order high-pass corner (lows down)
    "swell_p": 0.5,         # probability of a slow gain swell (passing vehicles, people moving)
    "swell_db": (2.0, 8.0),
    "swell_hz": (0.1, 0.6),
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
    if rng.random() < p["eq_p"]:
        x = random_eq(x, rng, gentle, p["highpass_max_hz"])
    if p["tilt_p"] and not gentle and rng.random() < p["tilt_p"]:
        lowpass = rng.random() < 0.5
        lo, hi = p["tilt_lowpass_hz"] if lowpass else p["tilt_highpass_hz"]
        fc = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        x = scipy.signal.sosfilt(scipy.signal.butter(1, fc, btype="lowpass" if lowpass else "highpass", fs=SR,
                                                     output="sos"), x)
    if not gentle and rng.random() < p["room_p"]:
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


def build_rows(clips: list[Clip], seed: int, rows_per_class: int, log=print) -> Rows:
    X, y, idx, deps, clean = [], [], [], [], []
    windows_per_class = {c: sum(len(windows(k.audio)) for k in clips if k.label == c) for c in CLASSES}
    real_pool = [c for c in clips if not c.synthetic]
    for i, clip in enumerate(clips):
        for w in windows(clip.audio):
            X.append(features.feature_vector(w)); y.append(CLASSES.index(clip.label))
            idx.append(i); deps.append(frozenset({clip.key})); clean.append(True)
        have = windows_per_class[clip.label]
        copies = max(1, int(round(rows_per_class / max(have, 1)))) if have else 0
        for c in range(copies):
            rng = np.random.default_rng([seed, 11, i, c])
            audio, used = augment(clip, rng, real_pool)
            for w in windows(audio, offset=int(rng.integers(0, int(HOP_S * SR)))):
                X.append(features.feature_vector(w)); y.append(CLASSES.index(clip.label))
                idx.append(i); deps.append(frozenset(used)); clean.append(False)
    log(f"train: {len(X)} rows ({int(np.sum(clean))} clean windows) from {len(clips)} clips")
    return Rows(np.array(X, dtype=np.float32), np.array(y), np.array(idx), deps, np.array(clean))


# -- folds -------------------------------------------------------------------------------------

def assign_folds(clips: list[Clip], n_folds: int = N_FOLDS) -> dict[str, object]:
    """Give every clip a test fold, by recording; single-recording classes by time block with a guard."""
    by_recording: dict[str, list[Clip]] = {}
    for clip in clips:
        by_recording.setdefault(clip.recording, []).append(clip)
    by_class: dict[str, list[str]] = {}
    for rec, members in sorted(by_recording.items()):
        by_class.setdefault(members[0].label, []).append(rec)
    notes = {}
    for label, recordings in by_class.items():
        if len(recordings) == 1:
            members = sorted(by_recording[recordings[0]], key=lambda c: c.order)
            blocks = np.array_split(np.arange(len(members)), n_folds)
            for b, block in enumerate(blocks):
                for j in block:
                    members[j].fold = b
                    neighbours = {members[k].key for k in (block[0] - 1, block[-1] + 1) if 0 <= k < len(members)}
                    members[j].guard = neighbours
            notes[label] = (f"one source recording ({recordings[0]}): split by time into {n_folds} blocks of "
                            f"consecutive clips, one clip (~{members[0].audio.size / SR:.0f} s) on each side of the "
                            "test block left out of training as a guard gap")
            continue
        if label == "construction":
            # ESC-10 folds keep each freesound source in one fold: fold n -> our fold n-1.
            for rec in recordings:
                m = re.match(r"esc10_(\d+)-", rec)
                fold = (int(m.group(1)) - 1) % n_folds if m else zlib.crc32(rec.encode()) % n_folds
                for clip in by_recording[rec]:
                    clip.fold = fold
            notes[label] = f"{len(recordings)} source recordings, held out whole (ESC-10 folds 1-5)"
            continue
        start = {"traffic": 0, "office": 2}.get(label, 0)
        for r, rec in enumerate(recordings):
            for clip in by_recording[rec]:
                clip.fold = (start + r) % n_folds
        kind = "synthetic seeds" if by_recording[recordings[0]][0].synthetic else "source recordings"
        notes[label] = f"{len(recordings)} {kind}, each held out whole"
    return notes


# -- model -------------------------------------------------------------------------------------

def make_forest(seed: int, params: dict | None = None, n_jobs: int = 2):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **(params or FOREST_PARAMS))


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


def cross_validate(clips: list[Clip], rows: Rows, seed: int, params: dict, log=print) -> dict:
    keys = np.array([c.key for c in clips])
    folds = np.array([c.fold for c in clips])
    y_pred = np.full(rows.y.size, -1)
    proba = np.zeros((rows.y.size, len(CLASSES)))
    tested = np.zeros(rows.y.size, dtype=bool)
    for fold in range(N_FOLDS):
        test_clips = set(keys[folds == fold])
        excluded = set(test_clips)
        for c in clips:
            if c.fold == fold:
                excluded |= c.guard
        train = np.array([not (d & excluded) for d in rows.deps])
        test = rows.clean & np.isin(rows.clip, np.flatnonzero(folds == fold))
        if not test.any():
            continue
        forest = make_forest(seed, params)
        forest.fit(rows.X[train], rows.y[train])
        fold_proba = np.zeros((int(test.sum()), len(CLASSES)))
        fold_proba[:, forest.classes_] = forest.predict_proba(rows.X[test])
        proba[test] = fold_proba
        y_pred[test] = np.argmax(proba[test], axis=1)
        tested |= test
        log(f"train: fold {fold}: {int(train.sum())} training rows, {int(test.sum())} test windows, "
            f"accuracy {np.mean(y_pred[test] == rows.y[test]):.3f}")
    y_true = rows.y[tested]
    pred = y_pred[tested]
    clip_of = rows.clip[tested]
    is_real = np.array([not clips[i].synthetic for i in clip_of])
    labels = np.array([clips[i].label for i in clip_of])
    held_out = is_real & (labels != "cafe")
    conf = _confusion(y_true, pred)
    conf_real = _confusion(y_true[is_real], pred[is_real])
    per_recording = {}
    for rec in sorted({clips[i].recording for i in clip_of}):
        mask = np.array([clips[i].recording == rec for i in clip_of])
        per_recording[rec] = {
            "class": clips[clip_of[mask][0]].label,
            "windows": int(mask.sum()),
            "accuracy": _accuracy(y_true[mask], pred[mask]),
            "predicted": {CLASSES[k]: int(v) for k, v in zip(*np.unique(pred[mask], return_counts=True))},
        }
    # File-level: mean probability over a clip's windows, as `anc-device classify` does for a file.
    clip_true, clip_pred = [], []
    for i in np.unique(clip_of):
        if clips[i].synthetic:
            continue
        mask = rows.clean & tested & (rows.clip == i)
        clip_true.append(CLASSES.index(clips[i].label))
        clip_pred.append(int(np.argmax(proba[mask].mean(axis=0))))
    real_per_class = {c: _accuracy(y_true[is_real & (labels == c)], pred[is_real & (labels == c)])
                      for c in REAL_CLASSES}
    return {
        "method": (f"{N_FOLDS}-fold cross-validation grouped by source recording: the test recordings, and "
                   "every augmented row built from them (also as mixed-in background), are absent from "
                   "training; evaluation on the clean 2 s windows (0.5 s hop)"),
        "real_accuracy": _accuracy(y_true[is_real], pred[is_real]),
        "real_balanced_accuracy": round(float(np.nanmean([v for v in real_per_class.values() if v is not None])), 4),
        "real_accuracy_per_class": real_per_class,
        "held_out_recordings_accuracy": _accuracy(y_true[held_out], pred[held_out]),
        "held_out_recordings_note": ("traffic, office and construction windows, each tested with its whole "
                                     "source recording unseen in training"),
        "cafe_time_block_accuracy": _accuracy(y_true[labels == "cafe"], pred[labels == "cafe"]),
        "cafe_note": ("cafe has one source recording: tested on time blocks of it with a 4 s guard gap; this "
                      "measures other moments of the same cafe (same room, microphone and crowd), not other "
                      "cafes, so it is optimistic"),
        "real_clip_accuracy": _accuracy(np.array(clip_true), np.array(clip_pred)),
        "real_clips": len(clip_true),
        "clip_note": ("file-level: the mean probability over the windows of each 4-5 s clip (what `anc-device "
                      "classify` reports for a file)"),
        "synthetic_accuracy": _accuracy(y_true[~is_real], pred[~is_real]),
        "overall_accuracy": _accuracy(y_true, pred),
        "windows": int(tested.sum()),
        "real_windows": int(is_real.sum()),
        "per_class": _per_class(conf),
        "confusion_matrix": {"rows_true_cols_predicted": list(CLASSES), "all": conf.tolist(),
                             "real_only": conf_real.tolist()},
        "per_recording": per_recording,
        "selection_note": SELECTION_NOTE,
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
    """Train, evaluate, export `out` (.onnx) and its card (.json); returns the card."""
    started = time.perf_counter()
    params = dict(FOREST_PARAMS if params is None else params)
    if clips is None:
        clips = load_real(data_dir) + synthetic_clips(seed, synth_recordings)
    fold_notes = assign_folds(clips)
    rows = build_rows(clips, seed, rows_per_class, log=log)
    evaluation = cross_validate(clips, rows, seed, params, log=log) if evaluate else None
    forest = make_forest(seed, params)
    forest.fit(rows.X, rows.y)
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
            "folds": fold_notes,
            "data_notes": DATA_NOTES,
        },
        "evaluation": evaluation,
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
    "room (p=0.3, not white/pink): synthetic exponentially decaying noise impulse response, RT60 0.15-0.7 s, "
    "direct-to-reverberant 0-10 dB",
    "second source (p=0.5) 12-30 dB below (white/pink 15-30 dB): a clip of another class (60%), brown noise "
    "(20%), pink noise (10%) or a 45-130 Hz hum with 4 harmonics (10%)",
    "spectral tilt (p=0.5, not white/pink): a first-order low-pass at 500-4000 Hz (highs down) or, half the "
    "time, a first-order high-pass at 50-400 Hz (lows down), corner log-uniform -- microphone, mounting and "
    "phone-recorder colouring",
    "microphone self-noise (p=0.5): white 35-60 dB below",
    "gain -40..+6 dB",
    "slow gain swell (p=0.5, not white/pink): 2-8 dB sinusoidal at 0.1-0.6 Hz (a vehicle passing, people "
    "moving closer), then clipping at full scale and 16-bit quantisation",
    "windows start at a random offset 0-0.5 s",
]
SELECTION_NOTE = (
    "The features (spectral flux added), the augmentation (spectral tilt, slow gain swell) and max_features=5 "
    "were chosen by comparing about 30 variants on these same folds (models/ablation.py, each averaged over 3 "
    "forest seeds; docs/classifier.md), so this figure is optimistic by an unknown amount. With two recordings "
    "of traffic and of office no recording is left over for a separate validation split: a nested grouped CV "
    "choosing max_features inside each fold (models/ablation.py --nested, 124 version-1 features, same "
    "augmentation) scored the same as the unnested choice (0.913 vs 0.912), but its inner folds lose whole "
    "classes (both traffic recordings out at once), so it selects little."
)
DATA_NOTES = (
    "The real data are few and narrow: traffic is two street recordings from Berlin/Potsdam, office two short "
    "SSE library ambiences (movement/walla and small objects; no typing, printers or air conditioning), "
    "construction is ESC-10 chainsaw only (no jackhammer, drills or hammering) and cafe one SSE recording. "
    "The model recognises noise like these; other sources of the same names (a jackhammer, an open-plan "
    "office with HVAC) are outside what it was shown."
)


def summarise(card: dict) -> str:
    ev = card.get("evaluation")
    lines = [f"model      {card['onnx_file']}  {card['size_bytes'] / 1e6:.2f} MB  sha256 {card['sha256'][:16]}"]
    if ev:
        lines += [
            f"real recordings (grouped CV)      accuracy {ev['real_accuracy']:.3f}  "
            f"balanced {ev['real_balanced_accuracy']:.3f}  ({ev['real_windows']} windows)",
            f"  held-out recordings (traffic, office, construction)  {ev['held_out_recordings_accuracy']:.3f}",
            f"  cafe (one recording, time blocks + guard)           {ev['cafe_time_block_accuracy']:.3f}",
            f"  per clip (mean over a 4-5 s clip's windows)         {ev['real_clip_accuracy']:.3f}  ({ev['real_clips']} clips)",
            f"synthetic white/pink (held-out seeds)  {ev['synthetic_accuracy']:.3f}",
            "per class  precision  recall  support",
        ]
        for name, v in ev["per_class"].items():
            p = "   -  " if v["precision"] is None else f"{v['precision']:.3f}"
            r = "   -  " if v["recall"] is None else f"{v['recall']:.3f}"
            lines.append(f"  {name:<12} {p}    {r}  {v['support']}")
        lines.append("confusion (rows true, cols predicted): " + " ".join(c[:5] for c in CLASSES))
        for name, row in zip(CLASSES, ev["confusion_matrix"]["all"]):
            lines.append(f"  {name:<12} " + " ".join(f"{v:5d}" for v in row))
        lines.append("per recording:")
        for rec, v in ev["per_recording"].items():
            if not rec.startswith("synth"):
                lines.append(f"  {rec:<32} {v['class']:<12} {v['accuracy']:.3f}  {v['predicted']}")
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
