"""`anc-device classify FILE...`: the noise class of audio files, with every class probability.

Each file is read with soundfile (WAV, FLAC, OGG; any rate, first channel of multichannel
files), resampled to 16 kHz with scipy.signal.resample_poly, cut into the configured windows
(`classifier.window_s`, hop `classifier.hop_s`; a file shorter than one window is one window)
and classified window by window as the device would, with the device's `unknown` rule
(`classifier.unknown_*`). The file's probabilities are the mean over its windows; its class is
`unknown` when more than half of its windows are unknown, otherwise the most probable class.

Every readable file is classified; a file that cannot be (missing, not audio, silent, too
short) gets one line on stderr naming it, and the exit status is 2 if any file was bad.
Output piped into a command that stops reading (`| head`) ends quietly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from device.contract.config import load_config
from device.contract.errors import UserError

NAME = "classify"
HELP = "classify the noise in audio files (class, confidence and every class probability)"


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="WAV/FLAC/OGG file, any sample rate")
    parser.add_argument("--json", action="store_true", help="one JSON object per file and line")
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--model", help="ONNX model (its .json card beside it); default: classifier.model of the config")


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """First channel of an audio file as float64 at `sample_rate`, or UserError saying why not."""
    from simulator.scenes import read_mono, resample

    mono, rate, _ = read_mono(path)
    return resample(mono, rate, sample_rate)


def classify_audio(classifier, audio: np.ndarray, window_s: float, hop_s: float, rule=None) -> dict:
    from device.core.classifier import UNKNOWN, window_level_dbfs
    from device.core.features import SAMPLE_RATE, feature_vector

    size = int(round(window_s * SAMPLE_RATE))
    hop = max(1, int(round(hop_s * SAMPLE_RATE)))
    if audio.size <= size:
        starts = [0]
    else:
        starts = list(range(0, audio.size - size + 1, hop))
    detections = [classifier.classify_features(feature_vector(audio[s:s + size]),
                                               window_level_dbfs(audio[s:s + size]), rule) for s in starts]
    probs = np.mean([[d.probabilities[name] for name in classifier.classes] for d in detections], axis=0)
    k = int(np.argmax(probs))
    unknown = sum(d.noise_type == UNKNOWN for d in detections)
    scores = [d.ood_score for d in detections if d.ood_score is not None]
    reasons = [d.unknown_reason for d in detections if d.unknown_reason]
    return {
        "class": UNKNOWN if unknown * 2 > len(detections) else classifier.classes[k],
        "confidence": float(probs[k]),
        "probabilities": {name: float(p) for name, p in zip(classifier.classes, probs)},
        "windows": len(starts),
        "unknown_windows": int(unknown),
        "ood_score": float(np.median(scores)) if scores else None,
        "unknown_reason": max(set(reasons), key=reasons.count) if reasons else None,
        "duration_s": audio.size / SAMPLE_RATE,
    }


def _classify_file(classifier, path: Path, cfg, rule) -> dict:
    from device.core.features import MIN_SAMPLES, SAMPLE_RATE

    audio = read_audio(path, SAMPLE_RATE)
    if audio.size < MIN_SAMPLES:
        raise UserError(f"{path}: {audio.size / SAMPLE_RATE * 1e3:.0f} ms of audio; at least "
                        f"{MIN_SAMPLES / SAMPLE_RATE * 1e3:.0f} ms is needed")
    if not np.any(audio):
        raise UserError(f"{path}: digital silence, there is no noise to classify")
    return classify_audio(classifier, audio, cfg.classifier.window_s, cfg.classifier.hop_s, rule)


def _line(path: Path, result: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps({
            "file": str(path),
            "class": result["class"],
            "confidence": round(result["confidence"], 4),
            "probabilities": {k: round(v, 4) for k, v in result["probabilities"].items()},
            "windows": result["windows"],
            "unknown_windows": result["unknown_windows"],
            "ood_score": None if result["ood_score"] is None else round(result["ood_score"], 3),
            "duration_s": round(result["duration_s"], 3),
        })
    probs = "  ".join(f"{k} {v:.2f}" for k, v in result["probabilities"].items())
    windows = f"{result['windows']} window{'s' if result['windows'] != 1 else ''}"
    if result["class"] == "unknown":
        why = f"; {result['unknown_reason']}" if result["unknown_reason"] else ""
        return (f"{path}: unknown ({result['unknown_windows']} of {windows} unlike every class{why})  "
                f"{probs}")
    return f"{path}: {result['class']} (confidence {result['confidence']:.2f}, {windows})  {probs}"


def run(args) -> int:
    from device.core.classifier import NoiseClassifier, UnknownRule

    cfg = load_config(args.config)
    classifier = NoiseClassifier(args.model or cfg.classifier.model)
    rule = UnknownRule.from_config(cfg.classifier)
    bad = 0
    try:
        for name in args.files:
            path = Path(name)
            try:
                result = _classify_file(classifier, path, cfg, rule)
            except UserError as exc:
                bad += 1
                print(f"anc-device: error: {exc}", file=sys.stderr, flush=True)
                continue
            print(_line(path, result, args.json), flush=True)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2 if bad else 0
