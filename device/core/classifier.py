"""Noise classification on the device: the ONNX Random Forest, its model card, and hysteresis.

`NoiseClassifier("models/noise_classifier.onnx")` loads the model and the card beside it
(``noise_classifier.json``, written by `models/train.py`) and refuses, with one line naming the
file and the problem, a model that is missing or corrupt, whose sha256 is not the card's, or
whose features or classes are not what this device computes and has presets for. The runtime
then carries on without classification (see `device.core.session.load_classifier`).

`classify` runs on the worker thread, never in the audio callback: features of the window
(`device.core.features.feature_vector`) plus one onnxruntime call, single-threaded so the audio
thread keeps its core.

`UnknownRule` says when a window is unlike every class the model was trained on: its feature
vector is too far from the training rows of every class (the card's ``ood`` statistics: per
class, per feature mean and standard deviation), its level lies outside the levels of the
training windows, or no class reaches a minimum probability. The distance is the RMS of the
``OOD_TOP_FEATURES`` largest z-scores to the nearest class, so a few features far outside every
class (the tonality and modulation of an engine hum, a pure tone) count even when the other
features look ordinary. Such a window is reported as ``unknown`` (its probabilities and score
kept), and the worker keeps the neutral controller settings for it.

`ClassTracker` turns the stream of per-window detections into a current class that does not
flicker: a class must win ``hysteresis_windows`` consecutive windows, each with at least
``confidence_threshold`` probability, before it replaces the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.core import features
from device.contract.model_card import ModelError, verify_model


UNKNOWN = "unknown"
OOD_TOP_FEATURES = 10   # the distance is the RMS z-score over this many most deviating features


@dataclass
class Detection:
    noise_type: str
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    ood_score: float | None = None     # RMS of the largest z-scores to the nearest class's training rows
    level_dbfs: float | None = None    # RMS level of the window before the features normalise it
    unknown_reason: str | None = None  # why the window is `unknown` (None when it is a class)


@dataclass(frozen=True)
class UnknownRule:
    """When a window is `unknown` (config `classifier.unknown_*`)."""

    max_distance: float           # distance (top-feature RMS z-score) to the nearest class above which: unknown
    min_probability: float        # most probable class below this probability: unknown
    level_margin_db: float        # dB beyond the training windows' level range: unknown

    @classmethod
    def from_config(cls, section) -> "UnknownRule":
        return cls(float(section.unknown_distance), float(section.unknown_min_probability),
                   float(section.unknown_level_margin_db))


class OodStatistics:
    """Per-class feature statistics of the training rows (the card's ``ood`` entry)."""

    def __init__(self, ood: dict, classes: tuple[str, ...], where: str):
        try:
            mean = np.asarray([ood["mean"][c] for c in classes], dtype=np.float64)
            std = np.asarray([ood["std"][c] for c in classes], dtype=np.float64)
            level = [float(v) for v in ood["level_dbfs"]]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{where}: model card's 'ood' entry is malformed") from None
        if mean.shape != (len(classes), features.N_FEATURES) or std.shape != mean.shape or len(level) != 2:
            raise ModelError(f"{where}: model card's 'ood' statistics do not fit {len(classes)} classes x "
                             f"{features.N_FEATURES} features")
        self.mean = mean
        self.inv_std = 1.0 / np.maximum(std, 1e-6)
        self.level_dbfs = (level[0], level[1])

    def score(self, vector: np.ndarray) -> float:
        z = (np.asarray(vector, dtype=np.float64)[None, :] - self.mean) * self.inv_std
        top = np.partition(z * z, -OOD_TOP_FEATURES, axis=1)[:, -OOD_TOP_FEATURES:]
        return float(np.sqrt(np.min(np.mean(top, axis=1))))


def window_level_dbfs(audio: np.ndarray) -> float:
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    # A dot product rather than mean(x * x): no window-sized temporary, the same value to rounding.
    mean_square = float(np.dot(x, x)) / x.size if x.size else 0.0
    return 10.0 * float(np.log10(max(mean_square, 1e-20)))


class NoiseClassifier:
    """An ONNX noise classifier verified against its model card."""

    def __init__(self, model_path: str | Path):
        model = verify_model(model_path)
        self.path = model.path
        self.card = model.card
        self.classes: tuple[str, ...] = tuple(model.card["classes"])
        self.window_s = float(model.card.get("window_s", 1.0))
        self.sha256 = model.sha256
        self.ood = (OodStatistics(model.card["ood"], self.classes, str(self.path.with_suffix(".json")))
                    if "ood" in model.card else None)
        self._session = model.session
        self._input_name = model.input_name
        self._outputs = ["probabilities"]
        self._input = np.zeros((1, features.N_FEATURES), dtype=np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities of (N, N_FEATURES) feature vectors, classes in card order."""
        X = np.ascontiguousarray(X, dtype=np.float32).reshape(-1, features.N_FEATURES)
        return np.asarray(self._session.run(self._outputs, {self._input_name: X})[0], dtype=np.float64)

    def classify_features(self, vector: np.ndarray, level_dbfs: float | None = None,
                          rule: UnknownRule | None = None) -> Detection:
        """The class of one feature vector; with a `rule`, `unknown` when the window is unlike every class."""
        if not np.may_share_memory(vector, self._input):  # `classify` computed it in place
            self._input[0] = vector
        probs = self._session.run(self._outputs, {self._input_name: self._input})[0][0]
        k = int(np.argmax(probs))
        score = self.ood.score(vector) if self.ood is not None else None
        detection = Detection(self.classes[k], float(probs[k]),
                              {name: float(p) for name, p in zip(self.classes, probs)},
                              ood_score=score, level_dbfs=level_dbfs)
        if rule is not None:
            detection.unknown_reason = self.unknown_reason(detection, rule)
            if detection.unknown_reason is not None:
                detection.noise_type = UNKNOWN
        return detection

    def unknown_reason(self, detection: Detection, rule: UnknownRule) -> str | None:
        """Why `detection` is unlike every class under `rule`, or None if it is one of them."""
        if detection.ood_score is not None and detection.ood_score > rule.max_distance:
            return f"features {detection.ood_score:.1f} sd from every class (limit {rule.max_distance:g})"
        if self.ood is not None and detection.level_dbfs is not None:
            low, high = self.ood.level_dbfs
            if not low - rule.level_margin_db <= detection.level_dbfs <= high + rule.level_margin_db:
                return (f"level {detection.level_dbfs:.1f} dBFS outside the training levels "
                        f"{low:.1f}..{high:.1f} dBFS (margin {rule.level_margin_db:g} dB)")
        if detection.confidence < rule.min_probability:
            return f"no class above probability {rule.min_probability:g} (best {detection.confidence:.2f})"
        return None

    def classify(self, audio_16k: np.ndarray, rule: UnknownRule | None = None) -> Detection:
        """Classify one window of mono 16 kHz audio (the device uses `window_s` of the reference mic)."""
        # The features go straight into the ONNX input row (no copy, no allocation per window).
        vector = features.feature_vector(audio_16k, features.SAMPLE_RATE, out=self._input[0])
        return self.classify_features(vector, window_level_dbfs(audio_16k), rule)


class ClassTracker:
    """Current noise class with a confidence threshold and hysteresis, so it never flickers.

    A detection counts for its class only if its confidence is at least ``confidence_threshold``
    (an `unknown` detection always counts for `unknown`: it is the answer, not a weak guess);
    a class replaces the current one (or becomes the first) after ``hysteresis_windows``
    consecutive counting wins. A detection of the current class, or one below the threshold,
    resets the challenger's count.
    """

    def __init__(self, confidence_threshold: float, hysteresis_windows: int):
        if not 0.0 <= confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold}")
        if int(hysteresis_windows) < 1:
            raise ValueError(f"hysteresis_windows must be at least 1, got {hysteresis_windows}")
        self.confidence_threshold = float(confidence_threshold)
        self.hysteresis_windows = int(hysteresis_windows)
        self.current: str | None = None
        self._candidate: str | None = None
        self._count = 0

    def reset(self) -> None:
        self.current, self._candidate, self._count = None, None, 0

    def update(self, detection: Detection) -> str | None:
        """Feed one detection; returns the new current class when it switches, else None."""
        weak = detection.confidence < self.confidence_threshold and detection.noise_type != UNKNOWN
        if weak or detection.noise_type == self.current:
            self._candidate, self._count = None, 0
            return None
        if detection.noise_type == self._candidate:
            self._count += 1
        else:
            self._candidate, self._count = detection.noise_type, 1
        if self._count >= self.hysteresis_windows:
            self.current = detection.noise_type
            self._candidate, self._count = None, 0
            return self.current
        return None
