"""Ablation of the noise classifier's feature groups under the leave-one-source-out protocol of `models.train`.

    OMP_NUM_THREADS=1 python -m models.ablation [--data DIR] [--seed 0] [--rows-per-class N] [--forest NAME] [GROUP...]

Builds the training rows of `models.train` once (same clips, augmentation and seeds), then for
the full feature set and for each feature group of `models.train.FEATURE_GROUPS` left out (all
groups, or those named), runs the outer leave-one-source-out evaluation with that fixed
feature set (no inner selection, so the difference is the group's alone). One line per
variant: accuracy on the real recordings' windows, balanced over the real classes, on the
generated white/pink, and per class. A group whose removal RAISES the accuracy on recordings
the model never heard carries the recording (gain, microphone, EQ) more than the sound.

These are outer-fold figures: they describe the features, and are not used to choose the
shipped set (the inner split in `models.train.select_settings` does that). The forest is one of
`models.train.FOREST_CANDIDATES` (`--forest`, default the previous version's settings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from models import train as T


def loso_fixed(clips: list[T.Clip], rows: T.Rows, keep: np.ndarray, seed: int, params: dict) -> dict:
    """Outer leave-one-source-out accuracy with a fixed feature mask."""
    keys = np.array([c.key for c in clips])
    group = np.array([T.source_group(c) for c in clips])
    y_pred = np.full(rows.y.size, -1)
    tested = np.zeros(rows.y.size, dtype=bool)
    for name in sorted(set(group)):
        test_clips = np.flatnonzero(group == name)
        train = T._train_rows(rows, set(keys[test_clips]))
        test = rows.clean & np.isin(rows.clip, test_clips)
        forest = T.make_forest(seed, params)
        forest.fit(T._masked(rows.X[train], keep), rows.y[train])
        y_pred[test] = forest.classes_[np.argmax(T.predict_proba(forest, T._masked(rows.X[test], keep)), axis=1)]
        tested |= test
    y_true, pred = rows.y[tested], y_pred[tested]
    labels = np.array([clips[i].label for i in rows.clip[tested]])
    real = np.isin(labels, T.REAL_CLASSES)
    per_class = {c: float(np.mean(pred[labels == c] == T.CLASSES.index(c))) for c in T.CLASSES}
    return {"real": float(np.mean(pred[real] == y_true[real])),
            "real_balanced": float(np.mean([per_class[c] for c in T.REAL_CLASSES])),
            "synthetic": float(np.mean(pred[~real] == y_true[~real])),
            "per_class": per_class}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"groups to leave out (default: all of "
                        f"{', '.join(T.FEATURE_GROUPS)})")
    parser.add_argument("--data", type=Path, default=T.DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-class", type=int, default=T.ROWS_PER_CLASS)
    parser.add_argument("--forest", choices=list(T.FOREST_CANDIDATES), default="as_before")
    args = parser.parse_args(argv)
    unknown = [g for g in args.groups if g not in T.FEATURE_GROUPS]
    if unknown:
        parser.error(f"unknown feature group {', '.join(unknown)} (known: {', '.join(T.FEATURE_GROUPS)})")
    clips = T.load_real(args.data) + T.synthetic_clips(args.seed)
    rows = T.build_rows(clips, args.seed, args.rows_per_class, log=lambda *a: None)
    params = dict(T.FOREST_CANDIDATES[args.forest])
    print(f"{'variant':<24} {'real':>6} {'bal.':>6} {'synth':>6}  " + " ".join(f"{c[:6]:>6}" for c in T.CLASSES))
    for name in ["all"] + [f"-{g}" for g in (args.groups or T.FEATURE_GROUPS)]:
        dropped = () if name == "all" else (name[1:],)
        r = loso_fixed(clips, rows, T.column_mask(dropped), args.seed, params)
        print(f"{name:<24} {r['real']:6.3f} {r['real_balanced']:6.3f} {r['synthetic']:6.3f}  "
              + " ".join(f"{r['per_class'][c]:6.3f}" for c in T.CLASSES), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
