"""Session recordings: job -> runtime writes a FLAC -> agent uploads it to (moto) S3 with
credentials from an mTLS stand-in of the IoT credentials provider -> the file is gone. Off by
default, and then nothing is recorded or sent."""

import datetime as dt
import http.server
import io
import json
import ssl
import threading
import time

import numpy as np
import pytest
import soundfile

from cloud_sync.agent import Agent, load_agent_config
from device.contract.control_channel import RECORD_FILE, recordings_dir

from .emulator import IotCoreEmulator
from .test_agent import write_config


class CredentialsProvider:
    """HTTPS with a client certificate required, as the IoT credentials provider."""

    def __init__(self, pki):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                peer = self.connection.getpeercert()
                subject = dict(item for rdn in peer["subject"] for item in rdn)
                outer.requests.append({"path": self.path, "thing": self.headers.get("x-amzn-iot-thingname"),
                                       "certificate": subject.get("commonName")})
                if self.path != "/role-aliases/anc-recordings/credentials":
                    self.send_error(404)
                    return
                expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
                body = json.dumps({"credentials": {
                    "accessKeyId": "ASIATEST", "secretAccessKey": "secret", "sessionToken": "token",
                    "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        cert, key = pki.issue("localhost", server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(pki.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(Bucket="anc-recordings", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield s3


def recording_config(tmp_path, broker, pki, thing, enabled, endpoint="127.0.0.1:9"):
    defaults = load_agent_config()["recordings"]
    return write_config(tmp_path, broker, pki, thing, recordings={
        **defaults, "enabled": enabled, "credentials_endpoint": endpoint, "scan_interval_s": 0.1})


def runtime(cfg, headphone_estimate, tmp_path):
    from device.core.engine import AncEngine
    from device.core.ringbuffer import BlockRing
    from device.core.worker import Worker
    from device.rig.control import RuntimeControl

    cfg = cfg.replace("spool", path=str(tmp_path / "spool.sqlite"))
    worker = Worker(cfg, BlockRing(8, cfg.audio.block_size), AncEngine.from_config(cfg, headphone_estimate), )
    return worker, RuntimeControl(tmp_path / "state", worker)


def play(worker, control, seconds, seed=0):
    """The audio callback's side: push blocks of a known signal; the worker drains them."""
    rng = np.random.default_rng(seed)
    block = worker.block_size
    frames = int(seconds * worker.sample_rate) // block * block
    reference = (0.1 * rng.standard_normal(frames)).astype(np.float64)
    error = 0.5 * reference
    meta = np.zeros(4)
    for start in range(0, frames, block):
        worker.ring.push(reference[start:start + block], error[start:start + block], np.zeros(block), meta)
        if worker.ring.available() >= 4:
            worker.poll()
            control.poll()
    worker.poll()
    control.poll()
    return reference, error


def wait_for(predicate, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_record_job_is_recorded_by_the_runtime_uploaded_with_provider_credentials_and_removed(
        tmp_path, broker, pki, thing, aws, cfg, headphone_estimate):
    provider = CredentialsProvider(pki)
    config = recording_config(tmp_path, broker, pki, thing, True, provider.endpoint)
    worker, control = runtime(cfg, headphone_estimate, tmp_path)
    emulator = IotCoreEmulator(broker, pki)
    agent = Agent(load_agent_config(config))
    thread = threading.Thread(target=agent.run, kwargs={"max_seconds": 90})
    thread.start()
    pending = recordings_dir(tmp_path / "spool.sqlite")
    try:
        # Subscribed (SUBACKs in), or the job notification could go before the subscription.
        assert wait_for(lambda: agent.client.connected and not agent.client._pending_subscribe)
        emulator.notify_job("thing-1", "job-rec", {"operation": "record", "seconds": 0.5,
                                                   "mics": ["reference", "error"]})
        assert wait_for(lambda: (tmp_path / "state" / RECORD_FILE).exists())
        control.poll()  # the worker thread sees the request
        reference, error = play(worker, control, 0.6)
        assert wait_for(lambda: aws.list_objects_v2(Bucket="anc-recordings").get("KeyCount", 0) == 1)
        assert wait_for(lambda: not list(pending.glob("*.flac")))
    finally:
        agent.stop = True
        thread.join(timeout=30)
        emulator.stop()
        provider.stop()
    key = aws.list_objects_v2(Bucket="anc-recordings")["Contents"][0]["Key"]
    request = json.loads((tmp_path / "state" / RECORD_FILE).read_text())
    assert key == f"recordings/thing-1/{request['request_id']}.flac"
    data, rate = soundfile.read(io.BytesIO(aws.get_object(Bucket="anc-recordings", Key=key)["Body"].read()))
    frames = int(round(0.5 * worker.sample_rate))
    assert rate == worker.sample_rate and data.shape == (frames, 2)
    assert np.allclose(data[:, 0], reference[:frames], atol=2**-22) and np.allclose(data[:, 1], error[:frames],
                                                                                   atol=2**-22)
    assert provider.requests and all(r["thing"] == "thing-1" and r["certificate"] == "thing-1"
                                     for r in provider.requests)
    with emulator.lock:
        statuses = [body["status"] for job, body in emulator.job_updates if job == "job-rec"]
    assert statuses == ["IN_PROGRESS", "SUCCEEDED"]
    assert not list(pending.iterdir())  # nothing left on the device


def test_with_recordings_off_nothing_is_recorded_or_sent(tmp_path, broker, pki, thing, aws, cfg, headphone_estimate):
    provider = CredentialsProvider(pki)
    config = recording_config(tmp_path, broker, pki, thing, False, provider.endpoint)
    worker, control = runtime(cfg, headphone_estimate, tmp_path)
    pending = recordings_dir(tmp_path / "spool.sqlite")
    pending.mkdir(parents=True)
    stray = pending / "left-from-before.flac"
    soundfile.write(str(stray), np.zeros((480, 2)), 48000, format="FLAC", subtype="PCM_24")
    emulator = IotCoreEmulator(broker, pki)
    agent = Agent(load_agent_config(config))
    assert "recordings" not in [f.name for f in agent.features]
    thread = threading.Thread(target=agent.run, kwargs={"max_seconds": 60})
    thread.start()
    try:
        # Subscribed (SUBACKs in), or the job notification could go before the subscription.
        assert wait_for(lambda: agent.client.connected and not agent.client._pending_subscribe)
        emulator.notify_job("thing-1", "job-rec", {"operation": "record", "seconds": 0.5})

        def finished():
            with emulator.lock:
                return len([b for j, b in emulator.job_updates if j == "job-rec"]) >= 2

        assert wait_for(finished)
        play(worker, control, 0.6)
    finally:
        agent.stop = True
        thread.join(timeout=30)
        emulator.stop()
        provider.stop()
    with emulator.lock:
        final = [b for j, b in emulator.job_updates if j == "job-rec"][-1]
    assert final["status"] == "FAILED" and "recordings are disabled" in final["statusDetails"]["reason"]
    assert not (tmp_path / "state" / RECORD_FILE).exists()
    assert list(pending.iterdir()) == [stray]  # not uploaded, and the runtime recorded nothing new
    assert aws.list_objects_v2(Bucket="anc-recordings").get("KeyCount", 0) == 0
    assert provider.requests == []  # not even credentials were asked for


def test_recordings_are_bounded_by_their_budget(tmp_path):
    from device.core.recorder import Recorder

    recorder = Recorder(tmp_path / "rec", 8000)
    rng = np.random.default_rng(1)
    left, right = rng.uniform(-1, 1, (2, 8000))  # independent noise: FLAC hardly shrinks it
    one_second = 8000 * 2 * 3  # the bound of a 24-bit two-mic second
    for n in range(3):
        recorder.start({"request_id": f"r{n}", "seconds": 1.0, "mics": ["reference", "error"],
                        "budget_bytes": int(2.2 * one_second)})
        recorder.feed(left, right)
    assert sorted(p.name for p in (tmp_path / "rec").glob("*.flac")) == ["r1.flac", "r2.flac"]  # oldest removed
    assert (tmp_path / "rec").stat().st_mode & 0o777 == 0o770
    recorder.start({"request_id": "big", "seconds": 2.0, "mics": ["reference", "error"], "budget_bytes": one_second})
    assert not recorder.active and "over the" in recorder.last_error


@pytest.mark.parametrize("request_, message", [
    ({"request_id": "../x", "seconds": 1, "budget_bytes": 10}, "request_id"),
    ({"request_id": "a", "seconds": 600, "budget_bytes": 10}, "seconds"),
    ({"request_id": "a", "seconds": 1, "mics": ["left"], "budget_bytes": 10}, "mics"),
    ({"request_id": "a", "seconds": 1, "budget_bytes": 2**40}, "budget_bytes"),
])
def test_bad_record_requests_are_refused(tmp_path, request_, message):
    from device.contract.control_channel import write_record_request
    from device.contract.errors import UserError

    with pytest.raises(UserError, match=message):
        write_record_request(tmp_path, request_)
    assert not (tmp_path / RECORD_FILE).exists()


def test_recordings_alone_check_the_tls_identity_too(tmp_path, pki, thing, capsys):
    from cloud_sync.agent import main

    defaults = load_agent_config()
    config = write_config(tmp_path, None, pki, {**thing, "cert": tmp_path / "missing.crt"},
                          telemetry={"enabled": False}, shadow={"enabled": False},
                          jobs={**defaults["jobs"], "enabled": False, "models_dir": str(tmp_path / "models")},
                          recordings={**defaults["recordings"], "enabled": True})
    assert main(["--config", str(config), "run", "--seconds", "0"]) == 2
    err = capsys.readouterr().err
    assert "mqtt.cert_file: file not found" in err and err.count("\n") == 1


def test_a_recording_still_being_written_is_not_uploaded(tmp_path):
    """The runtime writes each FLAC through `atomic_path`: a hidden temporary beside the final
    name, which also ends in .flac. The uploader took one mid-write once (the rename then left
    it uploading a file that was gone); it lists finished recordings only."""
    from types import SimpleNamespace

    from cloud_sync.recordings import RecordingsFeature
    from device.contract.files import atomic_path

    directory = tmp_path / "recordings"
    feature = SimpleNamespace(directory=directory)
    with atomic_path(directory / "request-1.flac") as partial:
        partial.write_bytes(b"fLaC")
        assert list(directory.glob("*.flac")) == [partial]
        assert RecordingsFeature.pending(feature) == []
    assert RecordingsFeature.pending(feature) == [directory / "request-1.flac"]
