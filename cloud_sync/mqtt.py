"""The agent's one MQTT connection to AWS IoT Core (or any MQTT 3.1.1 broker): paho-mqtt over mutual TLS.

The features that need MQTT (telemetry with ``sink: mqtt``, shadow, jobs) share this
connection; the agent opens it only when one of them is enabled.

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
never race the forwarder; nothing slow may run in a message handler (a job's download runs on
its own thread).

Faults it reports (``stats`` and ``last_error``, shown in the agent's health): a refused TCP or
TLS connect, a connection the broker closes before its CONNACK (a client certificate refused
during the handshake shows up this way with TLS 1.3), a refused CONNECT, a SUBACK with a
failure code (the policy does not allow that topic filter).
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as paho

from cloud_sync.backoff import Backoff
from cloud_sync.redact import clip

log = logging.getLogger(__name__)

IOT_CORE_MAX_MESSAGE_BYTES = 128 * 1024
IOT_CORE_MAX_PUBLISH_PER_S = 100  # per connection; we stay below it


def telemetry_topic(thing: str) -> str:
    return f"anc/{thing}/telemetry"


def health_topic(thing: str) -> str:
    return f"anc/{thing}/health"


# -- functional core ---------------------------------------------------------------------------
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
    """One paho connection with mutual TLS, own reconnect backoff, PUBACK and SUBACK bookkeeping."""

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
        self.client.on_subscribe = self._on_subscribe
        self.connected = False
        self._ever_connected = False
        self._closing = False
        self._next_attempt = 0.0
        self._inflight: dict[int, list[str]] = {}
        self._acked: list[str] = []
        self._handlers: dict[str, Callable[[str, bytes], None]] = {}
        self._pending_subscribe: dict[int, str] = {}
        self._connected_listeners: list[Callable[[], None]] = []
        self.on_connected: Callable[[], None] | None = None
        self.stats = {"connects": 0, "disconnects": 0, "published": 0, "puback": 0, "connect_failures": 0,
                      "subscribe_failures": 0}
        self.last_error: str | None = None
        self.refused_subscriptions: set[str] = set()

    def _fail(self, message: str, counter: str = "connect_failures") -> None:
        self.stats[counter] += 1
        self.last_error = message
        log.error("MQTT %s", message)

    # paho callbacks (run inside poll(), in the caller's thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._fail(f"connect refused by {self.settings.host}:{self.settings.port}: {reason_code}")
            return
        self.connected = True
        self.backoff.reset()
        self.stats["connects"] += 1
        log.info("MQTT connected to %s:%d as %s", self.settings.host, self.settings.port, self.settings.thing_name)
        for topic in self._handlers:
            self._subscribe(topic)
        for listener in list(self._connected_listeners):
            listener()
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._closing:
            log.info("MQTT disconnected (agent stopping)")
            self.connected = False
            return
        if self.connected:
            self.stats["disconnects"] += 1
            log.warning("MQTT disconnected: %s; %d messages in flight will be re-sent", reason_code,
                        len(self._inflight))
        else:
            # Closed before the CONNACK: with TLS 1.3 a broker that refuses the client
            # certificate does it after the client's side of the handshake is done.
            self._fail(f"connection to {self.settings.host}:{self.settings.port} closed before CONNACK "
                       f"({reason_code}): the broker refused the TLS handshake (client certificate not "
                       f"accepted?) or the MQTT CONNECT")
        self.connected = False
        self._schedule_retry()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ids = self._inflight.pop(mid, None)
        if ids is not None:
            self.stats["puback"] += 1
            self._acked.extend(ids)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        topic = self._pending_subscribe.pop(mid, None)
        if topic is None:
            return
        if any(code.is_failure for code in reason_codes):
            self.refused_subscriptions.add(topic)
            self._fail(f"subscription to {topic} refused by the broker (SUBACK {reason_codes[0]}): the "
                       f"certificate's policy does not allow it; is thing_name {self.settings.thing_name} "
                       f"the certificate's thing?", "subscribe_failures")
        else:
            self.refused_subscriptions.discard(topic)

    def _on_message(self, client, userdata, message) -> None:
        for pattern, handler in self._handlers.items():
            if paho.topic_matches_sub(pattern, message.topic):
                try:
                    handler(message.topic, message.payload)
                except Exception as exc:  # a bad message must not kill the network loop
                    log.error("handler for %s failed: %s", message.topic, clip(f"{exc.__class__.__name__}: {exc}"))

    def _schedule_retry(self) -> None:
        delay = self.backoff.next_delay()
        self._next_attempt = self.clock() + delay
        log.info("MQTT reconnect in %.2f s (attempt %d)", delay, self.backoff.attempt)

    def _subscribe(self, topic: str) -> None:
        result, mid = self.client.subscribe(topic, qos=1)
        if result == paho.MQTT_ERR_SUCCESS:
            self._pending_subscribe[mid] = topic

    # public API
    def add_connected_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every (re)connect, once the subscriptions are sent."""
        self._connected_listeners.append(listener)

    def remove_connected_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._connected_listeners:
            self._connected_listeners.remove(listener)

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        self._handlers[topic] = handler
        if self.connected:
            self._subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        if self._handlers.pop(topic, None) is not None and self.connected:
            self.client.unsubscribe(topic)

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
                self._fail(f"connect to {self.settings.host}:{self.settings.port} failed: "
                           f"{exc.__class__.__name__}: {exc}")
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

    def publish_batch(self, payload: bytes, record_ids: list[str],
                      topic: str | None = None) -> bool:
        """Publish one telemetry batch if the rate limit allows; PUBACK later acks `record_ids`."""
        if not self.can_publish() or not self.bucket.take():
            return False
        info = self.client.publish(topic or telemetry_topic(self.settings.thing_name), payload, qos=1)
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
        self._closing = True
        if self.connected:
            self.client.disconnect()
            self.client.loop(0.1)
        self.connected = False

