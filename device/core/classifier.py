"""Noise classification on the device: the ONNX Random Forest, its model card, and hysteresis.

`NoiseClassifier("models/noise_classifier.onnx")` loads the model and the card beside it
(``noise_classifier.json``, written by `models/train.py`) and refuses, with one line naming the
file and the problem, a model that is missing or corrupt, whose sha256 is not the card's, or
whose features or classes are not what this device computes and has presets for. The runtime
then carries on without classification (see `device.core.session.load_classifier`).

`classify` runs on the worker thread, never in the audio callback: features of the window
(`device.core.features.feature_vector`) plus one onnxruntime call, single-threaded so the audio
thread keeps its core.

`ClassTracker` turns the stream of per-window detections into a current class that does not
flicker: a class must win ``hysteresis_windows`` consecutive windows, each with at least
``confidence_threshold`` probability, before it replaces the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.core import features
from device.contract.model_card import verify_model


@dataclass
class Detection:
    noise_type: str
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)


class NoiseClassifier:
    """An ONNX noise classifier verified against its model card."""

    def __init__(self, model_path: str | Path):
        model = verify_model(model_path)
        self.path = model.path
        self.card = model.card
        self.classes: tuple[str, ...] = tuple(model.card["classes"])
        self.window_s = float(model.card.get("window_s", 1.0))
        self.sha256 = model.sha256
        self._session = model.session
        self._input_name = model.input_name
        self._outputs = ["probabilities"]
        self._input = np.zeros((1, features.N_FEATURES), dtype=np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities of (N, N_FEATURES) feature vectors, classes in card order."""
        X = np.ascontiguousarray(X, dtype=np.float32).reshape(-1, features.N_FEATURES)
        return np.asarray(self._session.run(self._outputs, {self._input_name: X})[0], dtype=np.float64)

    def classify_features(self, vector: np.ndarray) -> Detection:
        self._input[0] = vector
        probs = self._session.run(self._outputs, {self._input_name: self._input})[0][0]
        k = int(np.argmax(probs))
        return Detection(self.classes[k], float(probs[k]),
                         {name: float(p) for name, p in zip(self.classes, probs)})

    def classify(self, audio_16k: np.ndarray) -> Detection:
        """Classify one window of mono 16 kHz audio (the device uses `window_s` of the reference mic)."""
        return self.classify_features(features.feature_vector(audio_16k, features.SAMPLE_RATE))


class ClassTracker:
    """Current noise class with a confidence threshold and hysteresis, so it never flickers.

    A detection counts for its class only if its confidence is at least ``confidence_threshold``;
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
        if detection.confidence < self.confidence_threshold or detection.noise_type == self.current:
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
