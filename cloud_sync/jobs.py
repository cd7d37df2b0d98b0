"""AWS IoT Jobs: the model-update job.

Job document (``operation`` selects the handler)::

    {"operation": "model-update", "url": "https://... | s3://bucket/key | file:///...",
     "sha256": "<64 hex>", "signature": "<base64 ECDSA-P256/SHA-256 DER, optional>",
     "model_name": "noise_classifier.onnx"}

Order of operations, each failure leaves the running model untouched and reports FAILED
with the reason: download to a temporary file in the models directory, check the size
limit, verify sha256 (and the signature when a public key is configured, mandatory then),
optionally load-test it (``validate`` callback, onnxruntime in the agent), keep the current
model as ``<name>.previous``, atomically rename the new file into place, fsync, then tell the
runtime to reload by writing ``model.json`` in the runtime state directory (same atomic
JSON as the control channel). ``rollback`` puts ``.previous`` back.

MQTT topics (classic Jobs API): subscribe ``$aws/things/<thing>/jobs/notify-next`` and
``.../jobs/$next/get/accepted``; publish ``.../jobs/$next/get`` after connect and
``.../jobs/<jobId>/update`` with IN_PROGRESS, then SUCCEEDED or FAILED + statusDetails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from device.control_channel import write_json_atomic

log = logging.getLogger(__name__)

MODEL_NOTICE_FILE = "model.json"
MAX_MODEL_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.onnx$")


class JobFailed(Exception):
    """A reason to report FAILED; the message goes into statusDetails."""


def check_document(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("operation") != "model-update":
        raise JobFailed("unsupported job: operation must be 'model-update'")
    url, digest = document.get("url"), document.get("sha256")
    if not isinstance(url, str) or urllib.parse.urlparse(url).scheme not in ("https", "http", "s3", "file"):
        raise JobFailed("url: must be an https, s3 or file URL")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise JobFailed("sha256: must be 64 hex digits")
    name = document.get("model_name", "noise_classifier.onnx")
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobFailed("model_name: must be a plain file name ending in .onnx")
    signature = document.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise JobFailed("signature: must be a base64 string")
    return {"url": url, "sha256": digest.lower(), "model_name": name, "signature": signature}


def fetch_url(url: str, destination: Path, limit: int = MAX_MODEL_BYTES) -> None:
    """Download `url` to `destination` (https/http/file with urllib, s3 with boto3)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "s3":
        import boto3

        boto3.client("s3").download_file(parsed.netloc, parsed.path.lstrip("/"), str(destination))
        if destination.stat().st_size > limit:
            raise JobFailed(f"download: larger than {limit} bytes")
        return
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        total = 0
        while chunk := response.read(1 << 16):
            total += len(chunk)
            if total > limit:
                raise JobFailed(f"download: larger than {limit} bytes")
            out.write(chunk)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


def verify_signature(path: Path, signature_b64: str | None, public_key_pem: bytes | None) -> None:
    if public_key_pem is None:
        return
    if not signature_b64:
        raise JobFailed("signature: required by this device but missing")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_public_key(public_key_pem)
    try:
        key.verify(base64.b64decode(signature_b64), path.read_bytes(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise JobFailed("signature: does not verify") from None


def install_model(document: Any, models_dir: Path, state_dir: Path,
                  fetch: Callable[[str, Path], None] = fetch_url,
                  validate: Callable[[Path], None] | None = None,
                  public_key_pem: bytes | None = None) -> dict[str, Any]:
    """Download, verify and swap in a model; returns statusDetails. Raises JobFailed, old model kept."""
    job = check_document(document)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / job["model_name"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".download", dir=models_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch(job["url"], tmp)
        except JobFailed:
            raise
        except Exception as exc:
            raise JobFailed(f"download: {exc.__class__.__name__}: {exc}") from None
        actual = _sha256(tmp)
        if actual != job["sha256"]:
            raise JobFailed(f"sha256 mismatch: expected {job['sha256']}, got {actual}")
        verify_signature(tmp, job["signature"], public_key_pem)
        if validate is not None:
            try:
                validate(tmp)
            except Exception as exc:
                raise JobFailed(f"model does not load: {exc.__class__.__name__}: {exc}") from None
        previous = target.with_name(target.name + ".previous")
        if target.exists():
            _copy_atomic(target, previous)  # keep a copy: the running model stays in place until the rename
        os.replace(tmp, target)
        dir_fd = os.open(models_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_json_atomic(Path(state_dir) / MODEL_NOTICE_FILE,
                      {"path": str(target), "sha256": job["sha256"], "action": "reload"})
    log.info("model %s installed (sha256 %s); runtime asked to reload", target, job["sha256"])
    return {"model": job["model_name"], "sha256": job["sha256"]}


def _copy_atomic(source: Path, destination: Path) -> None:
    tmp = destination.with_name(f".{destination.name}.tmp")
    tmp.write_bytes(source.read_bytes())
    os.replace(tmp, destination)


def rollback(models_dir: Path, state_dir: Path, model_name: str = "noise_classifier.onnx") -> bool:
    """Put the previous model back (e.g. the runtime failed to load the new one)."""
    target = Path(models_dir) / model_name
    previous = target.with_name(target.name + ".previous")
    if not previous.exists():
        return False
    os.replace(previous, target)
    write_json_atomic(Path(state_dir) / MODEL_NOTICE_FILE,
                      {"path": str(target), "sha256": _sha256(target), "action": "reload"})
    log.warning("model rolled back to the previous version")
    return True


def jobs_topic(thing: str, suffix: str) -> str:
    return f"$aws/things/{thing}/jobs/{suffix}"


class JobsAgent:
    """Receives the next pending job over MQTT, runs it, reports the status."""

    def __init__(self, client, thing: str, runner: Callable[[Any], dict[str, Any]]):
        self.client, self.thing, self.runner = client, thing, runner
        self.results: list[tuple[str, str, dict[str, Any]]] = []
        client.subscribe(jobs_topic(thing, "notify-next"), self.on_job)
        client.subscribe(jobs_topic(thing, "$next/get/accepted"), self.on_job)

    def on_connected(self) -> None:
        self.client.publish_json(jobs_topic(self.thing, "$next/get"), {})

    def on_job(self, topic: str, payload: bytes) -> None:
        try:
            execution = json.loads(payload).get("execution")
        except (ValueError, AttributeError):
            log.warning("malformed jobs message on %s", topic)
            return
        if not isinstance(execution, dict) or "jobId" not in execution:
            return  # no pending job
        job_id = str(execution["jobId"])
        update = jobs_topic(self.thing, f"{job_id}/update")
        self.client.publish_json(update, {"status": "IN_PROGRESS"})
        try:
            details = self.runner(execution.get("jobDocument"))
            status = "SUCCEEDED"
        except JobFailed as exc:
            details, status = {"reason": str(exc)}, "FAILED"
        except Exception as exc:  # never let a job kill the agent
            details, status = {"reason": f"{exc.__class__.__name__}: {exc}"}, "FAILED"
        log.info("job %s %s: %s", job_id, status, details)
        details = {k: str(v)[:1024] for k, v in details.items()}
        self.results.append((job_id, status, details))
        self.client.publish_json(update, {"status": status, "statusDetails": details})
