"""The session shared by every backend: block ring, worker, records."""

import numpy as np
import pytest

from device.core.engine import AncEngine
from device.core.ringbuffer import BlockRing
from device.core.session import Session


def test_ring_keeps_order_and_drops_when_full_without_blocking():
    ring = BlockRing(4, 2)
    meta = np.zeros(4)
    for k in range(6):
        meta[1] = k
        ring.push(np.full(2, k), np.full(2, -k), np.full(2, 10 * k), meta)
    assert ring.dropped == 2 and ring.available() == 4
    reference, error, output, metas = ring.take(3)
    assert reference.tolist() == [0, 0, 1, 1, 2, 2]
    assert error.tolist() == [0, 0, -1, -1, -2, -2]
    assert metas[:, 1].tolist() == [0, 1, 2]
    ring.push(np.full(2, 9), np.full(2, 9), np.full(2, 9), meta)
    reference, *_ = ring.take()
    assert reference.tolist() == [3, 3, 9, 9]
    assert ring.available() == 0


class FakeRecords:
    """Stands in for device.contract.records.RecordFactory: the worker's side of the contract."""

    def __init__(self):
        self.made = []

    def _make(self, kind, fields):
        self.made.append((kind, fields))
        return (kind, fields)

    def session(self, **fields):
        return self._make("session", fields)

    def noise_detection(self, **fields):
        return self._make("noise_detection", fields)

    def processing_metric(self, **fields):
        return self._make("processing_metric", fields)


class ListSink:
    def __init__(self, fail_first=False):
        self.batches = []
        self.fail_first = fail_first

    def append(self, records):
        if self.fail_first:
            self.fail_first = False
            raise OSError("disk full")
        self.batches.append(list(records))


def _run_session(cfg, headphone, seconds, sink, records=None):
    engine = AncEngine.from_config(cfg.replace("safety", baseline_ms=20.0), headphone.full_secondary_path()[:256])
    session = Session(cfg, engine, spool=sink)
    if records is not None:
        session.worker.records = records
    rng = np.random.default_rng(0)
    fs, block = 48000, 32
    t = np.arange(int(seconds * fs)) / fs
    tone = 0.1 * np.sin(2 * np.pi * 200 * t)
    out = np.zeros(block)
    meta = np.zeros(4)
    for k in range(0, tone.size, block):
        meta[0] = k / fs
        meta[1] = 1e-4
        meta[2] = 1.0 if k == 64 * block else 0.0  # one xrun flag
        reference = tone[k:k + block] + rng.standard_normal(block) * 1e-4
        session.process_block(reference, tone[k:k + block] * 0.8, out, meta)
        if (k // block) % 50 == 0:
            session.poll()
    return session, session.stop()


def test_worker_writes_one_metric_per_interval_and_a_session_record(cfg, headphone):
    records, sink = FakeRecords(), ListSink()
    session, summary = _run_session(cfg, headphone, 3.0, sink, records)
    kinds = [kind for batch in sink.batches for kind, _ in batch]
    assert kinds.count("processing_metric") == 3
    assert kinds[-1] == "session"
    assert summary["total_samples"] == 3 * 48000
    metric = [fields for kind, fields in records.made if kind == "processing_metric"][0]
    assert metric["algorithm"] == "fxlms"
    assert metric["extras"]["xruns"] == 1
    assert metric["latency_ms"] == pytest.approx(0.1)
    assert 0 < metric["cpu_utilization"] < 1
    session_fields = [fields for kind, fields in records.made if kind == "session"][0]
    assert session_fields["sample_rate"] == 48000 and session_fields["status"] == "completed"


def test_worker_writes_to_the_spool_at_most_once_per_second_of_audio_and_everything_at_the_end(cfg, headphone):
    """One transaction (one fsync) per second of audio, not one per detection; stop writes the rest."""
    records, sink = FakeRecords(), ListSink()
    _run_session(cfg.replace("runtime", metrics_interval_s=0.25), headphone, 4.0, sink, records)
    assert len([fields for kind, fields in records.made if kind == "processing_metric"]) == 16
    assert 2 <= len(sink.batches) <= 4 + 1                        # 4 s of audio, plus the final flush
    assert all(len(batch) >= 3 for batch in sink.batches[:-1])   # a second's metrics written together
    delivered = [record for batch in sink.batches for record in batch]
    assert len(delivered) == len(records.made) and delivered[-1][0] == "session"


def test_spool_failure_keeps_records_for_the_next_try(cfg, headphone):
    records, sink = FakeRecords(), ListSink(fail_first=True)
    _run_session(cfg, headphone, 2.0, sink, records)
    delivered = [record for batch in sink.batches for record in batch]
    assert len(delivered) == len(records.made)  # nothing lost
