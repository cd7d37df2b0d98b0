"""Delivery and trust properties of the agent, each one a promise the device makes.

At least once: a record leaves the outbox only after its sink acknowledged it, and an acked
record is gone for good. A record no sink can take is discarded and counted, not left to
block the queue. Only validated settings and verified models reach the runtime, and the agent
will not use a private key others can read. Every test has its own time limit, so a spool or
forwarder that never drains fails by name instead of hanging the run (see docs/mutation.md).
"""

import hashlib
import json
import os
import random
import signal

import boto3
import pytest
from botocore.stub import Stubber

from cloud_sync.identity import check_private_key
from cloud_sync.telemetry.kinesis import KinesisForwarder, KinesisSink
from cloud_sync.mqtt import MqttClient
from cloud_sync.telemetry.mqtt import MqttForwarder
from cloud_sync.shadow import ShadowSync, parse_delta
from device.contract.errors import UserError
from device.contract.spool import Spool

from .test_mqtt import Collector, make_metrics, pump, settings


# -- the outbox ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_acked_records_leave_the_outbox_for_good(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", 1 << 24)
    records = make_metrics(10)
    spool.append(records)
    acked = [r.record_id for r in records[:6]]
    assert spool.ack(acked) == 6
    left = [r["record_id"] for r in spool.peek(100)]
    assert left == [r.record_id for r in records[6:]]
    assert spool.stats()["backlog_total"] == 4 and spool.stats()["acked"] == 6
    assert spool.ack(acked) == 0  # already gone: nothing more removed, nothing counted twice
    assert spool.stats()["acked"] == 6
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite", 1 << 24)
    assert [r["record_id"] for r in reopened.peek(100)] == left
    reopened.close()


@pytest.mark.timeout(60)
def test_a_batch_stays_in_the_spool_until_its_puback(tmp_path, broker, pki, thing):
    """The broker is frozen (SIGSTOP) once the connection is up: batches go out until the
    in-flight window is full, no PUBACK comes back, and every record is still in the spool.
    Thawed, the PUBACKs arrive and the spool empties."""
    spool = Spool(tmp_path / "spool.sqlite", 1 << 24)
    client = MqttClient(settings(broker, pki, thing, max_records=20, max_inflight=10), rng=random.Random(0))
    forwarder = MqttForwarder(spool, client)
    frozen = False
    try:
        assert pump(forwarder, lambda: client.connected, steps=2000)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # before anything is published: no PUBACK can come
        frozen = True
        records = make_metrics(2000)
        spool.append(records)
        assert pump(forwarder, lambda: len(client.inflight_ids()) == 10 * 20, steps=4000), client.inflight_ids()
        for _ in range(100):
            forwarder.step(0.005)
        waiting = client.inflight_ids()
        stats = spool.stats()
        assert len(waiting) == 200 and stats["acked"] == 0 and stats["backlog_total"] == 2000, stats
        assert waiting <= {r["record_id"] for r in spool.peek(2000)}  # in flight, so still in the spool
        os.kill(broker.proc.pid, signal.SIGCONT)
        frozen = False
        assert pump(forwarder, lambda: spool.stats()["backlog_total"] == 0, steps=8000)
    finally:
        if frozen:
            os.kill(broker.proc.pid, signal.SIGCONT)
        client.close()
    assert spool.stats()["acked"] == 2000 and forwarder.delivered == 2000


@pytest.mark.timeout(60)
def test_mqtt_record_over_the_message_limit_is_discarded_counted_and_does_not_block_the_queue(
        tmp_path, broker, pki, thing):
    collector = Collector(broker, pki)
    spool = Spool(tmp_path / "spool.sqlite", 1 << 24)
    small_before, huge, small_after = make_metrics(5), make_metrics(1, pad=8000), make_metrics(5)
    spool.append(small_before + huge + small_after)
    client = MqttClient(settings(broker, pki, thing, max_message_bytes=4096), rng=random.Random(0))
    forwarder = MqttForwarder(spool, client)
    try:
        assert pump(forwarder, lambda: spool.stats()["backlog_total"] == 0, steps=2000), spool.stats()
        assert pump(forwarder, lambda: len(collector.record_ids()) >= 10, steps=1000)
    finally:
        client.close()
        collector.stop()
    stats = spool.stats()
    assert stats["dropped_oversize"] == 1 and forwarder.oversize_dropped == 1
    assert stats["acked"] == 10
    assert set(collector.record_ids()) == {r.record_id for r in small_before + small_after}


@pytest.mark.timeout(30)
def test_kinesis_record_over_the_record_limit_is_discarded_counted_and_the_rest_delivered(tmp_path, monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("kinesis", region_name="eu-west-1")
    stubber = Stubber(client)
    small, huge = make_metrics(3), make_metrics(1, pad=1024 * 1024)
    ok = {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}
    stubber.add_response("put_records", {"Records": [ok] * 3})
    spool = Spool(tmp_path / "s.sqlite", 1 << 24)
    spool.append(small[:1] + huge + small[1:])
    forwarder = KinesisForwarder(spool, KinesisSink(client, "s", "thing-1", sleep=lambda s: None))
    with stubber:
        assert forwarder.step() == 3
        stubber.assert_no_pending_responses()
    stats = spool.stats()
    assert stats["backlog_total"] == 0 and stats["dropped_oversize"] == 1 and stats["acked"] == 3


# -- what the agent trusts -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610, 0o601], ids=lambda m: f"{m:04o}")
def test_private_key_readable_by_group_or_others_is_refused(tmp_path, mode):
    key = tmp_path / "device.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")
    os.chmod(key, mode)
    with pytest.raises(UserError, match=f"mode {mode:04o}.*chmod 600") as info:
        check_private_key(key)
    assert "BEGIN" not in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=lambda m: f"{m:04o}")
def test_private_key_for_the_owner_alone_is_accepted(tmp_path, mode):
    key = tmp_path / "device.key"
    key.write_text("key")
    os.chmod(key, mode)
    check_private_key(key)


class _FakeMqtt:
    def __init__(self):
        self.published, self.handlers = [], {}

    def subscribe(self, topic, handler):
        self.handlers[topic] = handler

    def publish_json(self, topic, document, qos=1):
        self.published.append((topic, document))

    def add_connected_listener(self, listener):
        pass


@pytest.mark.parametrize("intensity", [-0.5, -1e-9, 1.0000001, 7])
def test_shadow_intensity_outside_0_1_is_rejected_whole_and_never_reaches_the_runtime(tmp_path, intensity):
    """A delta is all or nothing: with a bad intensity, the valid anc_enabled beside it is not
    applied either; desired.json is not written; reported.last_rejected names the key."""
    client = _FakeMqtt()
    shadow = ShadowSync(client, "thing-1", tmp_path, health=lambda: {})
    shadow.start()
    delta = json.dumps({"version": 12, "state": {"anc_enabled": False, "anc_intensity": intensity}}).encode()
    client.handlers["$aws/things/thing-1/shadow/update/delta"]("t", delta)
    assert not (tmp_path / "desired.json").exists()
    assert shadow.applied == []
    topic, document = client.published[-1]
    assert topic == "$aws/things/thing-1/shadow/update"
    rejected = document["state"]["reported"]["last_rejected"]
    assert rejected["version"] == 12 and "anc_intensity" in rejected["reason"]
    settings, reason, _ = parse_delta(delta)
    assert settings is None and "0..1" in reason


def test_shadow_intensity_inside_0_1_is_passed_on_unchanged(tmp_path):
    client = _FakeMqtt()
    ShadowSync(client, "thing-1", tmp_path, health=lambda: {}).start()
    for value in (0, 0.25, 1):
        client.handlers["$aws/things/thing-1/shadow/update/delta"](
            "t", json.dumps({"state": {"anc_intensity": value}}).encode())
        written = json.loads((tmp_path / "desired.json").read_text())["settings"]
        assert written == {"anc_intensity": float(value)}


def test_a_model_whose_bytes_are_not_the_jobs_digest_is_refused_even_with_a_matching_card(tmp_path):
    """The job and its card both name the genuine model; the bytes that arrive are different
    (tampered or truncated in transit). Only the download's own digest check can see it."""
    from cloud_sync.jobs import JobFailed, install_model
    from device.core import features

    genuine, tampered = b"genuine model bytes", b"tampered model bytes"
    digest = hashlib.sha256(genuine).hexdigest()
    card = json.dumps({"classes": ["white", "pink", "traffic", "office", "construction", "cafe"],
                       "n_features": features.N_FEATURES, "sha256": digest}).encode()
    models, state = tmp_path / "models", tmp_path / "state"

    def fetch(url, destination):
        destination.write_bytes(card if url.endswith(".json") else tampered)

    document = {"operation": "model-update", "url": "https://models.example/m.onnx", "sha256": digest,
                "card_url": "https://models.example/m.json", "card_sha256": hashlib.sha256(card).hexdigest()}
    with pytest.raises(JobFailed, match="sha256 mismatch"):
        install_model(document, models, state, fetch=fetch)
    assert not (models / "noise_classifier.onnx").exists() and not (state / "model.json").exists()
