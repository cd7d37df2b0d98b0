"""The noise classifier: ONNX export, the shipped model, refusals, hysteresis, `anc-device classify`.

Independent of ../shared/data: the models trained here use seeded synthetic signals.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.core import features as F
from device.contract.model_card import ModelError
from device.core.classifier import ClassTracker, Detection, NoiseClassifier
from device.cli import main
from device.contract.config import NOISE_CLASSES
from simulator.scenes import generate_scene

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "noise_classifier.onnx"

pytest.importorskip("onnxruntime")


def _windows(x, size, hop):
    return [x[s:s + size] for s in range(0, x.size - size + 1, hop)]


def _dataset(seeds, seconds=4.0):
    """Feature rows of 1 s windows of the simulator's six generated scene types."""
    X, y = [], []
    for seed in seeds:
        for k, kind in enumerate(NOISE_CLASSES):
            x = generate_scene(kind, seconds, F.SAMPLE_RATE, seed=seed)
            for w in _windows(x, F.SAMPLE_RATE, F.SAMPLE_RATE // 2):
                X.append(F.feature_vector(w))
                y.append(k)
    return np.array(X, dtype=np.float32), np.array(y)


@pytest.fixture(scope="module")
def small_forest():
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from models.train import make_forest

    X, y = _dataset([0, 1])
    forest = make_forest(0, {"n_estimators": 25, "max_depth": 8, "min_samples_leaf": 2}, n_jobs=1)
    forest.fit(X, y)
    return forest, X


@pytest.fixture(scope="module")
def small_model(small_forest, tmp_path_factory):
    """A small exported model with a valid card, in its own directory."""
    import hashlib

    from models.train import CLASSES, export_onnx

    forest, _ = small_forest
    folder = tmp_path_factory.mktemp("model")
    data = export_onnx(forest, F.N_FEATURES)
    path = folder / "m.onnx"
    path.write_bytes(data)
    card = {"classes": list(CLASSES), "n_features": F.N_FEATURES, "sha256": hashlib.sha256(data).hexdigest(),
            "features": F.feature_spec(), "window_s": 1.0}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_onnx_agrees_with_sklearn(small_forest, small_model):
    import onnxruntime

    forest, X_train = small_forest
    X_test, _ = _dataset([5, 6])
    session = onnxruntime.InferenceSession(small_model.read_bytes(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]  # no ZipMap
    for X in (X_test, X_train):
        label, proba = session.run(None, {"features": X})
        assert isinstance(proba, np.ndarray) and proba.shape == (X.shape[0], len(NOISE_CLASSES))
        np.testing.assert_array_equal(label, forest.predict(X))
        np.testing.assert_array_equal(np.argmax(proba, axis=1), forest.predict(X))
        np.testing.assert_allclose(proba, forest.predict_proba(X), atol=1e-5)


def test_classifier_wraps_the_session(small_forest, small_model):
    forest, _ = small_forest
    clf = NoiseClassifier(small_model)
    assert clf.classes == tuple(NOISE_CLASSES)
    x = generate_scene("pink", 1.0, F.SAMPLE_RATE, seed=9)
    det = clf.classify(x)
    expected = forest.predict_proba(F.feature_vector(x)[None, :])[0]
    assert det.noise_type == NOISE_CLASSES[int(np.argmax(expected))]
    assert det.confidence == pytest.approx(expected.max(), abs=1e-5)
    assert list(det.probabilities) == list(NOISE_CLASSES)
    assert sum(det.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_training_is_deterministic_and_its_model_is_accepted(tmp_path):
    pytest.importorskip("sklearn")
    from models import train

    def tiny_clips():
        clips = []
        for label in NOISE_CLASSES:
            for r in range(2):
                for order in range(2):
                    audio = generate_scene(label, 3.0, F.SAMPLE_RATE, seed=10 * r + order) * 0.3
                    clips.append(train.Clip(f"{label}_{r}_{order}", label, f"{label}_{r}", order, audio,
                                            licence="generated", attribution="tests", synthetic=label in ("white", "pink")))
        return clips

    params = {"n_estimators": 10, "max_depth": 6, "min_samples_leaf": 2}
    cards = [train.train(tmp_path, tmp_path / f"run{i}" / "m.onnx", seed=3, rows_per_class=30, params=params,
                         clips=tiny_clips(), log=lambda *a: None) for i in range(2)]
    first, second = (tmp_path / f"run{i}" / "m.onnx" for i in range(2))
    assert first.read_bytes() == second.read_bytes()
    assert cards[0] == cards[1]
    assert cards[0]["evaluation"]["windows"] == 12 * 2 * 3
    clf = NoiseClassifier(first)
    assert clf.classes == tuple(NOISE_CLASSES) and clf.window_s == train.WINDOW_S


def test_augmentation_is_seeded_and_tilt_and_swell_do_what_they_say():
    pytest.importorskip("scipy")
    import scipy.signal

    from models import train

    rng0 = np.random.default_rng(0)
    audio = rng0.standard_normal(4 * F.SAMPLE_RATE) * 0.05
    clip = train.Clip("traffic_0_0", "traffic", "traffic_0", 0, audio)
    other = train.Clip("office_0_0", "office", "office_0", 0, rng0.standard_normal(4 * F.SAMPLE_RATE) * 0.01)
    a, deps_a = train.augment(clip, np.random.default_rng([1, 2]), [clip, other])
    b, deps_b = train.augment(clip, np.random.default_rng([1, 2]), [clip, other])
    np.testing.assert_array_equal(a, b)
    assert deps_a == deps_b and "traffic_0_0" in deps_a and a.size == audio.size

    only = {**train.AUG_PARAMS, "eq_p": 0.0, "room_p": 0.0, "mix_p": 0.0, "swell_p": 0.0}
    # Tilt only: each copy has either its highs (first-order low-pass) or its lows (high-pass)
    # turned down by several dB relative to the other end; both kinds occur.
    tilt = {**only, "tilt_p": 1.0}
    f, p_in = scipy.signal.welch(audio, F.SAMPLE_RATE, nperseg=1024)
    low, high = (f > 30) & (f < 60), (f > 6000) & (f < 7500)
    kinds = set()
    for seed in range(12):
        tilted, _ = train.augment(clip, np.random.default_rng(seed), [clip], tilt)
        _, p_out = scipy.signal.welch(tilted, F.SAMPLE_RATE, nperseg=1024)
        gain_db = 10 * np.log10(p_out / p_in)
        diff = gain_db[high].mean() - gain_db[low].mean()
        assert abs(diff) > 3.0, diff
        kinds.add(diff > 0)
    assert kinds == {True, False}

    # Swell only: the short-term level of white noise now moves by several dB.
    swell = {**only, "tilt_p": 0.0, "swell_p": 1.0}
    swelled, _ = train.augment(clip, np.random.default_rng(3), [clip], swell)
    frames = swelled[: swelled.size // 1600 * 1600].reshape(-1, 1600)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1))
    assert np.ptp(level) > 3.0
    # White/pink are never tilted or swelled (they must stay white and pink).
    white = train.Clip("w", "white", "w", 0, audio, synthetic=True)
    plain, _ = train.augment(white, np.random.default_rng(3), [clip], {**only, "tilt_p": 1.0, "swell_p": 1.0})
    frames = plain[: plain.size // 1600 * 1600].reshape(-1, 1600)
    assert np.ptp(10 * np.log10(np.mean(frames ** 2, axis=1))) < 1.5


# -- the shipped model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    return NoiseClassifier(SHIPPED)


def test_shipped_model_is_accepted_and_small(shipped):
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert shipped.classes == tuple(NOISE_CLASSES) == tuple(card["classes"])
    assert card["n_features"] == F.N_FEATURES and card["features"] == json.loads(json.dumps(F.feature_spec()))
    assert SHIPPED.stat().st_size < 5 * 2**20
    ev = card["evaluation"]
    assert {"real_accuracy", "per_class", "confusion_matrix", "per_recording"} <= ev.keys()
    assert all(r["attribution"] for r in card["training"]["data"]["recordings"].values())


def _pink(rng, n):
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=float)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n)


@pytest.mark.parametrize("level_dbfs", [-50.0, -30.0, -10.0])
def test_shipped_model_recognises_unseen_white_and_pink(shipped, level_dbfs):
    rng = np.random.default_rng(20240917)  # not a training seed
    size = int(shipped.window_s * F.SAMPLE_RATE)
    for kind, make in (("white", lambda n: rng.standard_normal(n)), ("pink", lambda n: _pink(rng, n))):
        for _ in range(3):
            x = make(size)
            x *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x * x))
            det = shipped.classify(x)
            assert det.noise_type == kind, (kind, det)
            assert det.confidence > 0.5


# -- refusals --------------------------------------------------------------------------------------

def _copy(model: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.name
    shutil.copy(model, target)
    shutil.copy(model.with_suffix(".json"), target.with_suffix(".json"))
    return target


def _edit_card(path: Path, **changes):
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def _refused(path, match):
    with pytest.raises(ModelError, match=match) as info:
        NoiseClassifier(path)
    message = str(info.value)
    assert "\n" not in message and path.stem in message
    return message


def test_missing_model_and_card_are_refused(small_model, tmp_path):
    _refused(tmp_path / "nothing.onnx", "model file not found")
    path = _copy(small_model, tmp_path / "nocard")
    path.with_suffix(".json").unlink()
    _refused(path, "model card not found")
    path = _copy(small_model, tmp_path / "badcard")
    path.with_suffix(".json").write_text("{not json")
    _refused(path, "not valid JSON")


def test_corrupt_bytes_are_refused(small_model, tmp_path):
    import hashlib

    path = _copy(small_model, tmp_path)
    data = bytearray(path.read_bytes())
    data[10:400] = b"\xff" * 390
    path.write_bytes(bytes(data))
    _refused(path, "sha256 .* does not match its card")
    # Even with a card that matches the corrupt bytes, they are not an ONNX model.
    _edit_card(path, sha256=hashlib.sha256(bytes(data)).hexdigest())
    _refused(path, "not a valid ONNX model")


def test_sha_mismatch_is_refused(small_model, tmp_path):
    path = _copy(small_model, tmp_path)
    _edit_card(path, sha256="0" * 64)
    _refused(path, "sha256 .* does not match")


def test_wrong_feature_or_class_count_is_refused(small_model, small_forest, tmp_path):
    import hashlib

    from models.train import export_onnx, make_forest

    path = _copy(small_model, tmp_path / "card")
    _edit_card(path, n_features=F.N_FEATURES - 4)
    _refused(path, f"takes {F.N_FEATURES - 4} features, this device computes {F.N_FEATURES}")

    # An ONNX file made for 10 features, with a card that claims the right number.
    rng = np.random.default_rng(0)
    forest = make_forest(0, {"n_estimators": 3, "max_depth": 3}, n_jobs=1)
    forest.fit(rng.standard_normal((60, 10)).astype(np.float32), np.arange(60) % 6)
    data = export_onnx(forest, 10)
    path = _copy(small_model, tmp_path / "ten")
    path.write_bytes(data)
    _edit_card(path, sha256=hashlib.sha256(data).hexdigest())
    _refused(path, f"takes 10 features, this device computes {F.N_FEATURES}")

    path = _copy(small_model, tmp_path / "classes")
    _edit_card(path, classes=list(NOISE_CLASSES[:5]))
    _refused(path, "gives 6 class probabilities, its card lists 5 classes")
    _edit_card(path, classes=[*NOISE_CLASSES[:5], "jackhammer"])
    _refused(path, "jackhammer have no controller preset")


def test_runtime_runs_on_without_a_model(tmp_path, cfg):
    from device.core.session import load_classifier

    broken = cfg.replace("classifier", model=str(tmp_path / "missing.onnx"))
    classifier, reason = load_classifier(broken)
    assert classifier is None and "model file not found" in reason


# -- hysteresis -----------------------------------------------------------------------------------

def _det(name, confidence=0.9):
    return Detection(name, confidence, {name: confidence})


def test_tracker_needs_consecutive_confident_wins():
    tracker = ClassTracker(confidence_threshold=0.6, hysteresis_windows=3)
    assert tracker.current is None
    assert [tracker.update(_det("traffic")) for _ in range(3)] == [None, None, "traffic"]
    assert tracker.current == "traffic"
    # Alternating challengers never win; neither does a low-confidence streak.
    for name in ["cafe", "office", "cafe", "office", "cafe", "traffic", "cafe", "cafe"]:
        assert tracker.update(_det(name)) is None
    for _ in range(10):
        assert tracker.update(_det("office", 0.5)) is None
    # A low-confidence window breaks a streak.
    assert tracker.update(_det("cafe")) is None
    assert tracker.update(_det("cafe")) is None
    assert tracker.update(_det("cafe", 0.3)) is None
    assert tracker.update(_det("cafe")) is None
    assert tracker.update(_det("cafe")) is None
    assert tracker.update(_det("cafe")) == "cafe"
    assert tracker.current == "cafe"
    assert tracker.update(_det("cafe")) is None


def test_tracker_single_window_and_threshold_bounds():
    tracker = ClassTracker(0.0, 1)
    assert tracker.update(_det("pink", 0.2)) == "pink"
    assert tracker.update(_det("pink")) is None
    assert tracker.update(_det("white", 0.1)) == "white"
    with pytest.raises(ValueError):
        ClassTracker(1.5, 1)
    with pytest.raises(ValueError):
        ClassTracker(0.5, 0)


def test_tracker_does_not_flicker_on_a_noisy_stream():
    # One window in five is wrong (spread over three classes): the raw class changes ~130 times.
    rng = np.random.default_rng(0)
    tracker = ClassTracker(0.6, 3)
    switches, raw_changes, previous = [], 0, None
    for t in range(400):
        true = "traffic" if t < 200 else "cafe"
        name = true if rng.random() < 0.8 else str(rng.choice(["office", "construction", "pink"]))
        raw_changes += name != previous
        previous = name
        if tracker.update(_det(name, float(rng.uniform(0.4, 1.0)))) is not None:
            switches.append((t, tracker.current))
    assert raw_changes > 100
    assert len(switches) <= 4 and switches[0][1] == "traffic"
    assert switches[-1][1] == "cafe" and 200 < switches[-1][0] < 215


# -- anc-device classify -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classify")
    rng = np.random.default_rng(77)
    white = rng.standard_normal((48000 * 3, 2)) * 0.05            # stereo, 48 kHz
    white[:, 1] = 0.0
    soundfile.write(str(folder / "white.wav"), white, 48000)
    pink = _pink(rng, 22050 * 3)
    soundfile.write(str(folder / "pink.flac"), pink / np.max(np.abs(pink)) * 0.3, 22050)
    (folder / "garbage.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    soundfile.write(str(folder / "silence.wav"), np.zeros(16000), 16000)
    soundfile.write(str(folder / "short.wav"), rng.standard_normal(100) * 0.1, 16000)
    return folder


def test_classify_json_lines(audio_files, capsys):
    code = main(["classify", str(audio_files / "white.wav"), str(audio_files / "pink.flac"), "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 2
    results = [json.loads(line) for line in out]
    assert [r["class"] for r in results] == ["white", "pink"]
    for r, name in zip(results, ["white.wav", "pink.flac"]):
        assert {"file", "class", "confidence", "probabilities"} <= r.keys()
        assert r["file"].endswith(name)
        assert list(r["probabilities"]) == list(NOISE_CLASSES)
        assert r["confidence"] == max(r["probabilities"].values())
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_classify_text_lists_every_probability(audio_files, capsys):
    assert main(["classify", str(audio_files / "white.wav")]) == 0
    out = capsys.readouterr().out
    assert "white (confidence" in out
    assert all(f"{name} 0." in out or f"{name} 1." in out for name in NOISE_CLASSES)


@pytest.mark.parametrize("name, message", [
    ("missing.wav", "file not found"),
    ("garbage.wav", "not a readable audio file"),
    ("silence.wav", "digital silence"),
    ("short.wav", "at least"),
])
def test_classify_bad_files(audio_files, capsys, name, message):
    assert main(["classify", str(audio_files / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and name in err[0]


def test_classify_bad_model(audio_files, capsys, tmp_path):
    assert main(["classify", str(audio_files / "white.wav"), "--model", str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model file not found" in err[0]
    config = tmp_path / "c.yaml"
    config.write_text(f"classifier:\n  model: {tmp_path / 'other.onnx'}\n")
    assert main(["classify", str(audio_files / "white.wav"), "--config", str(config)]) == 2
    assert "other.onnx: model file not found" in capsys.readouterr().err
