"""`anc-device classify FILE...`: the noise class of audio files, with every class probability.

Each file is read with soundfile (WAV, FLAC, OGG; any rate, first channel of multichannel
files), resampled to 16 kHz with scipy.signal.resample_poly, cut into the configured windows
(`classifier.window_s`, hop `classifier.hop_s`; a file shorter than one window is one window)
and classified window by window as the device would; the file's probabilities are the mean
over its windows and its class the most probable one.
"""

from __future__ import annotations

import json
from fractions import Fraction
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
    import soundfile
    import scipy.signal

    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an audio file")
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as exc:
        reason = str(exc).split(":")[-1].strip() or exc.__class__.__name__
        raise UserError(f"{path}: not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: audio file has no samples")
    mono = data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise UserError(f"{path}: {int(np.count_nonzero(~np.isfinite(mono)))} samples are NaN or infinite")
    if rate != sample_rate:
        ratio = Fraction(sample_rate, int(rate)).limit_denominator(1000)
        mono = scipy.signal.resample_poly(mono, ratio.numerator, ratio.denominator)
    return mono


def classify_audio(classifier, audio: np.ndarray, window_s: float, hop_s: float) -> dict:
    from device.core.features import SAMPLE_RATE, feature_vector

    size = int(round(window_s * SAMPLE_RATE))
    hop = max(1, int(round(hop_s * SAMPLE_RATE)))
    if audio.size <= size:
        starts = [0]
    else:
        starts = list(range(0, audio.size - size + 1, hop))
    vectors = np.stack([feature_vector(audio[s:s + size]) for s in starts])
    probs = classifier.predict_proba(vectors).mean(axis=0)
    k = int(np.argmax(probs))
    return {
        "class": classifier.classes[k],
        "confidence": float(probs[k]),
        "probabilities": {name: float(p) for name, p in zip(classifier.classes, probs)},
        "windows": len(starts),
        "duration_s": audio.size / SAMPLE_RATE,
    }


def run(args) -> int:
    from device.core.classifier import NoiseClassifier
    from device.core.features import MIN_SAMPLES, SAMPLE_RATE

    cfg = load_config(args.config)
    classifier = NoiseClassifier(args.model or cfg.classifier.model)
    for name in args.files:
        path = Path(name)
        audio = read_audio(path, SAMPLE_RATE)
        if audio.size < MIN_SAMPLES:
            raise UserError(f"{path}: {audio.size / SAMPLE_RATE * 1e3:.0f} ms of audio; at least "
                            f"{MIN_SAMPLES / SAMPLE_RATE * 1e3:.0f} ms is needed")
        if not np.any(audio):
            raise UserError(f"{path}: digital silence, there is no noise to classify")
        result = classify_audio(classifier, audio, cfg.classifier.window_s, cfg.classifier.hop_s)
        if args.json:
            print(json.dumps({
                "file": str(path),
                "class": result["class"],
                "confidence": round(result["confidence"], 4),
                "probabilities": {k: round(v, 4) for k, v in result["probabilities"].items()},
                "windows": result["windows"],
                "duration_s": round(result["duration_s"], 3),
            }), flush=True)
        else:
            probs = "  ".join(f"{k} {v:.2f}" for k, v in result["probabilities"].items())
            print(f"{path}: {result['class']} (confidence {result['confidence']:.2f}, "
                  f"{result['windows']} window{'s' if result['windows'] != 1 else ''})  {probs}", flush=True)
    return 0
