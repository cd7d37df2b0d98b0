"""Telemetry over the shared MQTT connection: records packed into ``anc/<thing>/telemetry``
messages, acked in the spool on PUBACK."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable

from cloud_sync.mqtt import IOT_CORE_MAX_MESSAGE_BYTES, MqttClient, telemetry_topic  # noqa: F401 (MqttClient: type)
from device.contract.files import utc_now_iso

log = logging.getLogger(__name__)

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


class MqttForwarder:
    """Moves records from the spool to MQTT: peek, pack, publish, ack on PUBACK."""

    def __init__(self, spool, client: MqttClient, window: int = 2000):
        self.spool, self.client, self.window = spool, client, window
        self.topic = telemetry_topic(client.settings.thing_name)
        self.oversize_dropped = 0
        self.delivered = 0

    def step(self, timeout: float = 0.01) -> int:
        """Service the connection, then one round; returns the number of records newly acknowledged."""
        self.client.poll(timeout)
        return self.step_sink()

    def step_sink(self) -> int:
        """One round without servicing the connection (the agent's loop polls it once for every feature)."""
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
                if not self.client.publish_batch(payload, ids, self.topic):
                    break
        return len(acked)
