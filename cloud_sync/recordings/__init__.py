"""Session recordings to S3 (opt-in: ``recordings.enabled``, off by default).

Recordings are audio of a person's surroundings, so nothing happens unless the device's owner
enabled this feature: only then does the agent ask the runtime for a recording (a ``record``
job, or ``record_on_start_s`` at start) and upload what the runtime wrote. With the feature
off the agent never writes a record request, fails ``record`` jobs, and never reads or sends
a recording.

The runtime writes ``<request_id>.flac`` into the recordings directory beside the spool
(`device.contract.control_channel.recordings_dir`). This feature's thread uploads each file to
``s3://<bucket>/<prefix><thing>/<file>`` with temporary credentials from the AWS IoT
credentials provider (`credentials.IotCredentialsProvider`), then deletes it. A failed upload
is retried with backoff; the file stays until it is uploaded or the runtime's budget removes it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

from cloud_sync.backoff import Backoff
from cloud_sync.feature import Context
from cloud_sync.redact import clip
from device.contract.control_channel import recordings_dir, write_record_request
from device.contract.files import fsync_dir, is_partial

log = logging.getLogger(__name__)


def needs_mqtt(cfg: dict[str, Any]) -> bool:
    return False


def request_recording(cfg: dict[str, Any], seconds: float, mics: list[str] | None = None) -> dict[str, Any]:
    """Ask the runtime for a recording (raises UserError for a bad request). Only called when
    recordings are enabled."""
    r = cfg["recordings"]
    default = ["reference", "error"] if r["mics"] == "both" else [r["mics"]]
    request = {"request_id": uuid.uuid4().hex, "seconds": seconds, "mics": mics or default,
               "budget_bytes": int(r["budget_mb"] * 2**20)}
    return write_record_request(cfg["state_dir"], request)


class RecordingsFeature:
    name = "recordings"

    def __init__(self, ctx: Context, provider=None, s3_client_factory=None):
        self.ctx = ctx
        r = ctx.cfg["recordings"]
        self.settings = r
        self.directory = recordings_dir(ctx.cfg["spool_path"])
        if provider is None:
            from cloud_sync.recordings.credentials import IotCredentialsProvider

            m = ctx.cfg["mqtt"]
            provider = IotCredentialsProvider(r["credentials_endpoint"], r["role_alias"], ctx.thing,
                                              m["cert_file"], m["key_file"], m["ca_file"])
        self.provider = provider
        self.s3_client_factory = s3_client_factory or self._s3_client
        self.backoff = Backoff(1.0, 300.0, ctx.rng)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uploaded: list[str] = []
        self.last_error: str | None = None

    def _s3_client(self, credentials):
        import boto3

        return boto3.client("s3", region_name=self.settings["region"], aws_access_key_id=credentials.access_key_id,
                            aws_secret_access_key=credentials.secret_access_key,
                            aws_session_token=credentials.session_token)

    def start(self) -> None:
        if self.settings["record_on_start_s"] > 0:
            request_recording(self.ctx.cfg, self.settings["record_on_start_s"])
        self._thread = threading.Thread(target=self._loop, name="recordings-upload", daemon=True)
        self._thread.start()

    def step(self) -> int:
        return 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def health(self) -> dict[str, Any]:
        pending = len(self.pending())
        return {"recordings_pending": pending, "recordings_uploaded_this_run": len(self.uploaded),
                "recordings_last_error": self.last_error}

    def pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        # A recording still being written is a hidden temporary beside its final name.
        return sorted((path for path in self.directory.glob("*.flac") if not is_partial(path)),
                      key=lambda p: p.stat().st_mtime)

    def upload_pending(self) -> int:
        """Upload and delete every finished recording; returns how many went."""
        done = 0
        for path in self.pending():
            credentials = self.provider.get()
            key = f"{self.settings['prefix']}{self.ctx.thing}/{path.name}"
            self.s3_client_factory(credentials).upload_file(
                str(path), self.settings["bucket"], key,
                ExtraArgs={"ContentType": "audio/flac", "Metadata": {"thing": self.ctx.thing}})
            path.unlink()
            fsync_dir(self.directory)
            self.uploaded.append(key)
            done += 1
            log.info("recording %s uploaded to s3://%s/%s and removed", path.name, self.settings["bucket"], key)
        return done

    def _loop(self) -> None:
        wait = self.settings["scan_interval_s"]
        while not self._stop.wait(wait):
            try:
                self.upload_pending()
                self.backoff.reset()
                self.last_error = None
                wait = self.settings["scan_interval_s"]
            except Exception as exc:  # network, credentials, S3: the file stays, try again later
                self.last_error = clip(f"{exc.__class__.__name__}: {exc}", 300)
                wait = max(self.settings["scan_interval_s"], self.backoff.next_delay())
                log.warning("recording upload failed (retry in %.1f s): %s", wait, self.last_error)
