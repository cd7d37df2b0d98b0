"""Record envelope: ids, sequence, kinds, JSON round trip."""

import json

import pytest

from device.contract.records import KINDS, RecordFactory, from_dict


def _three(factory):
    return [
        factory.session(start_time="2026-01-01T00:00:00.000Z", end_time="2026-01-01T00:01:00.000Z",
                        sample_rate=48000, anc_enabled=True, anc_intensity=1.0, total_samples=2880000,
                        avg_cancellation_db=12.5, status="completed"),
        factory.noise_detection(noise_type="cafe", confidence=0.9, probabilities={"cafe": 0.9, "white": 0.1},
                                avg_power_db=-30.0, peak_frequency_hz=250.0),
        factory.processing_metric(latency_ms=0.4, cpu_utilization=0.2, memory_mb=80.0,
                                  cancellation_db=None, algorithm="fxlms", extras={"xruns": 0}),
        factory.alarm_detection(alarm_kind="siren", start_time="2026-01-01T00:00:10.000Z",
                                end_time="2026-01-01T00:00:14.000Z", detected_s=0.18, duration_s=4.0,
                                confidence=0.9, level_dbfs=-20.0, frequency_hz=900.0),
    ]


def test_factory_fills_the_envelope_and_round_trips():
    factory = RecordFactory("thing-1", "s1")
    records = _three(factory)
    assert [r.kind for r in records] == list(KINDS)
    assert len({r.record_id for r in records}) == len(KINDS)
    assert all(r.device_id == "thing-1" and r.session_id == "s1" for r in records)
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(KINDS)
    for record in records:
        data = json.loads(record.to_json())
        assert data["kind"] == record.kind and from_dict(data) == record
    assert records[1].timestamp.endswith("Z")


def test_sequence_is_monotonic_across_factories_even_with_a_stuck_clock():
    first = RecordFactory("thing-1", clock=lambda: 5_000_000)
    a = [first.processing_metric(latency_ms=0, cpu_utilization=0, memory_mb=0, cancellation_db=None,
                                 algorithm="fxlms").seq for _ in range(3)]
    assert a == [5000, 5001, 5002]
    restarted = RecordFactory("thing-1", clock=lambda: 6_000_000)
    assert restarted.session_id != first.session_id
    assert restarted.noise_detection(noise_type="white", confidence=1.0, probabilities={},
                                     avg_power_db=0.0, peak_frequency_hz=0.0).seq == 6000


def test_unknown_field_is_an_error():
    with pytest.raises(TypeError):
        RecordFactory("t").session(start_time="x", bogus=1)
    with pytest.raises(ValueError):
        RecordFactory("")
