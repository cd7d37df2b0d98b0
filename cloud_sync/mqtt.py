"""MQTT sink to AWS IoT Core (or any MQTT 3.1.1 broker) with paho-mqtt over mutual TLS.

Topic layout under the thing name (the IoT policy grants exactly these):

* ``anc/<thing>/telemetry``  batches of records, QoS 1. Payload
  ``{"device_id": thing, "sent_at": ISO, "records": [record, ...]}``; at most
  ``max_message_bytes`` (never over IoT Core's 128 KB), at most ``max_records`` records.
* ``anc/<thing>/health``     the agent's health (connected, backlog, oldest unsent age, drops).
* ``$aws/things/<thing>/shadow/...`` and ``$aws/things/<thing>/jobs/...`` as AWS defines them.

At least once: a record is acked in the spool only after the PUBACK of the message that
carried it. Messages in flight when the connection drops stay in paho's queue and are re-sent
(DUP) after the reconnect; if the agent dies they are still in the spool and go again, with
the same record ids. The network loop runs in the caller's thread (`poll`), so the callbacks
never race the forwarder.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import paho.mqtt.client as paho

from device.contract.files import utc_now_iso

log = logging.getLogger(__name__)

IOT_CORE_MAX_MESSAGE_BYTES = 128 * 1024
IOT_CORE_MAX_PUBLISH_PER_S = 100  # per connection; we stay below it


def telemetry_topic(thing: str) -> str:
    return f"anc/{thing}/telemetry"


def health_topic(thing: str) -> str:
    return f"anc/{thing}/health"


# -- functional core ---------------------------------------------------------------------------
class Backoff:
    """Exponential backoff with full jitter: delay = U(0, min(cap, base * 2**attempt))."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 60.0, rng: random.Random | None = None):
        self.base_s, self.cap_s = base_s, cap_s
        self.rng = rng or random.Random(0)
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class TokenBucket:
    """Publish rate limit: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


def _envelope(thing: str, parts: list[str]) -> bytes:
    return (f'{{"device_id":{json.dumps(thing)},"sent_at":"{utc_now_iso()}","records":['
            + ",".join(parts) + "]}").encode()


_ENVELOPE_OVERHEAD = 120 + 2  # device_id/sent_at keys and brackets, thing name added per call


def pack_batches(thing: str, records: Iterable[dict[str, Any]], max_bytes: int, max_records: int
                 ) -> tuple[list[tuple[bytes, list[str]]], list[str]]:
    """Group records into payloads within the limits; returns (batches, ids too big to send).

    Each batch is (payload, record ids). A record that cannot fit alone is returned in the
    second list so the caller can count and drop it rather than block the queue forever.
    """
    max_bytes = min(max_bytes, IOT_CORE_MAX_MESSAGE_BYTES)
    room = max_bytes - _ENVELOPE_OVERHEAD - len(json.dumps(thing))
    batches, oversize = [], []
    parts: list[str] = []
    ids: list[str] = []
    size = 0
    for record in records:
        text = json.dumps(record, separators=(",", ":"), sort_keys=True)
        cost = len(text.encode()) + 1
        if cost > room:
            oversize.append(record["record_id"])
            continue
        if parts and (size + cost > room or len(parts) >= max_records):
            batches.append((_envelope(thing, parts), ids))
            parts, ids, size = [], [], 0
        parts.append(text)
        ids.append(record["record_id"])
        size += cost
    if parts:
        batches.append((_envelope(thing, parts), ids))
    return batches, oversize


# -- imperative shell --------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    thing_name: str
    ca_file: str
    cert_file: str
    key_file: str
    keepalive_s: int = 60
    max_message_bytes: int = IOT_CORE_MAX_MESSAGE_BYTES
    max_records: int = 500
    max_inflight: int = 20
    publish_rate: float = 50.0  # messages per second
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0


class MqttClient:
    """One paho connection with mutual TLS, own reconnect backoff, PUBACK bookkeeping."""

    def __init__(self, settings: MqttSettings, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s, rng)
        self.bucket = TokenBucket(settings.publish_rate, max(1.0, settings.publish_rate / 5), clock)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=settings.thing_name,
                                  clean_session=True, protocol=paho.MQTTv311, reconnect_on_failure=False)
        self.client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file, keyfile=settings.key_file,
                            cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.max_inflight_messages_set(settings.max_inflight)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.connected = False
        self._ever_connected = False
        self._next_attempt = 0.0
        self._inflight: dict[int, list[str]] = {}
        self._acked: list[str] = []
        self._handlers: dict[str, Callable[[str, bytes], None]] = {}
        self.on_connected: Callable[[], None] | None = None
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "puback": 0, "connect_failures": 0}
        self.last_error: str | None = None

    # paho callbacks (run inside poll(), in the caller's thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connect refused: {reason_code}"
            log.warning("MQTT %s", self.last_error)
            return
        self.connected = True
        self.backoff.reset()
        self.stats["connects"] += 1
        log.info("MQTT connected to %s:%d as %s", self.settings.host, self.settings.port, self.settings.thing_name)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            self.stats["disconnects"] += 1
            log.warning("MQTT disconnected: %s; %d messages in flight will be re-sent", reason_code,
                        len(self._inflight))
        self.connected = False
        self._schedule_retry()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ids = self._inflight.pop(mid, None)
        if ids is not None:
            self.stats["puback"] += 1
            self._acked.extend(ids)

    def _on_message(self, client, userdata, message) -> None:
        for pattern, handler in self._handlers.items():
            if paho.topic_matches_sub(pattern, message.topic):
                try:
                    handler(message.topic, message.payload)
                except Exception:  # a bad message must not kill the network loop
                    log.exception("handler for %s failed", message.topic)

    def _schedule_retry(self) -> None:
        delay = self.backoff.next_delay()
        self._next_attempt = self.clock() + delay
        log.info("MQTT reconnect in %.2f s (attempt %d)", delay, self.backoff.attempt)

    # public API
    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        self._handlers[topic] = handler
        if self.connected:
            self.client.subscribe(topic, qos=1)

    def poll(self, timeout: float = 0.01) -> None:
        """Run the network loop once; connect or reconnect when the backoff allows."""
        if not self.connected and self.clock() >= self._next_attempt and not self._connecting():
            try:
                if self._ever_connected:
                    self.client.reconnect()
                else:
                    self.client.connect(self.settings.host, self.settings.port, self.settings.keepalive_s)
                    self._ever_connected = True
            except (OSError, ssl.SSLError) as exc:
                self.stats["connect_failures"] += 1
                self.last_error = f"connect failed: {exc.__class__.__name__}: {exc}"
                log.warning("MQTT %s", self.last_error)
                self._schedule_retry()
                return
        if self._ever_connected and self.client.socket() is not None:
            rc = self.client.loop(timeout)
            if rc != paho.MQTT_ERR_SUCCESS and self.connected:
                self._on_disconnect(self.client, None, None, rc, None)
        else:
            time.sleep(timeout)

    def _connecting(self) -> bool:
        return self._ever_connected and self.client.socket() is not None and not self.connected

    def can_publish(self) -> bool:
        return self.connected and len(self._inflight) < self.settings.max_inflight

    def publish_batch(self, payload: bytes, record_ids: list[str]) -> bool:
        """Publish one telemetry batch if the rate limit allows; PUBACK later acks `record_ids`."""
        if not self.can_publish() or not self.bucket.take():
            return False
        info = self.client.publish(telemetry_topic(self.settings.thing_name), payload, qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            return False
        self._inflight[info.mid] = record_ids
        self.stats["published"] += 1
        return True

    def publish_json(self, topic: str, document: Any, qos: int = 1) -> None:
        if self.connected:
            self.client.publish(topic, json.dumps(document, separators=(",", ":")), qos=qos)

    def take_acked(self) -> list[str]:
        acked, self._acked = self._acked, []
        return acked

    def inflight_ids(self) -> set[str]:
        return {rid for ids in self._inflight.values() for rid in ids}

    def close(self) -> None:
        if self.connected:
            self.client.disconnect()
            self.client.loop(0.1)
        self.connected = False


class MqttForwarder:
    """Moves records from the spool to MQTT: peek, pack, publish, ack on PUBACK."""

    def __init__(self, spool, client: MqttClient, window: int = 2000):
        self.spool, self.client, self.window = spool, client, window
        self.oversize_dropped = 0
        self.delivered = 0

    def step(self, timeout: float = 0.01) -> int:
        """One round; returns the number of records newly acknowledged."""
        self.client.poll(timeout)
        acked = self.client.take_acked()
        if acked:
            self.spool.ack(acked)
            self.delivered += len(acked)
        if self.client.can_publish():
            inflight = self.client.inflight_ids()
            records = [r for r in self.spool.peek(self.window + len(inflight)) if r["record_id"] not in inflight]
            settings = self.client.settings
            batches, oversize = pack_batches(settings.thing_name, records[:self.window],
                                             settings.max_message_bytes, settings.max_records)
            if oversize:  # cannot ever be sent over MQTT: count, log and remove so the queue moves
                log.error("dropping %d records larger than the %d-byte message limit", len(oversize),
                          settings.max_message_bytes)
                self.spool.discard(oversize, "oversize")
                self.oversize_dropped += len(oversize)
            for payload, ids in batches:
                if not self.client.publish_batch(payload, ids):
                    break
        return len(acked)
