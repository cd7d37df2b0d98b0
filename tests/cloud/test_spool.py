"""Spool: durability, budget policy, corruption, two processes at once."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from device.contract.spool import Spool
from device.contract.records import RecordFactory


def metric(factory, pad=0):
    return factory.processing_metric(latency_ms=0.5, cpu_utilization=0.1, memory_mb=50.0, cancellation_db=10.0,
                                     algorithm="fxlms", extras={"pad": "x" * pad})


def detection(factory):
    return factory.noise_detection(noise_type="cafe", confidence=0.8, probabilities={"cafe": 0.8},
                                   avg_power_db=-40.0, peak_frequency_hz=300.0)


def session(factory):
    return factory.session(start_time="2026-01-01T00:00:00Z", end_time="2026-01-01T00:10:00Z", sample_rate=48000,
                           anc_enabled=True, anc_intensity=1.0, total_samples=1, avg_cancellation_db=None,
                           status="completed")


def test_append_peek_ack_and_counts(tmp_path):
    clock = [1000.0]
    spool = Spool(tmp_path / "s.sqlite", 1 << 20, clock=lambda: clock[0])
    f = RecordFactory("thing-1", "s1")
    records = [metric(f), detection(f), session(f)]
    assert spool.append(records) == 3
    assert spool.append(records[:1]) == 0  # same id twice is one record
    clock[0] = 1012.5
    peeked = spool.peek(10)
    assert [r["record_id"] for r in peeked] == [r.record_id for r in records]
    assert [r["kind"] for r in spool.peek(10, kinds=["session"])] == ["session"]
    assert spool.ack([records[0].record_id, "unknown"]) == 1
    stats = spool.stats()
    assert stats["backlog"] == {"processing_metric": 0, "noise_detection": 1, "session": 1, "alarm_detection": 0}
    assert stats["oldest_unsent_age_s"] == 12.5
    assert stats["appended"] == 3 and stats["acked"] == 1 and sum(stats["dropped"].values()) == 0
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite", 1 << 20)
    assert {r["record_id"] for r in reopened.peek(10)} == {records[1].record_id, records[2].record_id}


def test_budget_drops_oldest_metrics_first_and_counts_them(tmp_path):
    f = RecordFactory("thing-1", "s1")
    keep = [session(f), detection(f)]
    metrics = [metric(f, pad=900) for _ in range(40)]
    spool = Spool(tmp_path / "s.sqlite", 20_000)
    spool.append(keep)
    for i in range(0, 40, 5):
        spool.append(metrics[i:i + 5])
    stats = spool.stats()
    assert stats["bytes"] <= 20_000
    left = [r["record_id"] for r in spool.peek(1000, kinds=["processing_metric"])]
    dropped = stats["dropped"]["processing_metric"]
    assert dropped > 0 and dropped + len(left) == 40
    assert left == [m.record_id for m in metrics[dropped:]]  # the newest survive
    assert stats["backlog"]["session"] == 1 and stats["backlog"]["noise_detection"] == 1
    # Only sessions and detections left: the oldest of them go next, counted too.
    spool.ack(left)
    small = Spool(tmp_path / "s.sqlite", 1)
    small.append([detection(f)])
    stats = small.stats()
    assert stats["backlog_total"] == 0
    assert stats["dropped"]["noise_detection"] == 2 and stats["dropped"]["session"] == 1


def test_corrupt_file_is_moved_aside_and_a_new_spool_started(tmp_path, caplog):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path, 1 << 20)
    assert spool.moved_aside is not None and spool.moved_aside.read_bytes().startswith(b"this is not")
    assert "moved aside" in caplog.text and str(spool.moved_aside) in caplog.text
    assert spool.stats()["corrupt_files_moved"] == 1
    f = RecordFactory("t")
    assert spool.append([metric(f)]) == 1


@pytest.fixture
def service_umask():
    old = os.umask(0o027)  # stricter than the services' UMask=0007: the spool must not depend on it
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_new_spool_and_its_wal_are_group_writable_whatever_the_umask(tmp_path, service_umask):
    path = tmp_path / "s.sqlite"
    spool = Spool(path, 1 << 20)
    assert spool.append([metric(RecordFactory("t"))]) == 1
    assert mode(path) == 0o660
    assert mode(tmp_path / "s.sqlite-wal") == 0o660 and mode(tmp_path / "s.sqlite-shm") == 0o660
    spool.close()
    # The file a corrupt one is replaced with gets the same mode.
    path.write_bytes(b"this is not a database" * 100)
    for side in ("-wal", "-shm"):
        (tmp_path / f"s.sqlite{side}").unlink(missing_ok=True)
    spool = Spool(path, 1 << 20)
    assert spool.moved_aside is not None and spool.stats()["corrupt_files_moved"] == 1
    assert spool.append([metric(RecordFactory("t"))]) == 1
    assert mode(path) == 0o660 and mode(tmp_path / "s.sqlite-wal") == 0o660
    spool.close()


def test_an_existing_spool_keeps_its_mode(tmp_path, service_umask):
    path = tmp_path / "s.sqlite"
    Spool(path, 1 << 20).close()
    os.chmod(path, 0o640)  # an administrator's choice is not overridden
    spool = Spool(path, 1 << 20)
    assert spool.append([metric(RecordFactory("t"))]) == 1
    assert mode(path) == 0o640 and spool.moved_aside is None
    spool.close()


def test_rejects_non_records(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", 1 << 20)
    with pytest.raises(ValueError):
        spool.append([{"kind": "other", "record_id": "x"}])


WRITER = textwrap.dedent("""
    import sys
    from device.contract.spool import Spool
    from device.contract.records import RecordFactory
    spool = Spool(sys.argv[1], 1 << 30)
    f = RecordFactory("thing-1", "s1")
    n = 0
    while True:
        batch = [f.processing_metric(latency_ms=0.1, cpu_utilization=0.1, memory_mb=1.0, cancellation_db=None,
                                     algorithm="fxlms", extras={"n": n + i}) for i in range(20)]
        spool.append(batch)
        n += 20
        print(n, flush=True)
""")


def test_writer_killed_mid_stream_while_a_reader_acks_loses_nothing_committed(tmp_path):
    path = tmp_path / "s.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        committed = 0
        for line in proc.stdout:  # wait until the writer has committed a good number of batches
            committed = int(line)
            if committed >= 400:
                break
        reader = Spool(path, 1 << 30)
        delivered = set()
        for _ in range(5):  # the reader drains concurrently with the writer
            batch = reader.peek(50)
            delivered.update(r["extras"]["n"] for r in batch)
            reader.ack([r["record_id"] for r in batch])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        committed = max(committed, *(int(line) for line in proc.stdout.read().split() or ["0"]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader = Spool(path, 1 << 30)
    remaining = {r["extras"]["n"] for r in reader.peek(10**6)}
    everything = delivered | remaining
    assert delivered.isdisjoint(remaining)
    assert set(range(committed)) <= everything  # every batch reported committed is there
    stats = reader.stats()
    assert stats["appended"] == len(everything) and stats["acked"] == len(delivered)
