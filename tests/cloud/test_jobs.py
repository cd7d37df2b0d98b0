"""Model-update job: model and card verified, atomic, readable by the runtime, rollback, status reported."""

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_sync.jobs import JobFailed, JobsAgent, install_model, rollback
from device.core import features
from device.contract.model_card import load_card
from device.core.classifier import NoiseClassifier

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def card_bytes(model_bytes, **changes):
    card = {"classes": ["white", "pink", "traffic", "office", "construction", "cafe"],
            "n_features": features.N_FEATURES, "sha256": sha(model_bytes), **changes}
    return json.dumps(card).encode()


@pytest.fixture
def dirs(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    models.mkdir()
    (models / "noise_classifier.onnx").write_bytes(b"old model")
    (models / "noise_classifier.json").write_bytes(card_bytes(b"old model"))
    source = tmp_path / "new.onnx"
    source.write_bytes(b"new model bytes")
    source.with_suffix(".json").write_bytes(card_bytes(b"new model bytes"))
    return models, state, source


def doc(source, digest=None, card=True, **kw):
    document = {"operation": "model-update", "url": source.as_uri(), "sha256": digest or sha(source.read_bytes())}
    if card:
        card_path = source.with_suffix(".json")
        document.update(card_url=card_path.as_uri(), card_sha256=sha(card_path.read_bytes()))
    return {**document, **kw}


def old_files_untouched(models, state):
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
    assert (models / "noise_classifier.json").read_bytes() == card_bytes(b"old model")
    assert not (models / "noise_classifier.onnx.previous").exists()
    assert not (models / "noise_classifier.json.previous").exists()
    assert not (state / "model.json").exists() and not list(models.glob(".*"))


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def strict_umask():
    old = os.umask(0o077)  # nothing the agent creates is readable by others unless it says so
    yield
    os.umask(old)


def test_verified_model_and_card_are_swapped_in_readable_and_the_runtime_told(dirs, strict_umask):
    models, state, source = dirs
    model, card = models / "noise_classifier.onnx", models / "noise_classifier.json"
    details = install_model(doc(source), models, state)
    assert model.read_bytes() == b"new model bytes"
    assert card.read_bytes() == source.with_suffix(".json").read_bytes()
    assert load_card(model)["sha256"] == sha(model.read_bytes())  # what the runtime checks
    assert (models / "noise_classifier.onnx.previous").read_bytes() == b"old model"
    assert (models / "noise_classifier.json.previous").read_bytes() == card_bytes(b"old model")
    # The runtime runs as another user: installed files and the kept copies are 0644.
    assert {p.name: mode(p) for p in models.iterdir()} == {
        "noise_classifier.onnx": 0o644, "noise_classifier.json": 0o644,
        "noise_classifier.onnx.previous": 0o644, "noise_classifier.json.previous": 0o644}
    notice = json.loads((state / "model.json").read_text())
    assert notice == {"path": str(model), "sha256": details["sha256"], "action": "reload"}
    assert rollback(models, state)
    assert model.read_bytes() == b"old model" and card.read_bytes() == card_bytes(b"old model")
    assert mode(model) == 0o644 and mode(card) == 0o644
    assert json.loads((state / "model.json").read_text())["sha256"] == sha(b"old model")
    assert not list(models.glob(".*"))  # no temporary files left


def test_an_updated_real_model_loads_in_the_runtime_classifier(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    models.mkdir()
    (models / "noise_classifier.onnx").write_bytes(b"old model")
    (models / "noise_classifier.json").write_bytes(card_bytes(b"old model"))
    onnx, card = REPO_MODELS / "noise_classifier.onnx", REPO_MODELS / "noise_classifier.json"
    document = {"operation": "model-update", "url": onnx.as_uri(), "sha256": sha(onnx.read_bytes()),
                "card_url": card.as_uri(), "card_sha256": sha(card.read_bytes())}
    install_model(document, models, state)
    classifier = NoiseClassifier(models / "noise_classifier.onnx")
    assert classifier.sha256 == document["sha256"]


def test_without_card_url_the_card_in_place_must_describe_the_new_model(dirs):
    models, state, source = dirs
    with pytest.raises(JobFailed, match="card_url missing.*describes sha256 " + sha(b"old model")):
        install_model(doc(source, card=False), models, state)
    old_files_untouched(models, state)
    (models / "noise_classifier.json").unlink()
    with pytest.raises(JobFailed, match="card_url missing and there is no model card noise_classifier.json"):
        install_model(doc(source, card=False), models, state)
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model" and not (state / "model.json").exists()
    # A card already describing the new model (e.g. shipped ahead) is enough.
    (models / "noise_classifier.json").write_bytes(card_bytes(b"new model bytes"))
    install_model(doc(source, card=False), models, state)
    assert load_card(models / "noise_classifier.onnx")["sha256"] == sha(b"new model bytes")
    assert (models / "noise_classifier.onnx").read_bytes() == b"new model bytes"
    assert rollback(models, state) and (models / "noise_classifier.onnx").read_bytes() == b"old model"


def test_a_failed_rename_of_the_model_puts_the_old_card_back(dirs, monkeypatch):
    models, state, source = dirs
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == models / "noise_classifier.onnx":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(JobFailed, match="install: OSError"):
        install_model(doc(source), models, state)
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
    assert (models / "noise_classifier.json").read_bytes() == card_bytes(b"old model")
    assert not (state / "model.json").exists() and not list(models.glob(".*"))


def write_card(source, data):
    path = source.with_name("other-card.json")
    path.write_bytes(data)
    return {"card_url": path.as_uri(), "card_sha256": sha(data)}


@pytest.mark.parametrize("case, reason", [
    ("wrong checksum", "sha256 mismatch"),
    ("bad url", "^url: must be"),
    ("reboot", "unsupported job"),
    ("path name", "model_name"),
    ("fails to load", "model does not load"),
    ("unknown field", r"unknown field\(s\) card_sha"),
    ("bad card url", "^card_url: must be"),
    ("card url without hash", "card_sha256: required with card_url"),
    ("card hash without url", "card_sha256: given without card_url"),
    ("malformed card hash", "card_sha256: must be 64 hex digits"),
    ("wrong card checksum", "card_sha256 mismatch"),
    ("card download fails", "card download: (URLError|FileNotFoundError)"),
    ("card of another model", "model card: card from file:.* describes sha256 " + sha(b"old model")),
    ("card not JSON", "model card: card from file:.* is not valid JSON"),
    ("card without classes", "model card: .* no valid 'classes'"),
    ("card with unknown class", "model card: .* classes jackhammer have no controller preset"),
    ("card for other features", "model card: .* takes 3 features"),
])
def test_failed_checks_keep_the_old_model_and_card(dirs, case, reason):
    models, state, source = dirs
    validate = None
    new = b"new model bytes"
    document = {
        "wrong checksum": lambda: doc(source, digest="0" * 64),
        "bad url": lambda: doc(source, url="ftp://example.invalid/x"),
        "reboot": lambda: {"operation": "reboot"},
        "path name": lambda: doc(source, model_name="../escape.onnx"),
        "fails to load": lambda: doc(source),
        "unknown field": lambda: doc(source, card_sha="0" * 64),
        "bad card url": lambda: doc(source, card_url="ftp://example.invalid/x.json"),
        "card url without hash": lambda: {k: v for k, v in doc(source).items() if k != "card_sha256"},
        "card hash without url": lambda: {k: v for k, v in doc(source).items() if k != "card_url"},
        "malformed card hash": lambda: doc(source, card_sha256="xyz"),
        "wrong card checksum": lambda: doc(source, card_sha256="0" * 64),
        "card download fails": lambda: doc(source, card_url=(source.parent / "missing.json").as_uri()),
        "card of another model": lambda: doc(source, **write_card(source, card_bytes(b"old model"))),
        "card not JSON": lambda: doc(source, **write_card(source, b"{not json")),
        "card without classes": lambda: doc(source, **write_card(source, json.dumps({"sha256": sha(new)}).encode())),
        "card with unknown class": lambda: doc(source, **write_card(source, card_bytes(new, classes=["jackhammer"]))),
        "card for other features": lambda: doc(source, **write_card(source, card_bytes(new, n_features=3))),
    }[case]()
    if case == "fails to load":
        validate = lambda path: (_ for _ in ()).throw(ValueError("not an ONNX graph"))
    with pytest.raises(JobFailed, match=reason):
        install_model(document, models, state, validate=validate)
    old_files_untouched(models, state)


def test_signature_is_required_when_a_key_is_configured(dirs):
    models, state, source = dirs
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(JobFailed, match="missing"):
        install_model(doc(source), models, state, public_key_pem=public)
    other = ec.generate_private_key(ec.SECP256R1()).sign(source.read_bytes(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(JobFailed, match="does not verify"):
        install_model(doc(source, signature=base64.b64encode(other).decode()), models, state, public_key_pem=public)
    good = base64.b64encode(key.sign(source.read_bytes(), ec.ECDSA(hashes.SHA256()))).decode()
    install_model(doc(source, signature=good), models, state, public_key_pem=public)
    assert (models / "noise_classifier.onnx").read_bytes() == b"new model bytes"
    assert load_card(models / "noise_classifier.onnx")["sha256"] == sha(b"new model bytes")


class FakeClient:
    def __init__(self):
        self.published, self.handlers = [], {}

    def subscribe(self, topic, handler):
        self.handlers[topic] = handler

    def publish_json(self, topic, document):
        self.published.append((topic, document))


def test_jobs_agent_reports_in_progress_then_failed_with_the_reason(dirs):
    models, state, source = dirs
    client = FakeClient()
    agent = JobsAgent(client, "thing-1", lambda d: install_model(d, models, state))
    payload = json.dumps({"execution": {"jobId": "job-7", "jobDocument": doc(source, digest="1" * 64)}}).encode()
    client.handlers["$aws/things/thing-1/jobs/notify-next"]("t", payload)
    client.handlers["$aws/things/thing-1/jobs/notify-next"]("t", b"not json")
    payload = json.dumps({"execution": {"jobId": "job-8", "jobDocument": doc(source, card=False)}}).encode()
    client.handlers["$aws/things/thing-1/jobs/$next/get/accepted"]("t", payload)
    topics = [t for t, _ in client.published]
    assert topics == ["$aws/things/thing-1/jobs/job-7/update"] * 2 + ["$aws/things/thing-1/jobs/job-8/update"] * 2
    assert client.published[0][1] == {"status": "IN_PROGRESS"}
    assert client.published[1][1]["status"] == "FAILED"
    assert "sha256 mismatch" in client.published[1][1]["statusDetails"]["reason"]
    assert client.published[3][1]["status"] == "FAILED"
    assert "card_url missing" in client.published[3][1]["statusDetails"]["reason"]
    old_files_untouched(models, state)
