"""Ablations of the noise classifier under the same grouped cross-validation as `models.train`.

    OMP_NUM_THREADS=1 python -m models.ablation [--cache DIR] [--jobs 2] [--seed 0] [--forest-seeds 3] VARIANT...
    OMP_NUM_THREADS=1 python -m models.ablation --nested VARIANT...   # candidates chosen inside each fold

A VARIANT is a string of space-separated parts: ``aug:NAME`` (an `AUG_VARIANTS` entry, relative to
the version-1 augmentation), ``blocks:a,b`` (feature blocks, see `select`), ``drop:NAME,...``
(columns of the shipped block), ``rf:key=value,...`` (forest settings), ``fseed:N`` (one forest
seed instead of the mean over --forest-seeds). The shipped model is
``"aug:tilt_swell blocks:shipped,flux rf:max_features=5"``.

Builds the training rows of `models.train` (same clips, folds, augmentation copies and seeds)
once per augmentation setting and caches a SUPERSET of candidate features per row
(`candidate_features`: the shipped `device.core.features.feature_vector` plus extra blocks), then
runs `models.train.cross_validate` on column subsets and forest settings. Each variant prints
one line: real-recording accuracy, held-out-recording accuracy, cafe, per-class recall.

This is an exploration tool: its figures pick the shipped configuration, so the figure reported
for the shipped model is selected on the same folds (see docs/classifier.md, "What was tried").
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from device.core import features as F
from models import train as T

# -- candidate feature blocks ----------------------------------------------------------------

BANDS_HZ = ((20, 150), (150, 400), (400, 1000), (1000, 2500), (2500, 5000), (5000, 8000))
FRAME_RATE = F.SAMPLE_RATE / F.HOP_LENGTH  # 62.5 frames/s


def _mod_fractions(env: np.ndarray) -> np.ndarray:
    """Fractions of an envelope's (mean removed) power in 0.5-2, 2-8, 8-20 Hz."""
    e = env - env.mean()
    spec = np.abs(np.fft.rfft(e * np.hanning(e.size))) ** 2
    f = np.fft.rfftfreq(e.size, 1.0 / FRAME_RATE)
    total = spec[f >= 0.5].sum() + 1e-12
    return np.array([spec[(f >= lo) & (f < hi)].sum() / total for lo, hi in ((0.5, 2), (2, 8), (8, 20))])


def candidate_features(window: np.ndarray) -> dict[str, np.ndarray]:
    """Named blocks of candidate features of one 16 kHz window (superset of the shipped vector)."""
    x = np.asarray(window, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x * x)))
    if rms > F.SILENCE_RMS:
        x = x * (10.0 ** (F.TARGET_RMS_DBFS / 20.0) / rms)
    power = F.power_spectrogram(x)
    log_mel = F._log_mel(power)
    coeffs = log_mel @ F._dct_matrix()
    freqs = np.fft.rfftfreq(F.N_FFT, 1.0 / F.SAMPLE_RATE)
    level_db = 10.0 * np.log10(power.sum(axis=1) + F.AMIN)
    # "shipped": the 124 values of feature version 1 (the version-2 vector adds the "flux" block)
    out: dict[str, np.ndarray] = {"shipped": F.feature_vector(window)[:124]}
    p = np.percentile(coeffs[:, :13], [10, 50, 90], axis=0)
    out["mfcc_pct"] = np.concatenate([p[0], p[1], p[2]])
    band_db = np.stack([10 * np.log10(power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) + F.AMIN)
                        for lo, hi in BANDS_HZ], axis=1)
    rel = band_db - level_db[:, None]
    out["band"] = np.concatenate([rel.mean(axis=0), band_db.std(axis=0)])
    tot = power.sum(axis=1) + F.AMIN
    centroid = (power @ freqs) / tot
    cum = np.cumsum(power, axis=1) / tot[:, None]
    rolloff = freqs[np.minimum(np.argmax(cum >= 0.85, axis=1), freqs.size - 1)]
    mean_spec_db = 10 * np.log10(power.mean(axis=0)[1:] + F.AMIN)
    slope = np.polyfit(np.log2(freqs[1:]), mean_spec_db, 1)[0]
    out["spectral"] = np.array([centroid.mean() / 1000, centroid.std() / 1000, rolloff.mean() / 1000, slope])
    lv = level_db - level_db.mean()
    sd = lv.std() + 1e-9
    q5, q50, q95 = np.percentile(level_db, [5, 50, 95])
    dl = np.diff(level_db)
    # onsets: the level rises by > 6 dB within 3 frames (48 ms)
    rise = level_db[3:] - level_db[:-3]
    onsets = np.count_nonzero((rise[1:] > 6) & (rise[:-1] <= 6)) / (level_db.size / FRAME_RATE)
    out["level"] = np.array([np.mean(lv ** 3) / sd ** 3, q95 - q50, q50 - q5, dl.std(), onsets])
    out["mod"] = _mod_fractions(level_db)
    band_mod = []
    for lo, hi in ((20, 300), (300, 2000), (2000, 8000)):
        env = 10 * np.log10(power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) + F.AMIN)
        band_mod.append(_mod_fractions(env)[1])
        band_mod.append(env.std())
    out["band_mod"] = np.array(band_mod)
    flux = np.sqrt(np.mean(np.diff(log_mel, axis=0) ** 2, axis=1))
    out["flux"] = np.array([flux.mean(), flux.std(), np.percentile(flux, 90)])
    return out


BLOCK_ORDER = ("shipped", "mfcc_pct", "band", "spectral", "level", "mod", "band_mod", "flux")


def _vector(window: np.ndarray) -> np.ndarray:
    blocks = candidate_features(window)
    return np.concatenate([blocks[k] for k in BLOCK_ORDER]).astype(np.float32)


def block_columns() -> dict[str, np.ndarray]:
    sizes = {k: v.size for k, v in candidate_features(np.random.default_rng(0).standard_normal(32000)).items()}
    cols, start = {}, 0
    for k in BLOCK_ORDER:
        cols[k] = np.arange(start, start + sizes[k])
        start += sizes[k]
    return cols


# -- rows, as models.train.build_rows but with the candidate vector and in parallel ------------

def _clip_rows(args):
    i, clip, seed, copies, pool, aug = args  # aug: augmentation parameters
    X, deps, clean = [], [], []
    for w in T.windows(clip.audio):
        X.append(_vector(w)); deps.append(frozenset({clip.key})); clean.append(True)
    for c in range(copies):
        rng = np.random.default_rng([seed, 11, i, c])
        audio, used = T.augment(clip, rng, pool, aug)
        for w in T.windows(audio, offset=int(rng.integers(0, int(T.HOP_S * T.SR)))):
            X.append(_vector(w)); deps.append(frozenset(used)); clean.append(False)
    return i, X, deps, clean


def build_rows(clips, seed, rows_per_class, aug, jobs=2):
    windows_per_class = {c: sum(len(T.windows(k.audio)) for k in clips if k.label == c) for c in T.CLASSES}
    pool = [c for c in clips if not c.synthetic]
    tasks = []
    for i, clip in enumerate(clips):
        have = windows_per_class[clip.label]
        copies = max(1, int(round(rows_per_class / max(have, 1)))) if have else 0
        tasks.append((i, clip, seed, copies, pool, aug))
    X, y, idx, deps, clean = [], [], [], [], []
    with ProcessPoolExecutor(jobs) as ex:
        for i, xs, ds, cs in ex.map(_clip_rows, tasks, chunksize=1):
            X += xs; deps += ds; clean += cs
            y += [T.CLASSES.index(clips[i].label)] * len(xs); idx += [i] * len(xs)
    return T.Rows(np.array(X, dtype=np.float32), np.array(y), np.array(idx), deps, np.array(clean))


def cached_rows(clips, seed, rows_per_class, aug_name, cache: Path, jobs):
    key = hashlib.sha256(json.dumps([seed, rows_per_class, aug_name, BLOCK_ORDER, T.WINDOW_S, T.HOP_S,
                                     inspect.getsource(candidate_features), aug_params(aug_name),
                                     Path(T.__file__).read_text(),
                                     Path(F.__file__).read_text()]).encode()).hexdigest()[:16]
    path = cache / f"rows_{aug_name}_{key}.npz"
    if path.exists():
        d = np.load(path, allow_pickle=True)
        return T.Rows(d["X"], d["y"], d["clip"], list(d["deps"]), d["clean"])
    rows = build_rows(clips, seed, rows_per_class, aug_params(aug_name), jobs)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=rows.X, y=rows.y, clip=rows.clip, deps=np.array(rows.deps, dtype=object), clean=rows.clean)
    return rows


# Variants are relative to the version-1 augmentation (no tilt, no swell): "default" is what the
# 124-feature model was trained with, "tilt_swell" is the shipped AUG_PARAMS.
V1_AUG = {"tilt_p": 0.0, "swell_p": 0.0}
AUG_VARIANTS = {
    "default": {},
    "hp100": {"highpass_max_hz": 100.0},
    "swell": {"swell_p": 0.5},
    "hp100_swell": {"highpass_max_hz": 100.0, "swell_p": 0.5},
    "mix_more": {"mix_p": 0.7, "mix_snr_db": (8.0, 30.0)},
    "mix_less": {"mix_p": 0.3},
    "no_room": {"room_p": 0.0},
    "room_more": {"room_p": 0.5},
    "hp500": {"highpass_max_hz": 500.0},
    "eq_always": {"eq_p": 1.0},
    "tilt": {"tilt_p": 0.5},
    "tilt_lp": {"tilt_p": 0.5, "tilt_highpass_hz": (20.0, 20.0)},  # high-pass branch a no-op 20 Hz
    "tilt_swell": {"tilt_p": 0.5, "swell_p": 0.5},
    "tilt_swell_strong": {"tilt_p": 0.8, "swell_p": 0.7},
}


def aug_params(name: str) -> dict:
    return {**T.AUG_PARAMS, **V1_AUG, **AUG_VARIANTS[name]}



# -- variants ----------------------------------------------------------------------------------

def parse_variant(spec: str) -> tuple[str, list[str], dict]:
    """'aug:default blocks:shipped,band drop:mfcc_mean_0 rf:min_samples_leaf=1,...' -> parts."""
    aug, blocks, params, drop = "default", ["shipped"], dict(T.FOREST_PARAMS), []
    for part in spec.split():
        k, _, v = part.partition(":")
        if k == "aug":
            aug = v
        elif k == "fseed":
            params["_fseed"] = int(v)
        elif k == "drop":
            drop = v.split(",")
        elif k == "blocks":
            blocks = v.split(",")
        elif k == "rf":
            for kv in v.split(","):
                name, _, val = kv.partition("=")
                params[name] = json.loads(val) if val[:1] in "0123456789[{-tfn\"" else val
                if val == "None":
                    params[name] = None
    return aug, blocks, params, drop


def select(X: np.ndarray, cols: dict[str, np.ndarray], blocks: list[str], drop: list[str]) -> np.ndarray:
    """Columns of the cached superset, plus derived blocks (channel-invariant spreads):
    mfcc_range = p90 - p10 of c0..c12, mfcc_skew = p90 + p10 - 2 p50, band_mean / band_std,
    mean_lo<k> = MFCC means 0..k-1 only, shipped_nomean = the shipped vector without MFCC means."""
    parts = []
    for b in blocks:
        if b == "mfcc_range":
            c = cols["mfcc_pct"]; parts.append(X[:, c[26:39]] - X[:, c[0:13]])
        elif b == "mfcc_skew":
            c = cols["mfcc_pct"]; parts.append(X[:, c[26:39]] + X[:, c[0:13]] - 2 * X[:, c[13:26]])
        elif b == "band_mean":
            parts.append(X[:, cols["band"][:6]])
        elif b == "band_std":
            parts.append(X[:, cols["band"][6:]])
        elif b.startswith("mean_lo"):
            parts.append(X[:, cols["shipped"][:int(b[7:])]])
        elif b == "shipped_nomean":
            parts.append(X[:, cols["shipped"][F.N_MFCC:]])
        else:
            keep = [i for i in cols[b] if not (b == "shipped" and F.FEATURE_NAMES[i - cols[b][0]] in drop)]
            parts.append(X[:, keep])
    return np.concatenate(parts, axis=1)


def _fold_split(clips, rows, folds_out: set[int], fold_test: int):
    """Training rows free of every clip (and guard clip) of `folds_out`; clean test rows of `fold_test`."""
    excluded = set()
    for c in clips:
        if c.fold in folds_out:
            excluded |= {c.key} | c.guard
    train = np.array([not (d & excluded) for d in rows.deps])
    test = rows.clean & np.isin(rows.clip, [i for i, c in enumerate(clips) if c.fold == fold_test])
    return train, test


def nested(clips, rows, seed, candidates: list[dict], log=print) -> float:
    """Grouped CV whose forest settings are chosen INSIDE each outer fold by an inner grouped CV
    over the other folds (real windows), so the outer figure is not selected on its own test set."""
    real = np.array([not c.synthetic for c in clips])
    correct = total = 0
    for f in range(T.N_FOLDS):
        scores = []
        for params in candidates:
            hit = n = 0
            for g in range(T.N_FOLDS):
                if g == f:
                    continue
                train, test = _fold_split(clips, rows, {f, g}, g)
                test &= real[rows.clip]
                forest = T.make_forest(seed, params)
                forest.fit(rows.X[train], rows.y[train])
                hit += int(np.sum(forest.classes_[np.argmax(forest.predict_proba(rows.X[test]), 1)] == rows.y[test]))
                n += int(test.sum())
            scores.append(hit / max(n, 1))
        best = int(np.argmax(scores))
        train, test = _fold_split(clips, rows, {f}, f)
        test &= real[rows.clip]
        forest = T.make_forest(seed, candidates[best])
        forest.fit(rows.X[train], rows.y[train])
        pred = forest.classes_[np.argmax(forest.predict_proba(rows.X[test]), 1)]
        correct += int(np.sum(pred == rows.y[test])); total += int(test.sum())
        log(f"outer fold {f}: inner accuracies {[round(v, 3) for v in scores]} -> candidate {best}; "
            f"outer accuracy {np.mean(pred == rows.y[test]):.3f} ({int(test.sum())} real windows)")
    log(f"nested grouped CV, real windows: {correct / total:.3f} ({total})")
    return correct / total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "anc_ablation")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forest-seeds", type=int, default=3, help="average the CV over this many forest seeds")
    ap.add_argument("--nested", action="store_true",
                    help="nested CV: VARIANT... are candidates (same aug and blocks) chosen inside each fold")
    args = ap.parse_args(argv)
    clips = T.load_real(T.DEFAULT_DATA) + T.synthetic_clips(args.seed)
    T.assign_folds(clips)
    cols = block_columns()
    if args.nested:
        parsed = [parse_variant(v) for v in args.variants]
        aug, blocks, _, drop = parsed[0]
        rows = cached_rows(clips, args.seed, T.ROWS_PER_CLASS, aug, args.cache, args.jobs)
        sub = T.Rows(select(rows.X, cols, blocks, drop), rows.y, rows.clip, rows.deps, rows.clean)
        for i, v in enumerate(args.variants):
            print(f"candidate {i}: {v}")
        nested(clips, sub, args.seed, [p for _, _, p, _ in parsed])
        return 0
    for spec in args.variants:
        aug, blocks, params, drop = parse_variant(spec)
        rows = cached_rows(clips, args.seed, T.ROWS_PER_CLASS, aug, args.cache, args.jobs)
        Xs = select(rows.X, cols, blocks, drop)
        sub = T.Rows(Xs, rows.y, rows.clip, rows.deps, rows.clean)
        fseed = params.pop("_fseed", None)
        seeds = [fseed] if fseed is not None else list(range(args.seed, args.seed + args.forest_seeds))
        evs = [T.cross_validate(clips, sub, s, params, log=lambda *a: None) for s in seeds]
        acc = np.array([e["real_accuracy"] for e in evs])
        rec = {c: np.mean([e["real_accuracy_per_class"][c] for e in evs]) for c in T.REAL_CLASSES}
        prec = np.mean([e["per_class"]["office"]["precision"] for e in evs])
        mean = lambda k: np.mean([e[k] for e in evs])
        print(f"{acc.mean():.3f} (sd {acc.std():.3f}, {len(seeds)} forest seeds) held-out "
              f"{mean('held_out_recordings_accuracy'):.3f} cafe {mean('cafe_time_block_accuracy'):.3f} clip "
              f"{mean('real_clip_accuracy'):.3f} | recall "
              + " ".join(f"{c[:4]} {rec[c]:.2f}" for c in T.REAL_CLASSES)
              + f" | office prec {prec:.2f} | n={Xs.shape[1]} | {spec}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
