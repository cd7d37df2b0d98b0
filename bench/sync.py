"""Throughput of the cloud path: spool append, spool -> local TLS mosquitto (the real agent
process, default settings), spool -> moto Kinesis; and the agent's peak RSS.

Prints one JSON line per measurement.

    python bench/sync.py [--records 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from device.contract.spool import Spool  # noqa: E402
from device.contract.records import RecordFactory  # noqa: E402
from tests.cloud.broker import Broker, Pki  # noqa: E402


def metrics(n: int) -> list:
    """Processing-metric records shaped like the worker's (extras included)."""
    f = RecordFactory("thing-1")
    return [f.processing_metric(latency_ms=0.41, cpu_utilization=0.23, memory_mb=81.5, cancellation_db=11.2,
                                algorithm="fxlms",
                                extras={"callback_p50_ms": 0.2, "callback_max_ms": 0.9, "jitter_p99_ms": 0.1,
                                        "xruns": 0, "dropped_blocks": 0, "step_size": 0.01, "weight_norm": 1.2,
                                        "mode": "run", "noise_type": "traffic", "safety_events": []})
            for _ in range(n)]


def emit(**fields) -> None:
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), **fields}), flush=True)


def bench_append(tmp: Path, records: list) -> None:
    spool = Spool(tmp / "append.sqlite", 1 << 30)
    batch = 50  # the worker flushes about this many per second
    start = time.perf_counter()
    for i in range(0, len(records), batch):
        spool.append(records[i:i + batch])
    elapsed = time.perf_counter() - start
    emit(bench="spool_append", records=len(records), batch=batch, records_per_s=round(len(records) / elapsed))
    spool.close()


def bench_mqtt(tmp: Path, records: list) -> None:
    pki = Pki(tmp / "pki")
    broker = Broker(tmp / "broker", pki)
    broker.start()
    cert, key = pki.issue("thing-1")
    cfg = yaml.safe_load((ROOT / "config" / "cloud_sync.yaml").read_text())
    runtime = tmp / "runtime.yaml"  # the agent takes the spool and state directory from the runtime's file
    runtime.write_text(yaml.safe_dump({"runtime": {"state_dir": str(tmp / "state")},
                                       "spool": {"path": str(tmp / "mqtt.sqlite"), "budget_mb": 1024.0}}))
    cfg.update(thing_name="thing-1", runtime_config=str(runtime),
               status_file=str(tmp / "state" / "status.json"))
    cfg["mqtt"].update(endpoint="127.0.0.1", port=broker.port, ca_file=str(pki.ca_file), cert_file=str(cert),
                       key_file=str(key))
    cfg["jobs"]["models_dir"] = str(tmp / "models")
    config = tmp / "cloud_sync.yaml"
    config.write_text(yaml.safe_dump(cfg))
    spool = Spool(tmp / "mqtt.sqlite", 1 << 30)
    spool.append(records)
    agent = subprocess.Popen([sys.executable, "-m", "cloud_sync.agent", "--config", str(config), "run"],
                             cwd=ROOT, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        while spool.stats()["acked"] == 0:  # start the clock at the first delivery (connect excluded)
            time.sleep(0.002)
        start, first = time.perf_counter(), spool.stats()["acked"]
        while spool.stats()["backlog_total"]:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        status = Path(f"/proc/{agent.pid}/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        broker.kill()
    emit(bench="spool_to_mosquitto_tls", records=len(records) - first, max_message_kb=cfg["mqtt"]["max_message_kb"],
         publish_rate=cfg["mqtt"]["publish_rate"], records_per_s=round((len(records) - first) / elapsed),
         agent_peak_rss_mb=round(rss_kb / 1024, 1))


def bench_kinesis(tmp: Path, records: list) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="eu-west-1")
    import boto3
    from moto import mock_aws

    from cloud_sync.kinesis import KinesisForwarder, KinesisSink

    with mock_aws():
        client = boto3.client("kinesis", region_name="eu-west-1")
        client.create_stream(StreamName="anc", ShardCount=1)
        spool = Spool(tmp / "kinesis.sqlite", 1 << 30)
        spool.append(records)
        forwarder = KinesisForwarder(spool, KinesisSink(client, "anc", "thing-1"))
        start = time.perf_counter()
        while forwarder.step():
            pass
        elapsed = time.perf_counter() - start
    emit(bench="spool_to_moto_kinesis", records=forwarder.delivered,
         records_per_s=round(forwarder.delivered / elapsed), note="moto in-process, not AWS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50000)
    args = parser.parse_args()
    records = metrics(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_append(tmp, records)
        bench_mqtt(tmp, records)
        bench_kinesis(tmp, records[:20000])


if __name__ == "__main__":
    main()
