"""The noise-classifier model and its card: what a model must be for this device to run it.

A model is an ONNX file with a JSON card beside it (``noise_classifier.onnx`` +
``noise_classifier.json``, written by `models/train.py`). The card names the model's sha256,
its classes and the feature set it was trained on. Both processes verify a model the same
way: the runtime before it classifies with it (`device.core.classifier`), the cloud agent
before it installs a model update (`cloud_sync.jobs`), so a model the runtime would refuse is
never swapped in.

The feature set's identity (`FEATURE_VERSION`, `N_FEATURES`) lives here because it is the
contract between a trained model and the device's feature code: `device.core.features`
computes exactly this many values of this version, and checks so at import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.contract.config import NOISE_CLASSES
from device.contract.errors import UserError

FEATURE_VERSION = 3  # 2: + spectral flux (mean, std, p90); 3: + modulation, comodulation, onsets, tonality
N_FEATURES = 149


class ModelError(UserError):
    """The classifier model or its card is missing, corrupt or does not fit this device."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def load_card(model_path: str | Path) -> dict[str, Any]:
    """The card beside `model_path`, checked for the keys and classes this device needs."""
    path = card_path(model_path)
    if not path.exists():
        raise ModelError(f"{path}: model card not found (it must sit beside {Path(model_path).name})")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: model card is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model card must be a JSON object")
    for key, kind in (("classes", list), ("n_features", int), ("sha256", str)):
        if not isinstance(card.get(key), kind) or isinstance(card.get(key), bool):
            raise ModelError(f"{path}: model card has no valid '{key}'")
    classes = card["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ModelError(f"{path}: 'classes' must be distinct non-empty names, got {classes!r}")
    unknown = [c for c in classes if c not in NOISE_CLASSES]
    if unknown:
        raise ModelError(f"{path}: classes {', '.join(unknown)} have no controller preset "
                         f"(known: {', '.join(NOISE_CLASSES)})")
    if "feature_ablation" in card:
        check_feature_ablation(card["feature_ablation"], card, path)
    return card


ABLATION_KEY = "feature_ablation"


def check_feature_ablation(entry: Any, card: dict[str, Any], path: Path | str) -> None:
    """The card's ``feature_ablation`` entry (`models/ablation.py`'s figures): the command that
    made them and its date, the feature groups (names of this card's features), and one row per
    variant with the groups it left out and accuracies in [0, 1] for the card's classes."""
    where = f"{path}: model card's '{ABLATION_KEY}'"
    if not isinstance(entry, dict):
        raise ModelError(f"{where} must be an object")
    for key in ("command", "date", "protocol", "metric"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ModelError(f"{where} has no '{key}' text")
    groups = entry.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise ModelError(f"{where} has no 'groups' object")
    spec = card.get("features")
    names = set(spec.get("names", [])) if isinstance(spec, dict) else set()
    for group, members in groups.items():
        if not isinstance(members, list) or not members or (names and not set(members) <= names):
            raise ModelError(f"{where}: group '{group}' must list features of this card, got {members!r}")
    variants = entry.get("variants")
    if not isinstance(variants, list) or not variants:
        raise ModelError(f"{where} has no 'variants' list")
    for i, row in enumerate(variants):
        if not isinstance(row, dict) or not isinstance(row.get("variant"), str):
            raise ModelError(f"{where}: variant {i} has no 'variant' name")
        left_out = row.get("left_out")
        if not isinstance(left_out, list) or not all(isinstance(g, str) and g in groups for g in left_out):
            raise ModelError(f"{where}: variant '{row['variant']}' leaves out {left_out!r}, not groups of "
                             f"{', '.join(groups)}")
        per_class = row.get("per_class")
        if not isinstance(per_class, dict) or set(per_class) != set(card["classes"]):
            raise ModelError(f"{where}: variant '{row['variant']}' needs 'per_class' for the classes "
                             f"{', '.join(card['classes'])}")
        for key, value in [("real_windows", row.get("real_windows")), ("real_balanced", row.get("real_balanced")),
                           *per_class.items()]:
            if not _is_fraction(value):
                raise ModelError(f"{where}: variant '{row['variant']}' {key} = {value!r}, not an accuracy in [0, 1]")


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0


def check_card_fits(card: dict[str, Any], model_sha256: str, shown_as: str) -> None:
    """`card` describes the model with `model_sha256` and the features this device computes."""
    if card["sha256"].lower() != model_sha256.lower():
        raise ModelError(f"{shown_as}: sha256 {model_sha256[:12]}... does not match its card "
                         f"({card['sha256'][:12]}...); the model or the card was changed or corrupted")
    if card["n_features"] != N_FEATURES:
        raise ModelError(f"{shown_as}: model takes {card['n_features']} features, this device computes {N_FEATURES}")
    spec = card.get("features")
    version = spec.get("version") if isinstance(spec, dict) else None
    if version is not None and version != FEATURE_VERSION:
        raise ModelError(f"{shown_as}: model was trained on feature version {version}, this device computes "
                         f"version {FEATURE_VERSION}")


@dataclass
class VerifiedModel:
    """A model that passed every check and loads: its card, digest and an open session."""

    path: Path
    card: dict[str, Any]
    sha256: str
    session: Any
    input_name: str


def open_session(data: bytes, n_classes: int, shown_as: str) -> tuple[Any, str]:
    """An onnxruntime session of `data`, single-threaded, proven by one inference on a zero
    feature vector that gives one probability per class."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a required dependency
        raise ModelError(f"{shown_as}: onnxruntime is not installed ({exc})") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1   # the audio thread keeps its core
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(f"{shown_as}: not a valid ONNX model ({reason})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{shown_as}: model has {len(inputs)} inputs, expected 1 feature tensor")
    input_name = inputs[0].name
    width = inputs[0].shape[-1] if inputs[0].shape else None
    if isinstance(width, int) and width != N_FEATURES:
        raise ModelError(f"{shown_as}: model takes {width} features, this device computes {N_FEATURES}")
    names = [o.name for o in session.get_outputs()]
    if "probabilities" not in names:
        raise ModelError(f"{shown_as}: model has no 'probabilities' output (outputs: {', '.join(names)})")
    try:
        probe = session.run(["probabilities"], {input_name: np.zeros((1, N_FEATURES), np.float32)})[0]
    except Exception as exc:
        raise ModelError(f"{shown_as}: model fails on a feature vector ({str(exc).splitlines()[0][:160]})") from None
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[1] != n_classes:
        raise ModelError(f"{shown_as}: model gives {probe.shape[-1] if probe.ndim else 0} class probabilities, "
                         f"its card lists {n_classes} classes")
    return session, input_name


def verify_model(model_path: str | Path, card: dict[str, Any] | None = None) -> VerifiedModel:
    """Everything the runtime checks before it classifies with `model_path`: the file, its card
    (or `card`, already loaded, e.g. a downloaded one), the digest, the features and a test
    inference. Raises ModelError with one line naming the file."""
    path = Path(model_path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX model")
    card = load_card(path) if card is None else card
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model ({exc.__class__.__name__})") from None
    digest = sha256_of(data)
    check_card_fits(card, digest, str(path))
    session, input_name = open_session(data, len(card["classes"]), str(path))
    return VerifiedModel(path, card, digest, session, input_name)
