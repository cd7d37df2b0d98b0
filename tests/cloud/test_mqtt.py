"""MQTT sink against a real mosquitto with mutual TLS: batching, PUBACK, ACL, broker restarts."""

import collections
import json
import random
import threading
import time

import paho.mqtt.client as paho

from cloud_sync.mqtt import (IOT_CORE_MAX_MESSAGE_BYTES, Backoff, MqttClient, MqttForwarder, MqttSettings,
                             TokenBucket, pack_batches)
from device.contract.spool import Spool
from device.contract.records import RecordFactory

from .broker import EMULATOR_IDENTITY


def make_metrics(n, device="thing-1", pad=0):
    f = RecordFactory(device, "s1")
    return [f.processing_metric(latency_ms=0.3, cpu_utilization=0.1, memory_mb=40.0, cancellation_db=9.0,
                                algorithm="fxlms", extras={"i": i, "pad": "p" * pad}) for i in range(n)]


class Collector:
    """A second client (the emulator identity) that records every telemetry message."""

    def __init__(self, broker, pki, topic="anc/+/telemetry"):
        cert, key = pki.issue(EMULATOR_IDENTITY)
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="collector")
        self.client.tls_set(ca_certs=str(pki.ca_file), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def record_ids(self):
        with self.lock:
            return [r["record_id"] for _, p in self.messages for r in json.loads(p)["records"]]

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def settings(broker, pki, thing, **kw):
    return MqttSettings(host="127.0.0.1", port=broker.port, thing_name=thing["name"], ca_file=str(pki.ca_file),
                        cert_file=str(thing["cert"]), key_file=str(thing["key"]), **kw)


def pump(forwarder, until, steps=20000):
    for _ in range(steps):
        forwarder.step(0.005)
        if until():
            return True
    return False


def test_backoff_is_jittered_capped_and_seeded():
    a = [Backoff(0.5, 8.0, random.Random(7)).next_delay() for _ in range(3)]
    assert a[0] == a[1] == a[2]  # same seed, same delay
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert all(0 <= d <= min(8.0, 0.5 * 2 ** i) for i, d in enumerate(delays))
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.attempt == 0


def test_token_bucket_limits_the_publish_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.1
    assert bucket.take() and not bucket.take()


def test_pack_batches_respects_size_and_count_limits():
    records = [r.to_dict() for r in make_metrics(300, pad=1000)]
    records.append(make_metrics(1, pad=IOT_CORE_MAX_MESSAGE_BYTES)[0].to_dict())
    batches, oversize = pack_batches("thing-1", records, max_bytes=10 * 1024 ** 2, max_records=100)
    assert oversize == [records[-1]["record_id"]]
    assert all(len(payload) <= IOT_CORE_MAX_MESSAGE_BYTES for payload, _ in batches)
    assert all(len(ids) <= 100 for _, ids in batches)
    flat = [rid for _, ids in batches for rid in ids]
    assert flat == [r["record_id"] for r in records[:-1]]
    for payload, ids in batches:
        doc = json.loads(payload)
        assert doc["device_id"] == "thing-1" and [r["record_id"] for r in doc["records"]] == ids


def test_records_reach_the_broker_and_leave_the_spool_only_after_puback(tmp_path, broker, pki, thing):
    collector = Collector(broker, pki)
    spool = Spool(tmp_path / "spool.sqlite", 1 << 26)
    records = make_metrics(1500)
    spool.append(records)
    client = MqttClient(settings(broker, pki, thing, max_message_bytes=16 * 1024), rng=random.Random(0))
    forwarder = MqttForwarder(spool, client)
    try:
        assert pump(forwarder, lambda: spool.stats()["backlog_total"] == 0)
        assert pump(forwarder, lambda: len(collector.record_ids()) >= 1500, steps=2000)
    finally:
        client.close()
        collector.stop()
    got = collector.record_ids()
    assert set(got) == {r.record_id for r in records}
    assert all(len(p) <= 16 * 1024 for _, p in collector.messages)
    assert {t for t, _ in collector.messages} == {"anc/thing-1/telemetry"}
    stats = spool.stats()
    assert stats["acked"] == 1500 and forwarder.delivered == 1500 and client.stats["puback"] == len(collector.messages)


def test_acl_refuses_another_things_topic(broker, pki, thing):
    """The broker emulates the thing policy: thing-1 cannot publish as thing-2."""
    collector = Collector(broker, pki, topic="anc/#")
    client = MqttClient(settings(broker, pki, thing), rng=random.Random(0))
    try:
        for _ in range(500):
            client.poll(0.01)
            if client.connected:
                break
        info = client.client.publish("anc/thing-2/telemetry", b"{}", qos=1)
        client.client.publish("anc/thing-1/health", b"{}", qos=1)
        for _ in range(200):
            client.poll(0.01)
            if collector.messages:
                break
    finally:
        client.close()
        collector.stop()
    assert info.rc == paho.MQTT_ERR_SUCCESS
    assert [t for t, _ in collector.messages] == ["anc/thing-1/health"]


def test_broker_killed_and_restarted_mid_stream_delivers_every_record(tmp_path, broker, pki, thing):
    spool = Spool(tmp_path / "spool.sqlite", 1 << 26)
    records = make_metrics(3000)
    spool.append(records)
    client = MqttClient(settings(broker, pki, thing, max_records=50, publish_rate=200,
                                 backoff_base_s=0.05, backoff_cap_s=0.5), rng=random.Random(3))
    forwarder = MqttForwarder(spool, client)
    collector = Collector(broker, pki)
    seen = set()
    try:
        assert pump(forwarder, lambda: spool.stats()["acked"] >= 500 and client.inflight_ids())
        in_flight_at_kill = client.inflight_ids()
        time.sleep(0.3)  # stop stepping: the collector receives what the broker took; our PUBACKs stay unread
        seen.update(collector.record_ids())
        collector.stop()
        broker.kill()
        acked_before = spool.stats()["acked"]
        for _ in range(50):  # the agent keeps running while the broker is gone
            forwarder.step(0.005)
        assert not client.connected  # PUBACKs the broker sent before dying may still be read here
        broker.start()
        collector = Collector(broker, pki)
        assert pump(forwarder, lambda: spool.stats()["backlog_total"] == 0)
        assert pump(forwarder, lambda: len(set(collector.record_ids()) | seen) >= 3000, steps=2000)
    finally:
        client.close()
        collector.stop()
    delivered = collector.record_ids()
    every = set(delivered) | seen
    assert every == {r.record_id for r in records}  # nothing acknowledged was lost
    assert client.stats["disconnects"] >= 1 and client.stats["connects"] >= 2
    assert acked_before >= 500 and spool.stats()["acked"] == 3000
    # Messages in flight at the kill were re-sent (DUP) after the reconnect: a duplicate has the same id.
    assert in_flight_at_kill <= every
    counts = collections.Counter(delivered + sorted(seen))
    assert sum(counts.values()) >= 3000 and all(rid in every for rid in counts)
