"""Kinesis Data Streams sink with boto3 ``put_records``.

One Kinesis record per spool record (JSON, newline-terminated so a Firehose/S3 consumer can
split them), partition key = the device id so a device's records stay ordered in one shard.
Batches stay within the API limits: 500 records, 5 MiB per call, 1 MiB per record (data plus
partition key). A partial failure (``FailedRecordCount`` > 0) retries only the failed entries,
with jittered exponential backoff; what succeeded is acked in the spool at once. Credentials
come from the standard boto3 chain (environment, profile, or the IoT credentials provider
through ``credential_process``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Callable, Iterable

from cloud_sync.backoff import Backoff

log = logging.getLogger(__name__)

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_BYTES_PER_RECORD = 1024 * 1024


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()


def pack_calls(records: Iterable[dict[str, Any]], partition_key: str
               ) -> tuple[list[list[tuple[str, dict[str, Any]]]], list[str]]:
    """Split records into put_records calls within the limits; returns (calls, oversize ids).

    Each call is a list of (record_id, entry) where entry is {"Data", "PartitionKey"}.
    """
    calls: list[list[tuple[str, dict[str, Any]]]] = []
    oversize: list[str] = []
    current: list[tuple[str, dict[str, Any]]] = []
    size = 0
    key_bytes = len(partition_key.encode())
    for record in records:
        data = encode(record)
        cost = len(data) + key_bytes
        if cost > MAX_BYTES_PER_RECORD:
            oversize.append(record["record_id"])
            continue
        if current and (len(current) >= MAX_RECORDS_PER_CALL or size + cost > MAX_BYTES_PER_CALL):
            calls.append(current)
            current, size = [], 0
        current.append((record["record_id"], {"Data": data, "PartitionKey": partition_key}))
        size += cost
    if current:
        calls.append(current)
    return calls, oversize


class KinesisSink:
    """put_records with retry of only the failed entries."""

    def __init__(self, client, stream_name: str, partition_key: str, max_attempts: int = 5,
                 backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.stream_name = stream_name
        self.partition_key = partition_key
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff(0.1, 5.0, random.Random(0))
        self.sleep = sleep
        self.stats = {"calls": 0, "records_ok": 0, "records_retried": 0, "last_error": None}

    def send_call(self, entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """One batch; returns the ids Kinesis accepted (all, unless attempts ran out)."""
        accepted: list[str] = []
        pending = entries
        self.backoff.reset()
        for attempt in range(self.max_attempts):
            if attempt:
                self.sleep(self.backoff.next_delay())
            self.stats["calls"] += 1
            try:
                response = self.client.put_records(StreamName=self.stream_name,
                                                   Records=[entry for _, entry in pending])
            except Exception as exc:  # throttling, network, credentials: retried, records stay in the spool
                self.stats["last_error"] = f"{exc.__class__.__name__}: {exc}"
                log.warning("put_records failed (attempt %d): %s", attempt + 1, self.stats["last_error"])
                continue
            failed = []
            for (record_id, entry), result in zip(pending, response["Records"]):
                if result.get("ErrorCode"):
                    failed.append((record_id, entry))
                else:
                    accepted.append(record_id)
            self.stats["records_ok"] += len(pending) - len(failed)
            if not failed:
                return accepted
            self.stats["records_retried"] += len(failed)
            self.stats["last_error"] = \
                next(r["ErrorCode"] for r in response["Records"] if r.get("ErrorCode"))
            pending = failed
        log.warning("%d records not accepted after %d attempts; they stay in the spool",
                    len(pending), self.max_attempts)
        return accepted


class KinesisForwarder:
    """Moves records from the spool to Kinesis; acks what was accepted."""

    def __init__(self, spool, sink: KinesisSink, window: int = 2000):
        self.spool, self.sink, self.window = spool, sink, window
        self.delivered = 0

    def step(self) -> int:
        records = self.spool.peek(self.window)
        if not records:
            return 0
        calls, oversize = pack_calls(records, self.sink.partition_key)
        if oversize:
            self.spool.discard(oversize, "oversize")
        done = 0
        for entries in calls:
            accepted = self.sink.send_call(entries)
            if accepted:
                self.spool.ack(accepted)
                done += len(accepted)
            if len(accepted) < len(entries):
                break  # Kinesis is unhappy: come back later rather than hammer it
        self.delivered += done
        return done
