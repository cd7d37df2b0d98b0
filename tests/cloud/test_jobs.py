"""Model-update job: verified, atomic, rollback, status reported."""

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_sync.jobs import JobFailed, JobsAgent, install_model, rollback


@pytest.fixture
def dirs(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    models.mkdir()
    (models / "noise_classifier.onnx").write_bytes(b"old model")
    source = tmp_path / "new.onnx"
    source.write_bytes(b"new model bytes")
    return models, state, source


def doc(source, digest=None, **kw):
    return {"operation": "model-update", "url": source.as_uri(),
            "sha256": digest or hashlib.sha256(source.read_bytes()).hexdigest(), **kw}


def test_verified_model_is_swapped_in_and_the_runtime_told(dirs):
    models, state, source = dirs
    details = install_model(doc(source), models, state)
    assert (models / "noise_classifier.onnx").read_bytes() == b"new model bytes"
    assert (models / "noise_classifier.onnx.previous").read_bytes() == b"old model"
    notice = json.loads((state / "model.json").read_text())
    assert notice["action"] == "reload" and notice["sha256"] == details["sha256"]
    assert rollback(models, state)
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
    assert not list(models.glob(".*"))  # no temporary files left


@pytest.mark.parametrize("document, reason", [
    ("wrong checksum", "sha256 mismatch"),
    ("bad url", "url"),
    ({"operation": "reboot"}, "unsupported job"),
    ("path name", "model_name"),
    ("fails to load", "model does not load"),
])
def test_failed_checks_keep_the_old_model(dirs, document, reason):
    models, state, source = dirs
    validate = None
    if document == "wrong checksum":
        document = doc(source, digest="0" * 64)
    elif document == "bad url":
        document = doc(source, url="ftp://example.invalid/x")
    elif document == "path name":
        document = doc(source, model_name="../escape.onnx")
    elif document == "fails to load":
        document = doc(source)
        validate = lambda path: (_ for _ in ()).throw(ValueError("not an ONNX graph"))
    with pytest.raises(JobFailed, match=reason):
        install_model(document, models, state, validate=validate)
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
    assert not (state / "model.json").exists() and not list(models.glob(".*"))


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
    topics = [t for t, _ in client.published]
    assert topics == ["$aws/things/thing-1/jobs/job-7/update"] * 2
    assert client.published[0][1] == {"status": "IN_PROGRESS"}
    assert client.published[1][1]["status"] == "FAILED"
    assert "sha256 mismatch" in client.published[1][1]["statusDetails"]["reason"]
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
