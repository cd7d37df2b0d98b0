"""Faults found by an independent harness, each reproduced: what the agent does now."""

import http.server
import json
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.agent import Agent, load_agent_config, main
from cloud_sync.jobs import JobFailed, JobsAgent, install_model
from cloud_sync.mqtt import MqttClient, MqttSettings
from cloud_sync.redact import REASON_LIMIT, redact_url
from cloud_sync.shadow import ShadowSync, parse_delta
from device.contract.model_card import verify_model
from device.contract.spool import Spool, footprint_limit
from device.contract.records import RecordFactory

from .broker import CLAIM_IDENTITY, Pki
from .emulator import IotCoreEmulator
from .test_agent import agent_log, run_agent, write_config
from .test_jobs import FakeClient, card_bytes, dirs, doc, old_files_untouched, sha  # noqa: F401 (fixture)

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


# -- 1. a model onnxruntime cannot load -------------------------------------------------------
def test_an_unloadable_model_with_a_matching_card_is_refused_before_the_swap(dirs):
    models, state, source = dirs  # b"new model bytes" with a card naming its sha256
    with pytest.raises(JobFailed, match="model does not load: ModelError: .*not a valid ONNX model"):
        install_model(doc(source), models, state, validate=verify_model)
    old_files_untouched(models, state)


def test_a_model_that_fails_to_load_once_installed_is_rolled_back(dirs):
    models, state, source = dirs
    calls = []

    def validate(path):  # passes on the download, fails on the installed pair
        calls.append(path)
        if len(calls) == 2:
            raise ValueError("session failed")

    with pytest.raises(JobFailed, match="installed model does not load.*previous model and card were put back"):
        install_model(doc(source), models, state, validate=validate)
    assert calls[1] == models / "noise_classifier.onnx"
    assert (models / "noise_classifier.onnx").read_bytes() == b"old model"
    assert (models / "noise_classifier.json").read_bytes() == card_bytes(b"old model")
    assert not (state / "model.json").exists()  # the runtime was never told about the bad model


def test_the_real_model_passes_the_load_test(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    onnx, card = REPO_MODELS / "noise_classifier.onnx", REPO_MODELS / "noise_classifier.json"
    document = {"operation": "model-update", "url": onnx.as_uri(), "sha256": sha(onnx.read_bytes()),
                "card_url": card.as_uri(), "card_sha256": sha(card.read_bytes())}
    install_model(document, models, state, validate=verify_model)
    assert verify_model(models / "noise_classifier.onnx").sha256 == document["sha256"]


# -- 2. a slow download -----------------------------------------------------------------------
class SlowServer:
    """HTTP server whose responses wait for `release` (or trickle one byte per `gap_s`)."""

    def __init__(self, body: bytes, gap_s: float | None = None):
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if gap_s is None:
                    outer.release.wait(30)
                    self.wfile.write(body)
                    return
                for i in range(len(body)):
                    if outer.release.is_set():
                        return
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(gap_s)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.server.server_port}/{name}?X-Amz-Signature=secret123"

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_download_runs_on_its_own_thread_and_the_mqtt_callback_returns_at_once(dirs):
    models, state, source = dirs
    model = source.read_bytes()
    server = SlowServer(model)
    client = FakeClient()
    jobs = JobsAgent(client, "thing-1", lambda d: install_model(d, models, state))
    jobs.start()
    try:
        document = doc(source, url=server.url("new.onnx"))
        payload = json.dumps({"execution": {"jobId": "job-1", "jobDocument": document}}).encode()
        client.handlers["$aws/things/thing-1/jobs/notify-next"]("t", payload)  # returns: the server still waits
        assert jobs.busy and client.published == [("$aws/things/thing-1/jobs/job-1/update", {"status": "IN_PROGRESS"})]
        assert jobs.step() == 0  # the agent's loop goes on (MQTT serviced, telemetry sent) meanwhile
        server.release.set()
        assert jobs.wait_idle()
    finally:
        server.stop()
    assert client.published[-1][1]["status"] == "SUCCEEDED"
    assert (models / "noise_classifier.onnx").read_bytes() == model


def test_a_download_over_its_deadline_fails_the_job_and_keeps_the_old_model(dirs, caplog):
    models, state, source = dirs
    server = SlowServer(b"x" * 1000, gap_s=0.05)
    client = FakeClient()
    jobs = JobsAgent(client, "thing-1", lambda d: install_model(d, models, state, timeout_s=0.5))
    jobs.start()
    caplog.set_level(logging.INFO)
    try:
        payload = json.dumps({"execution": {"jobId": "job-2", "jobDocument": doc(
            source, url=server.url("new.onnx"), sha256="0" * 64)}}).encode()
        client.handlers["$aws/things/thing-1/jobs/notify-next"]("t", payload)
        assert jobs.wait_idle()
    finally:
        server.stop()
    status = client.published[-1][1]
    assert status["status"] == "FAILED" and "not finished within the deadline" in status["statusDetails"]["reason"]
    assert "secret123" not in status["statusDetails"]["reason"] and "secret123" not in caplog.text
    old_files_untouched(models, state)


# -- 3. a client certificate refused during the handshake ---------------------------------------
def test_a_refused_handshake_is_counted_and_reported(tmp_path, broker):
    stranger = Pki(tmp_path / "other-ca")  # the broker does not trust this CA
    cert, key = stranger.issue("thing-1")
    client = MqttClient(MqttSettings(host="127.0.0.1", port=broker.port, thing_name="thing-1",
                                     ca_file=str(broker_ca(broker)), cert_file=str(cert), key_file=str(key),
                                     backoff_base_s=0.01, backoff_cap_s=0.02), rng=random.Random(0))
    for _ in range(300):
        client.poll(0.01)
        if client.stats["connect_failures"] >= 2:
            break
    client.close()
    assert not client.connected and client.stats["connect_failures"] >= 2
    assert "closed before CONNACK" in client.last_error and "client certificate" in client.last_error


def broker_ca(broker):
    return Path(broker.conf.read_text().split("cafile ")[1].split()[0])


def test_health_carries_the_handshake_failures(tmp_path, broker, pki, thing):
    stranger = Pki(tmp_path / "other-ca")
    cert, key = stranger.issue("thing-1")
    config = write_config(tmp_path, broker, pki, {"name": "thing-1", "cert": cert, "key": key})
    agent = Agent(load_agent_config(config), rng=random.Random(0))
    agent.run(max_seconds=1.5)
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["connected"] is False and status["connect_failures"] >= 1
    assert "closed before CONNACK" in status["last_error"]


# -- 4. rejected shadow values are bounded -------------------------------------------------------
def test_a_huge_rejected_value_gives_a_short_reason_log_line_and_report(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client = FakeClient()
    shadow = ShadowSync(client, "thing-1", tmp_path, lambda: {})
    shadow.start()
    delta = client.handlers["$aws/things/thing-1/shadow/update/delta"]
    delta("t", json.dumps({"state": {"preset": "x" * 1_000_000}, "version": 5}).encode())
    delta("t", json.dumps({"state": {"preset": "x" * 100_000}, "version": 6}).encode())
    delta("t", json.dumps({"state": {f"k{i}": 1 for i in range(50_000)}, "version": 7}).encode())
    delta("t", json.dumps({"state": {f"k{i}": 1 for i in range(10_000)}, "version": 8}).encode())
    delta("t", b"[" * 100_000 + b"]" * 100_000)
    delta("t", b"[" * 60_000 + b"]" * 60_000)  # under the size limit: json.loads would recurse 60,000 deep
    delta("t", b'{"state": ' + b'{"a": ' * 100 + b"1" + b"}" * 101)
    rejected = [document["state"]["reported"]["last_rejected"] for _, document in client.published]
    # The 10,000 unknown keys are other tools' to judge: nothing rejected, nothing applied, one short log line.
    assert [r["version"] for r in rejected] == [None, 6, None, None, None, None]
    reasons = [r["reason"] for r in rejected]
    assert all(len(reason) < REASON_LIMIT for reason in reasons)
    assert "over the 131072-byte limit" in reasons[0] and "over the 131072-byte limit" in reasons[2]
    assert reasons[1].startswith("shadow delta: preset: must be one of") and "more characters" in reasons[1]
    assert "over the 131072-byte limit" in reasons[3]
    assert "nested deeper" in reasons[4] and "nested deeper" in reasons[5]
    assert all(len(json.dumps(document)) < 2048 for _, document in client.published)
    assert max(len(record.getMessage()) for record in caplog.records) < 2048
    assert "10000 key(s) not handled" in caplog.text and "RecursionError" not in caplog.text
    assert not (tmp_path / "desired.json").exists()


def test_parse_delta_bounds():
    settings, reason, _ = parse_delta(b"x" * (200 * 1024))
    assert settings is None and "over the" in reason
    assert parse_delta(json.dumps({"state": {"anc_intensity": 0.5}}).encode())[0] == {"anc_intensity": 0.5}
    # Brackets inside strings are not nesting.
    _, reason, _ = parse_delta(json.dumps({"state": {"preset": "[" * 100}}).encode())
    assert reason.startswith("shadow delta: preset:")


# -- 5. the spool's files within the budget ------------------------------------------------------
@pytest.mark.parametrize("budget_mib", [0.5, 2.0])
def test_spool_files_stay_within_the_budget_plus_the_stated_margin(tmp_path, budget_mib):
    budget = int(budget_mib * 2**20)
    writer = Spool(tmp_path / "s.sqlite", budget)
    reader = Spool(tmp_path / "s.sqlite", budget)  # the agent: another connection acking
    factory = RecordFactory("thing-1", "s1")
    largest = 0
    for batch in range(int(budget_mib * 60)):  # about 6x the budget in records
        writer.append([factory.processing_metric(latency_ms=0.3, cpu_utilization=0.1, memory_mb=40.0,
                                                 cancellation_db=9.0, algorithm="fxlms", extras={"i": i})
                       for i in range(200)])
        if batch % 3 == 0:
            reader.ack([r["record_id"] for r in reader.peek(150)])
        largest = max(largest, writer.file_bytes())
    stats = writer.stats()
    assert sum(stats["dropped"].values()) > 0  # it did go over budget
    assert stats["bytes"] <= budget
    assert largest <= footprint_limit(budget), (largest, footprint_limit(budget))
    writer.close()
    reader.close()


def test_a_spool_made_before_auto_vacuum_is_converted_on_open(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    Spool(path, 1 << 20).close()
    assert sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone()[0] == 2


# -- 6. a certificate of another thing; refused subscriptions -----------------------------------
def test_a_certificate_issued_for_another_thing_is_refused_at_start(tmp_path, pki, thing, capsys):
    cert, key = pki.issue("thing-2")
    config = write_config(tmp_path, None, pki, {"name": "thing-1", "cert": cert, "key": key})
    assert main(["--config", str(config), "run", "--seconds", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cert) in err and "'thing-2'" in err and "'thing-1'" in err


def test_a_refused_subscription_is_an_error_in_the_health(pki, thing):
    client = MqttClient(MqttSettings(host="127.0.0.1", port=1, thing_name="thing-1", ca_file=str(pki.ca_file),
                                     cert_file=str(thing["cert"]), key_file=str(thing["key"])))
    client._pending_subscribe[7] = "$aws/things/thing-1/jobs/notify-next"
    client._on_subscribe(client.client, None, 7, [ReasonCode(PacketTypes.SUBACK, identifier=0x80)], None)
    assert client.stats["subscribe_failures"] == 1
    assert client.refused_subscriptions == {"$aws/things/thing-1/jobs/notify-next"}
    assert "subscription to $aws/things/thing-1/jobs/notify-next refused" in client.last_error


# -- 7. smaller ---------------------------------------------------------------------------------
def test_redact_url_drops_query_and_credentials():
    assert redact_url("https://user:pw@b.s3.amazonaws.com/m.onnx?X-Amz-Signature=abc") == \
        "https://b.s3.amazonaws.com/m.onnx?<query redacted>"
    assert redact_url("file:///tmp/m.onnx") == "file:///tmp/m.onnx"


def test_a_presigned_card_url_is_not_in_the_reason(dirs):
    models, state, source = dirs
    card = source.with_suffix(".json")
    with pytest.raises(JobFailed) as failure:
        install_model(doc(source, card_url=card.as_uri() + "?X-Amz-Signature=secret123",
                          card_sha256=sha(card_bytes(b"old model"))), models, state,
                      fetch=lambda url, dest: dest.write_bytes(card_bytes(b"old model")) if "json" in url
                      else dest.write_bytes(source.read_bytes()))
    assert "secret123" not in str(failure.value)


def test_provision_refuses_a_claim_key_readable_by_others(tmp_path, pki, thing, capsys):
    claim_cert, claim_key = pki.issue(CLAIM_IDENTITY)
    os.chmod(claim_key, 0o644)
    config = write_config(tmp_path, None, pki, thing)
    cfg = yaml.safe_load(config.read_text())
    cfg["provisioning"].update(claim_cert_file=str(claim_cert), claim_key_file=str(claim_key))
    config.write_text(yaml.safe_dump(cfg))
    try:
        assert main(["--config", str(config), "provision", "--serial", "anc-1"]) == 2
    finally:
        os.chmod(claim_key, 0o600)
    err = capsys.readouterr().err
    assert "claim key is readable by others" in err and str(claim_key) in err and err.count("\n") == 1


def test_provision_keeps_the_config_files_mode(tmp_path, broker, pki, thing, capsys):
    claim_cert, claim_key = pki.issue(CLAIM_IDENTITY)
    config = write_config(tmp_path, broker, pki, thing)
    cfg = yaml.safe_load(config.read_text())
    cfg["thing_name"] = None
    cfg["provisioning"].update(claim_cert_file=str(claim_cert), claim_key_file=str(claim_key),
                               credentials_dir=str(tmp_path / "creds"), timeout_s=10.0)
    config.write_text(yaml.safe_dump(cfg))
    os.chmod(config, 0o640)
    emulator = IotCoreEmulator(broker, pki)
    try:
        assert main(["--config", str(config), "provision", "--serial", "anc-0042"]) == 0
    finally:
        emulator.stop()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert load_agent_config(config)["thing_name"] == "anc-0042"


def test_sigterm_is_a_clean_stop_not_a_lost_connection(tmp_path, broker, pki, thing):
    config = write_config(tmp_path, broker, pki, thing)
    agent = run_agent(config)
    status = tmp_path / "state" / "status.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (status.exists() and json.loads(status.read_text())["connected"]):
        time.sleep(0.05)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    text = agent_log(config)
    assert "MQTT connected" in text
    after_stop = text.split("MQTT connected")[-1]
    assert "WARNING" not in after_stop and "reconnect in" not in after_stop
    assert "MQTT disconnected (agent stopping)" in after_stop


# -- the command line's TLS files ----------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("missing cert", "mqtt.cert_file: file not found"),
    ("missing ca", "mqtt.ca_file: file not found"),
    ("garbage cert", "mqtt.cert_file: not a PEM X.509 certificate"),
    ("garbage ca", "mqtt.ca_file: not a PEM CA certificate"),
    ("mismatched key", "mqtt.cert_file: does not match the private key"),
])
def test_bad_tls_files_are_one_line_naming_the_file(tmp_path, pki, thing, capsys, case, message):
    files = {"cert": thing["cert"], "key": thing["key"], "ca": pki.ca_file}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    if case == "missing cert":
        files["cert"] = tmp_path / "nope.crt"
    elif case == "missing ca":
        files["ca"] = tmp_path / "nope-ca.pem"
    elif case == "garbage cert":
        files["cert"] = garbage
    elif case == "garbage ca":
        files["ca"] = garbage
    else:
        files["key"] = pki.issue("thing-1-spare")[1]  # thing-1's certificate with another key
    config = write_config(tmp_path, None, pki, {"name": "thing-1", "cert": files["cert"], "key": files["key"]})
    cfg = yaml.safe_load(config.read_text())
    cfg["mqtt"]["ca_file"] = str(files["ca"])
    config.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(config), "run", "--seconds", "0"]) == 2
    err = capsys.readouterr().err
    named = files["ca"] if "ca" in case else files["cert"]
    assert message in err and str(named) in err and err.count("\n") == 1 and "Traceback" not in err


def test_status_into_a_closed_pipe_is_quiet(tmp_path, pki, thing):
    config = write_config(tmp_path, None, pki, thing)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `anc-cloud-sync status | head` after head has exited
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-m", "cloud_sync.agent", "--config", str(config), "status"],
                            stdout=write_end, stderr=subprocess.PIPE, env=env, text=True, timeout=60)
    os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""


def test_kinesis_sink_without_shadow_and_jobs_never_opens_mqtt(tmp_path, pki, thing):
    config = write_config(tmp_path, None, pki, thing, sink="kinesis", shadow={"enabled": False},
                          jobs=dict(yaml.safe_load(open("config/cloud_sync.yaml"))["jobs"], enabled=False,
                                    models_dir=str(tmp_path / "models")))
    code = ("import sys; from cloud_sync.agent import Agent, load_agent_config; "
            f"a = Agent(load_agent_config({str(config)!r})); "
            "print(a.client is None, [f.name for f in a.features], 'paho' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.getcwd(), AWS_DEFAULT_REGION="eu-west-1"))
    assert out.stdout.split() == ["True", "['telemetry']", "False"], out.stderr
