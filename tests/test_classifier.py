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
from device.core.classifier import UNKNOWN, ClassTracker, Detection, NoiseClassifier, UnknownRule, window_level_dbfs
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
    assert deps_a == deps_b and "traffic_0_0" in deps_a and abs(a.size - audio.size) <= 0.12 * audio.size

    only = {**train.AUG_PARAMS, "eq_p": 0.0, "room_p": 0.0, "mix_p": 0.0, "swell_p": 0.0, "speed_p": 0.0}
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

    # Speed only: a tone played 1.1x faster is 1.1x higher and 1/1.1 as long.
    t = np.arange(4 * F.SAMPLE_RATE) / F.SAMPLE_RATE
    tone = train.Clip("t", "construction", "t", 0, 0.1 * np.sin(2 * np.pi * 500 * t))
    fast, _ = train.augment(tone, np.random.default_rng(0), [tone],
                            {**only, "tilt_p": 0.0, "speed_p": 1.0, "speed_range": (1.1, 1.1)})
    assert fast.size == pytest.approx(tone.audio.size / 1.1, rel=0.01)
    spectrum = np.abs(np.fft.rfft(fast * np.hanning(fast.size)))
    assert np.fft.rfftfreq(fast.size, 1 / F.SAMPLE_RATE)[np.argmax(spectrum)] == pytest.approx(550, abs=3)


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
    assert {"real_accuracy", "per_class", "confusion_matrix", "per_recording", "unknown", "calibration"} <= ev.keys()
    assert "leave-one-source-out" in ev["method"]
    assert all(r["attribution"] for r in card["training"]["data"]["recordings"].values())
    assert shipped.ood is not None


def test_shipped_card_carries_the_ablation_of_the_docs():
    """The card's feature ablation is the table measured in docs/classifier.md ("Ablation"), with
    its command and date, and its groups are the ones models/ablation.py leaves out."""
    from models.train import FEATURE_GROUPS

    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    ablation = card["feature_ablation"]
    assert "models.ablation" in ablation["command"] and ablation["date"].startswith("2026-")
    assert ablation["groups"] == {g: list(names) for g, names in FEATURE_GROUPS.items()}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "classifier.md").read_text()
    section = doc[doc.index("### Ablation"):doc.index("## Unknown")]
    table = [line for line in section.splitlines() if line.startswith(("| every", "| without"))]
    assert len(table) == len(ablation["variants"]) == len(FEATURE_GROUPS) + 1
    for line, row in zip(table, ablation["variants"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert row["left_out"] == ([] if cells[0].startswith("every") else [cells[0].split()[1]])
        figures = [row["real_windows"], row["real_balanced"]] + [row["per_class"][c]
                                                                 for c in ("traffic", "office", "construction", "cafe")]
        assert figures == [float(c) for c in cells[1:]]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("command"), "no 'command'"),
    (lambda a: a.update(date=""), "no 'date'"),
    (lambda a: a["variants"][1].update(left_out=["no_such_group"]), "leaves out"),
    (lambda a: a["variants"][0]["per_class"].update(cafe=1.5), "not an accuracy"),
    (lambda a: a["variants"][0]["per_class"].pop("white"), "per_class"),
    (lambda a: a["groups"].update(tonality=["no_such_feature"]), "group 'tonality'"),
])
def test_malformed_ablation_in_the_card_is_refused(tmp_path, change, message):
    path = _copy(SHIPPED, tmp_path)
    ablation = json.loads(path.with_suffix(".json").read_text())["feature_ablation"]
    change(ablation)
    _edit_card(path, feature_ablation=ablation)
    _refused(path, message)


def test_default_thresholds_are_the_ones_training_chose_on_its_inner_split(cfg):
    # The thresholds are chosen by models/train.py on the inner split (never on the held-out
    # recordings) and copied into the configuration; a retrained model must bring them along.
    chosen = json.loads(SHIPPED.with_suffix(".json").read_text())["training"]["thresholds"]["chosen"]
    assert set(chosen) == {"confidence_threshold", "unknown_distance", "unknown_min_probability",
                           "unknown_level_margin_db"}
    for key, value in chosen.items():
        assert getattr(cfg.classifier, key) == pytest.approx(value), key


def _babble(rng, n, talkers=8):
    """Speech-like babble: talkers of band-limited noise, each switched on and off at syllable rate."""
    import scipy.signal

    t = np.arange(n) / F.SAMPLE_RATE
    out = np.zeros(n)
    sos = scipy.signal.butter(4, [200, 3500], btype="bandpass", fs=F.SAMPLE_RATE, output="sos")
    for _ in range(talkers):
        voice = scipy.signal.sosfilt(sos, rng.standard_normal(n))
        syllables = np.maximum(0.0, np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))) ** 2
        out += voice * syllables
    return out


def _at(x, level_dbfs):
    return x * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(x * x))


def test_shipped_model_says_unknown_for_what_it_was_not_trained_on(shipped, cfg):
    rule = UnknownRule.from_config(cfg.classifier)
    rng = np.random.default_rng(77)
    size = int(shipped.window_s * F.SAMPLE_RATE)
    t = np.arange(4 * size) / F.SAMPLE_RATE
    low, high = shipped.ood.level_dbfs
    probes = {
        "engine hum": generate_scene("engine_hum", 4 * size / F.SAMPLE_RATE, F.SAMPLE_RATE, seed=3),
        "pure tone": _at(np.sin(2 * np.pi * 1000 * t), -20.0),
        "babble quieter than any training window": _at(_babble(rng, 4 * size), low - rule.level_margin_db - 6.0),
    }
    # Louder than any training window by more than the margin: only an overdriven microphone gets
    # there below full scale, so the babble is clipped like one, gained up until its level is past.
    assert high + rule.level_margin_db < 0.0
    babble, gain_db = _babble(rng, 4 * size), 0.0
    loud = np.clip(_at(babble, gain_db), -1.0, 1.0)
    while min(window_level_dbfs(w) for w in _windows(loud, size, size)) <= high + rule.level_margin_db:
        gain_db += 2.0
        loud = np.clip(_at(babble, gain_db), -1.0, 1.0)
    probes["overdriven babble louder than any training window"] = loud
    for name, x in probes.items():
        answers = [shipped.classify(w, rule) for w in _windows(x, size, size)]
        assert all(d.noise_type == UNKNOWN for d in answers), (name, answers)
        assert all(d.unknown_reason for d in answers)
        # Without the rule the forest still names its best guess: `unknown` is the rule's answer.
        assert shipped.classify(x[:size]).noise_type in NOISE_CLASSES


def test_shipped_model_answers_for_its_classes(shipped, cfg):
    rule = UnknownRule.from_config(cfg.classifier)
    rng = np.random.default_rng(20240917)
    size = int(shipped.window_s * F.SAMPLE_RATE)
    for kind, make in (("white", lambda n: rng.standard_normal(n)), ("pink", lambda n: _pink(rng, n))):
        det = shipped.classify(_at(make(size), -30.0), rule)
        assert det.noise_type == kind, det


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


def test_corrupt_bytes_are_refused(tmp_path):
    import hashlib

    path = _copy(SHIPPED, tmp_path)  # the shipped model: this refusal needs no training extra
    data = bytearray(path.read_bytes())
    data[10:400] = b"\xff" * 390
    path.write_bytes(bytes(data))
    _refused(path, "sha256 .* does not match its card")
    # Even with a card that matches the corrupt bytes, they are not an ONNX model.
    _edit_card(path, sha256=hashlib.sha256(bytes(data)).hexdigest())
    _refused(path, "not a valid ONNX model")


def test_sha_mismatch_is_refused(tmp_path):
    path = _copy(SHIPPED, tmp_path)
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


def test_tracker_unknown_counts_whatever_its_confidence():
    tracker = ClassTracker(0.6, 2)
    assert [tracker.update(_det("traffic")) for _ in range(2)] == [None, "traffic"]
    assert tracker.update(_det(UNKNOWN, 0.2)) is None
    assert tracker.update(_det(UNKNOWN, 0.3)) == UNKNOWN


def test_worker_keeps_neutral_settings_for_unknown_noise(cfg, headphone_estimate):
    """Presets apply for a class; `unknown` brings back the controller section's settings."""
    from device.core.engine import AncEngine
    from device.core.ringbuffer import BlockRing
    from device.core.worker import Worker

    custom = cfg.replace("presets", construction={"step_size": 0.02, "leakage": 1e-6, "intensity": 0.9},
                         white={"step_size": 0.01, "leakage": 1e-6, "intensity": 0.8})
    engine = AncEngine.from_config(custom, headphone_estimate, None, sample_rate=48000, block_size=32)
    worker = Worker(custom, BlockRing(64, 32), engine, classifier=None)
    worker._apply_preset("construction")
    assert engine.base_step_size == 0.02 and worker.preset_intensity == 0.9
    worker._apply_preset("white")
    assert engine.base_step_size == 0.01 and worker.preset_intensity == 0.8
    worker._apply_preset(UNKNOWN)
    assert engine.base_step_size == custom.controller.step_size
    assert worker.preset_intensity == 1.0


@pytest.mark.parametrize("scene", ["engine_hum", "white"])
def test_no_preset_trips_the_watchdog_on_any_scene(cfg, tmp_path, scene):
    """A wrong classification may select any preset for any noise: none may make the controller diverge."""
    from models.preset_cost import CLASS_SPECIFIC_PRESETS, measure

    # The per-class settings span the steps and intensities presets have been given (the
    # shipped presets are the neutral setting, which is measured in every row too).
    result = measure(seconds=4.0, scene_types=(scene,), presets=CLASS_SPECIFIC_PRESETS, log=lambda *a: None)
    row = result["table"][scene]
    assert set(row) == {"neutral", *NOISE_CLASSES}
    assert all(v["watchdog_trips"] == 0 for v in row.values()), row


def test_simulated_engine_hum_is_unknown_and_keeps_neutral_settings(cfg, tmp_path):
    from simulator.run import simulate
    from simulator.scenes import write_scene

    path = tmp_path / "hum.wav"
    write_scene(path, generate_scene("engine_hum", 5.0, 48000, seed=1), 48000)
    summary = simulate(path, cfg).summary
    assert summary["classifier"] == "on" and summary["detections"] > 0
    assert summary["dominant_class"] == UNKNOWN
    assert all(c["noise_type"] == UNKNOWN for c in summary["noise_classes"]), summary["noise_classes"]
    assert summary["watchdog_trips"] == 0


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


def test_classify_reports_every_bad_file_and_classifies_the_rest(audio_files, capsys):
    files = [audio_files / n for n in ("missing.wav", "white.wav", "garbage.wav", "pink.flac", "short.wav")]
    assert main(["classify", *map(str, files), "--json"]) == 2
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [Path(r["file"]).name for r in rows] == ["white.wav", "pink.flac"]
    err = captured.err.strip().splitlines()
    assert len(err) == 3
    for line, name in zip(err, ("missing.wav", "garbage.wav", "short.wav")):
        assert name in line and line.startswith("anc-device: error:")


def test_classify_reports_unknown(audio_files, tmp_path, capsys):
    t = np.arange(3 * 16000) / 16000
    soundfile.write(str(tmp_path / "tone.wav"), 0.1 * np.sin(2 * np.pi * 1000 * t), 16000)
    assert main(["classify", str(tmp_path / "tone.wav"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["class"] == UNKNOWN and row["unknown_windows"] == row["windows"]
    assert {"confidence", "probabilities", "ood_score"} <= row.keys()
    assert main(["classify", str(tmp_path / "tone.wav")]) == 0
    assert ": unknown (" in capsys.readouterr().out


def test_classify_into_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    # More output than a pipe buffers (64 KiB), so the writer meets the closed pipe.
    short = tmp_path / "w.wav"
    soundfile.write(str(short), np.random.default_rng(1).standard_normal(16000) * 0.05, 16000)
    files = [str(short)] * 600
    command = [sys.executable, "-c", "import sys; from device.cli import main; sys.exit(main(sys.argv[1:]))",
               "classify", "--json", *files]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) as proc:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        code = proc.wait()
    assert b'"class"' in first
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    assert code == 0


def test_image_source_rooms_are_seeded_and_keep_the_direct_sound_first():
    pytest.importorskip("pyroomacoustics")
    from models import train

    first = train.image_source_rooms.__wrapped__(5, count=3)
    again = train.image_source_rooms.__wrapped__(5, count=3)
    other = train.image_source_rooms.__wrapped__(6, count=3)
    assert len(first) == 3
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][: other[0].size], other[0][: first[0].size])
    for rir in first:
        assert rir.size <= int(0.8 * F.SAMPLE_RATE) and np.sum(rir * rir) == pytest.approx(1.0)
    # Applied to a click, the direct sound stays at time zero and reflections follow it.
    click = np.zeros(F.SAMPLE_RATE)
    click[0] = 1.0
    heard = train.image_source_room(click, np.random.default_rng(0), seed=5)
    assert int(np.argmax(np.abs(heard))) == 0
    assert np.sum(heard[int(0.005 * F.SAMPLE_RATE):] ** 2) > 0.01 * np.sum(heard ** 2)
