"""AWS IoT Jobs: the model-update job.

Job document (``operation`` selects the handler)::

    {"operation": "model-update", "url": "https://... | s3://bucket/key | file:///...",
     "sha256": "<64 hex>", "signature": "<base64 ECDSA-P256/SHA-256 DER, optional>",
     "model_name": "noise_classifier.onnx",
     "card_url": "<same schemes as url>", "card_sha256": "<64 hex, required with card_url>"}

The runtime loads a model only together with its model card ``<stem>.json`` beside it and
refuses it when the card's ``sha256`` is not the model's, so a model update installs both.
Without ``card_url`` the job fails unless the card already beside the target describes the
new model. Unknown fields are refused.

Order of operations, each failure leaves the running model and its card untouched and reports
FAILED with the reason: download the model and the card to a private temporary directory in
the models directory, check the size limits, verify both sha256 (and the model's signature
when a public key is configured, mandatory then), check that the card parses as the runtime
reads it (`device.contract.model_card.load_card`), names the new model's sha256 and fits this device's
features, optionally load-test the model (``validate`` callback, onnxruntime in the agent),
make both files 0644 (the runtime runs as another user), keep the current model and card as
``<name>.previous``, atomically rename the card, then the model into place, fsync, then tell
the runtime to reload by writing ``model.json`` in the runtime state directory (same atomic
JSON as the control channel; the runtime reads the files only on that notice). ``rollback``
puts both ``.previous`` files back.

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
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from device.contract.control_channel import MODEL_FILE
from device.contract.model_card import ModelError, card_path, check_card_fits, load_card
from device.contract.files import MODE_SHARED_READ, copy_atomic, fsync_dir, write_json_atomic

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_CARD_BYTES = 1024 * 1024
INSTALLED_MODE = MODE_SHARED_READ  # the runtime (another user, same group) must read what the agent installs
_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.onnx$")
_SCHEMES = ("https", "http", "s3", "file")
_FIELDS = ("operation", "url", "sha256", "signature", "model_name", "card_url", "card_sha256")


class JobFailed(Exception):
    """A reason to report FAILED; the message goes into statusDetails."""


def _check_url(value: Any, field: str) -> str:
    if not isinstance(value, str) or urllib.parse.urlparse(value).scheme not in _SCHEMES:
        raise JobFailed(f"{field}: must be an https, http, s3 or file URL")
    return value


def _check_digest(value: Any, field: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise JobFailed(f"{field}: must be 64 hex digits")
    return value.lower()


def check_document(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("operation") != "model-update":
        raise JobFailed("unsupported job: operation must be 'model-update'")
    unknown = sorted(str(key) for key in document if key not in _FIELDS)
    if unknown:
        raise JobFailed(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
    url = _check_url(document.get("url"), "url")
    digest = _check_digest(document.get("sha256"), "sha256")
    name = document.get("model_name", "noise_classifier.onnx")
    if not isinstance(name, str) or not _NAME.match(name):
        raise JobFailed("model_name: must be a plain file name ending in .onnx")
    signature = document.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise JobFailed("signature: must be a base64 string")
    card_url, card_digest = document.get("card_url"), document.get("card_sha256")
    if card_url is not None:
        card_url = _check_url(card_url, "card_url")
        if card_digest is None:
            raise JobFailed("card_sha256: required with card_url")
        card_digest = _check_digest(card_digest, "card_sha256")
    elif card_digest is not None:
        raise JobFailed("card_sha256: given without card_url")
    return {"url": url, "sha256": digest, "model_name": name, "signature": signature,
            "card_url": card_url, "card_sha256": card_digest}


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


def _download(fetch: Callable[[str, Path], None], url: str, destination: Path, what: str) -> None:
    try:
        fetch(url, destination)
    except JobFailed as exc:
        if what == "download":
            raise
        raise JobFailed(f"{what}: {exc}") from None
    except Exception as exc:
        raise JobFailed(f"{what}: {exc.__class__.__name__}: {exc}") from None


def _check_card(model_path: Path, model_sha256: str, shown_as: str) -> None:
    """The card beside `model_path` as the runtime reads it: parses, names `model_sha256`, fits the features."""
    try:
        card = load_card(model_path)
        if card["sha256"].lower() != model_sha256:
            raise JobFailed(f"model card: {shown_as} describes sha256 {card['sha256'].lower()}, "
                            f"not the new model's {model_sha256}")
        check_card_fits(card, model_sha256, shown_as)
    except ModelError as exc:
        raise JobFailed(f"model card: {str(exc).replace(str(card_path(model_path)), shown_as)}") from None


def _keep_previous(path: Path) -> None:
    """`path` as ``<name>.previous``; no stale ``.previous`` stays when there is no `path`."""
    previous = path.with_name(path.name + ".previous")
    if path.exists():
        copy_atomic(path, previous, INSTALLED_MODE)
    elif previous.exists():
        previous.unlink()


def install_model(document: Any, models_dir: Path, state_dir: Path,
                  fetch: Callable[[str, Path], None] = fetch_url,
                  validate: Callable[[Path], None] | None = None,
                  public_key_pem: bytes | None = None) -> dict[str, Any]:
    """Download, verify and swap in a model and its card; returns statusDetails.

    Raises JobFailed; the old model and card are then in place, unchanged.
    """
    job = check_document(document)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / job["model_name"]
    card_target = target.with_suffix(".json")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".download", dir=models_dir))
    tmp, tmp_card = work / target.name, work / card_target.name
    try:
        _download(fetch, job["url"], tmp, "download")
        actual = _sha256(tmp)
        if actual != job["sha256"]:
            raise JobFailed(f"sha256 mismatch: expected {job['sha256']}, got {actual}")
        verify_signature(tmp, job["signature"], public_key_pem)
        if job["card_url"] is not None:
            card_fetch = (lambda url, dest: fetch_url(url, dest, MAX_CARD_BYTES)) if fetch is fetch_url else fetch
            _download(card_fetch, job["card_url"], tmp_card, "card download")
            if tmp_card.stat().st_size > MAX_CARD_BYTES:
                raise JobFailed(f"card download: larger than {MAX_CARD_BYTES} bytes")
            card_actual = _sha256(tmp_card)
            if card_actual != job["card_sha256"]:
                raise JobFailed(f"card_sha256 mismatch: expected {job['card_sha256']}, got {card_actual}")
            _check_card(tmp, job["sha256"], f"card from {job['card_url']}")
        elif card_target.exists():
            try:
                _check_card(target, job["sha256"], str(card_target))
            except JobFailed as exc:
                raise JobFailed(f"card_url missing and the card in place does not fit the new model: {exc}") from None
        else:
            raise JobFailed(f"card_url missing and there is no model card {card_target.name} beside the model; "
                            "the runtime refuses a model without its card")
        if validate is not None:
            try:
                validate(tmp)
            except Exception as exc:
                raise JobFailed(f"model does not load: {exc.__class__.__name__}: {exc}") from None
        new_card = job["card_url"] is not None
        for path in (tmp, tmp_card) if new_card else (tmp,):
            os.chmod(path, INSTALLED_MODE)
        # Keep copies: the running model and card stay in place until the renames.
        _keep_previous(card_target)
        _keep_previous(target)
        if new_card:
            os.replace(tmp_card, card_target)  # card first; the runtime reloads only on the notice below
        try:
            os.replace(tmp, target)
        except OSError as exc:
            if new_card:
                _restore(card_target)
            raise JobFailed(f"install: {exc.__class__.__name__}: {exc}") from None
        fsync_dir(models_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(Path(state_dir) / MODEL_FILE,
                      {"path": str(target), "sha256": job["sha256"], "action": "reload"})
    log.info("model %s and card %s installed (sha256 %s); runtime asked to reload",
             target, card_target.name, job["sha256"])
    return {"model": job["model_name"], "sha256": job["sha256"], "card": card_target.name}


def _restore(path: Path) -> None:
    """Put ``<path>.previous`` back as `path` (a copy), or remove `path` if there was none."""
    previous = path.with_name(path.name + ".previous")
    if previous.exists():
        copy_atomic(previous, path, INSTALLED_MODE)
    elif path.exists():
        path.unlink()


def rollback(models_dir: Path, state_dir: Path, model_name: str = "noise_classifier.onnx") -> bool:
    """Put the previous model and its card back (e.g. the runtime failed to load the new one)."""
    target = Path(models_dir) / model_name
    card_target = target.with_suffix(".json")
    previous = target.with_name(target.name + ".previous")
    previous_card = card_target.with_name(card_target.name + ".previous")
    if not previous.exists():
        return False
    if previous_card.exists():
        os.replace(previous_card, card_target)  # card first, as at install
    else:
        log.warning("no %s to restore: %s stays, the runtime may refuse the previous model",
                    previous_card.name, card_target.name)
    os.replace(previous, target)
    fsync_dir(Path(models_dir))
    write_json_atomic(Path(state_dir) / MODEL_FILE,
                      {"path": str(target), "sha256": _sha256(target), "action": "reload"})
    log.warning("model and card rolled back to the previous version")
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
