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
features, load-test the model (``validate``: the agent passes `device.contract.model_card.verify_model`,
an onnxruntime session and one inference on a zero feature vector, exactly what the runtime does),
make both files 0644 (the runtime runs as another user), keep the current model and card as
``<name>.previous``, atomically rename the card, then the model into place, fsync, then tell
the runtime to reload by writing ``model.json`` in the runtime state directory (same atomic
JSON as the control channel; the runtime reads the files only on that notice). ``rollback``
puts both ``.previous`` files back. After the renames the installed pair is load-tested once
more as the runtime will read it; if that fails both ``.previous`` files go back at once
(automatic rollback) and the job is FAILED.

Downloads run on the job's own thread (`JobsAgent`), never in the MQTT callback, so telemetry,
shadow and keepalives go on; the whole download of model and card has one deadline
(``jobs.download_timeout_s``). URLs appear in logs and reasons without their query string (a
presigned URL's query is a credential).

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
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from cloud_sync.feature import Context
from cloud_sync.redact import REASON_LIMIT, clip, redact_url
from device.contract.control_channel import MODEL_FILE
from device.contract.model_card import ModelError, card_path, check_card_fits, load_card, verify_model
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


OPERATIONS = ("model-update", "record")
_RECORD_FIELDS = ("operation", "seconds", "mics")


def run_record_job(document: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"operation": "record", "seconds": S, "mics": ["reference", "error"]}``: ask the runtime
    for a recording, which the recordings feature uploads. Fails when recordings are off."""
    unknown = sorted(str(key) for key in document if key not in _RECORD_FIELDS)
    if unknown:
        raise JobFailed(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(_RECORD_FIELDS)})")
    if not cfg["recordings"]["enabled"]:
        raise JobFailed("record: recordings are disabled on this device (recordings.enabled: false); "
                        "nothing was recorded")
    from cloud_sync.recordings import request_recording
    from device.contract.errors import UserError

    try:
        request = request_recording(cfg, document.get("seconds"), document.get("mics"))
    except UserError as exc:
        raise JobFailed(f"record: {str(exc).split(': ', 1)[-1]}") from None
    r = cfg["recordings"]
    return {"request_id": request["request_id"], "seconds": request["seconds"],
            "s3_key": f"s3://{r['bucket']}/{r['prefix']}{cfg['thing_name']}/{request['request_id']}.flac"}


def check_document(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict) or document.get("operation") != "model-update":
        raise JobFailed(f"unsupported job: operation must be one of {', '.join(OPERATIONS)}")
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


def fetch_url(url: str, destination: Path, limit: int = MAX_MODEL_BYTES, deadline: float | None = None) -> None:
    """Download `url` to `destination` (https/http/file with urllib, s3 with boto3), at most
    `limit` bytes, finished before `deadline` (time.monotonic()) or JobFailed."""

    def remaining() -> float:
        if deadline is None:
            return 60.0
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobFailed(f"download: not finished within the deadline ({redact_url(url)})")
        return min(60.0, left)

    parsed = urllib.parse.urlparse(url)
    total = 0
    if parsed.scheme == "s3":
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", config=Config(connect_timeout=remaining(), read_timeout=remaining(),
                                                  retries={"max_attempts": 2}))
        body = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"]
        chunks = body.iter_chunks(1 << 16)
    else:
        response = urllib.request.urlopen(url, timeout=remaining())
        # read1 returns what has arrived (read would wait for a whole chunk from a trickling
        # server); the socket's timeout follows the deadline so a stalled server ends too.
        sock = getattr(getattr(response, "fp", None), "raw", None)
        sock = getattr(sock, "_sock", None)

        def read() -> bytes:
            if sock is not None:
                sock.settimeout(remaining())
            return response.read1(1 << 16)

        chunks = iter(read, b"")
    with open(destination, "wb") as out:
        try:
            for chunk in chunks:
                remaining()
                total += len(chunk)
                if total > limit:
                    raise JobFailed(f"download: larger than {limit} bytes")
                out.write(chunk)
        except TimeoutError:  # the socket's timeout: the deadline, or 60 s without a byte
            remaining()
            raise JobFailed(f"download: no data for 60 s ({redact_url(url)})") from None
    remaining()


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
        raise JobFailed(f"{what}: {exc.__class__.__name__}: {clip(_without_urls(str(exc)), 300)}") from None


def _without_urls(text: str) -> str:
    return re.sub(r"[a-z][a-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


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
                  validate: Callable[[Path], Any] | None = None,
                  public_key_pem: bytes | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Download, verify and swap in a model and its card; returns statusDetails.

    `validate(model_path)` load-tests a model with its card beside it (the agent passes
    `verify_model`); `timeout_s` bounds the downloads together.
    Raises JobFailed; the old model and card are then in place, unchanged.
    """
    job = check_document(document)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def get(limit: int) -> Callable[[str, Path], None]:
        if fetch is fetch_url:
            return lambda url, destination: fetch_url(url, destination, limit, deadline)
        return fetch
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / job["model_name"]
    card_target = target.with_suffix(".json")
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".download", dir=models_dir))
    tmp, tmp_card = work / target.name, work / card_target.name
    try:
        _download(get(MAX_MODEL_BYTES), job["url"], tmp, "download")
        actual = _sha256(tmp)
        if actual != job["sha256"]:
            raise JobFailed(f"sha256 mismatch: expected {job['sha256']}, got {actual}")
        verify_signature(tmp, job["signature"], public_key_pem)
        if job["card_url"] is not None:
            _download(get(MAX_CARD_BYTES), job["card_url"], tmp_card, "card download")
            if tmp_card.stat().st_size > MAX_CARD_BYTES:
                raise JobFailed(f"card download: larger than {MAX_CARD_BYTES} bytes")
            card_actual = _sha256(tmp_card)
            if card_actual != job["card_sha256"]:
                raise JobFailed(f"card_sha256 mismatch: expected {job['card_sha256']}, got {card_actual}")
            _check_card(tmp, job["sha256"], f"card from {redact_url(job['card_url'])}")
        elif card_target.exists():
            try:
                _check_card(target, job["sha256"], str(card_target))
            except JobFailed as exc:
                raise JobFailed(f"card_url missing and the card in place does not fit the new model: {exc}") from None
        else:
            raise JobFailed(f"card_url missing and there is no model card {card_target.name} beside the model; "
                            "the runtime refuses a model without its card")
        new_card = job["card_url"] is not None
        if validate is not None:
            if not new_card:  # the card in place describes the new model: load-test the pair as installed
                copy_atomic(card_target, tmp_card, INSTALLED_MODE)
            _load_test(validate, tmp, "model does not load")
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
        if validate is not None:
            try:
                _load_test(validate, target, "installed model does not load")
            except JobFailed as exc:
                if new_card:
                    _restore(card_target)
                _restore(target)
                fsync_dir(models_dir)
                raise JobFailed(f"{exc}; the previous model and card were put back") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(Path(state_dir) / MODEL_FILE,
                      {"path": str(target), "sha256": job["sha256"], "action": "reload"})
    log.info("model %s and card %s installed (sha256 %s); runtime asked to reload",
             target, card_target.name, job["sha256"])
    return {"model": job["model_name"], "sha256": job["sha256"], "card": card_target.name}


def _load_test(validate: Callable[[Path], Any], model: Path, what: str) -> None:
    try:
        validate(model)
    except Exception as exc:
        raise JobFailed(f"{what}: {exc.__class__.__name__}: {clip(str(exc), 300)}") from None


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


def needs_mqtt(cfg: dict[str, Any]) -> bool:
    return True


class JobsAgent:
    """Receives the next pending job over MQTT, runs it on its own thread, reports the status.

    The MQTT callback only parses the notification, publishes IN_PROGRESS and starts the
    thread; `step()` (the agent's loop) publishes the result when the thread is done. One job
    runs at a time; a job notified meanwhile waits for it (the latest notification wins).
    """

    name = "jobs"

    def __init__(self, client, thing: str, runner: Callable[[Any], dict[str, Any]]):
        self.client, self.thing, self.runner = client, thing, runner
        self.results: list[tuple[str, str, dict[str, Any]]] = []
        self._topics = (jobs_topic(thing, "notify-next"), jobs_topic(thing, "$next/get/accepted"))
        self._thread: threading.Thread | None = None
        self._running: str | None = None
        self._outcome: tuple[str, dict[str, Any]] | None = None
        self._waiting: dict[str, Any] | None = None

    @classmethod
    def from_context(cls, ctx: Context) -> "JobsAgent":
        jobs = ctx.cfg["jobs"]
        public_key = Path(jobs["public_key_file"]).read_bytes() if jobs["public_key_file"] else None
        models_dir, state_dir = Path(jobs["models_dir"]), Path(ctx.cfg["state_dir"])
        timeout_s = jobs.get("download_timeout_s")

        def runner(document: Any) -> dict[str, Any]:
            if isinstance(document, dict) and document.get("operation") == "record":
                return run_record_job(document, ctx.cfg)
            return install_model(document, models_dir, state_dir, validate=verify_model,
                                 public_key_pem=public_key, timeout_s=timeout_s)

        agent = cls(ctx.client, ctx.thing, runner)
        agent.models_dir = models_dir
        return agent

    def start(self) -> None:
        if self.models_dir is not None and self.models_dir.is_dir():
            # A download cut short by a stop or a crash leaves its private directory behind.
            for stale in self.models_dir.glob(".*.download"):
                shutil.rmtree(stale, ignore_errors=True)
                log.info("removed %s left by an interrupted model download", stale.name)
        for topic in self._topics:
            self.client.subscribe(topic, self.on_job)
        self.client.add_connected_listener(self.on_connected)

    def stop(self) -> None:
        self.client.remove_connected_listener(self.on_connected)
        for topic in self._topics:
            self.client.unsubscribe(topic)
        if self._thread is not None:
            # A download cannot be interrupted; its deadline bounds the wait. The job stays
            # IN_PROGRESS in AWS and is offered again after the restart.
            self._thread.join(timeout=1.0)

    models_dir: Path | None = None

    def health(self) -> dict[str, Any]:
        """The running job, and the installed model's measured accuracy (its card's
        ``evaluation.real_accuracy``), which the fleet's model-quality alarm watches."""
        return {"job_running": self._running, "model_accuracy": self._model_accuracy()}

    def _model_accuracy(self) -> float | None:
        if self.models_dir is None:
            return None
        try:
            card = load_card(self.models_dir / "noise_classifier.onnx")
        except ModelError:
            return None
        accuracy = (card.get("evaluation") or {}).get("real_accuracy") if isinstance(card.get("evaluation"), dict) \
            else None
        return float(accuracy) if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) else None

    @property
    def busy(self) -> bool:
        return self._running is not None

    def on_connected(self) -> None:
        self.client.publish_json(jobs_topic(self.thing, "$next/get"), {})

    def on_job(self, topic: str, payload: bytes) -> None:
        try:
            execution = json.loads(payload).get("execution")
        except (ValueError, AttributeError, RecursionError):
            log.warning("malformed jobs message on %s", topic)
            return
        if not isinstance(execution, dict) or "jobId" not in execution:
            return  # no pending job
        if self._running is not None:
            if str(execution["jobId"]) != self._running:
                self._waiting = execution
            return
        self._launch(execution)

    def _launch(self, execution: dict[str, Any]) -> None:
        job_id = str(execution["jobId"])
        self.client.publish_json(jobs_topic(self.thing, f"{job_id}/update"), {"status": "IN_PROGRESS"})
        self._running, self._outcome = job_id, None
        self._thread = threading.Thread(target=self._run, args=(execution.get("jobDocument"),),
                                        name=f"job-{job_id[:32]}", daemon=True)
        self._thread.start()

    def _run(self, document: Any) -> None:
        try:
            outcome = ("SUCCEEDED", self.runner(document))
        except JobFailed as exc:
            outcome = ("FAILED", {"reason": str(exc)})
        except Exception as exc:  # never let a job kill the agent
            outcome = ("FAILED", {"reason": f"{exc.__class__.__name__}: {exc}"})
        self._outcome = outcome

    def step(self) -> int:
        """Publish the result of a finished job; start the one waiting. Returns 1 when a job finished."""
        if self._thread is None or self._thread.is_alive():
            return 0
        self._thread.join()
        job_id, (status, details) = self._running, self._outcome or ("FAILED", {"reason": "no result"})
        self._thread, self._running = None, None
        details = {k: clip(str(v), REASON_LIMIT) for k, v in details.items()}
        log.info("job %s %s: %s", job_id, status, details)
        self.results.append((job_id, status, details))
        self.client.publish_json(jobs_topic(self.thing, f"{job_id}/update"),
                                 {"status": status, "statusDetails": details})
        waiting, self._waiting = self._waiting, None
        if waiting is not None and str(waiting["jobId"]) != job_id:
            self._launch(waiting)
        return 1

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Step until no job runs (tests, and a clean stop); True when idle."""
        deadline = time.monotonic() + timeout_s
        while self.busy and time.monotonic() < deadline:
            if self._thread is not None:
                self._thread.join(0.05)
            self.step()
        return not self.busy
