"""The agent process: config, key permissions, SIGKILL mid-batch, shadow deltas, status."""

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import yaml

from cloud_sync.agent import main
from device.contract.spool import Spool
from device.core import features
from device.contract.control_channel import read_desired, write_reported

from .emulator import IotCoreEmulator
from .test_mqtt import Collector, make_metrics


def write_config(tmp_path, broker, pki, thing, **changes):
    cfg = yaml.safe_load(open("config/cloud_sync.yaml"))
    runtime = tmp_path / "runtime.yaml"  # the agent takes the spool and state directory from the runtime's file
    runtime.write_text(yaml.safe_dump({"runtime": {"state_dir": str(tmp_path / "state")},
                                       "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    cfg.update(thing_name=thing["name"], runtime_config=str(runtime),
               status_file=str(tmp_path / "state" / "status.json"), health_interval_s=0.2)
    cfg["mqtt"].update(endpoint="127.0.0.1", port=broker.port if broker else 8883, ca_file=str(pki.ca_file),
                       cert_file=str(thing["cert"]), key_file=str(thing["key"]), max_records=100,
                       backoff_base_s=0.05, backoff_cap_s=0.5)
    cfg["jobs"]["models_dir"] = str(tmp_path / "models")
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "cloud_sync.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_errors_and_readable_keys_exit_2_with_one_line(tmp_path, pki, thing, capsys):
    path = write_config(tmp_path, None, pki, thing, sink="carrier-pigeon")
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert "sink" in err and "carrier-pigeon" in err and err.count("\n") == 1
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(thing["key"].read_bytes())
    os.chmod(loose_key, 0o644)
    path = write_config(tmp_path, None, pki, {**thing, "key": loose_key})
    assert main(["--config", str(path), "run", "--seconds", "0"]) == 2
    err = capsys.readouterr().err
    assert "readable by others" in err and "BEGIN" not in err


def test_status_reports_backlog_and_drops(tmp_path, pki, thing, capsys):
    path = write_config(tmp_path, None, pki, thing)
    Spool(tmp_path / "spool.sqlite", 1 << 20).append(make_metrics(7))
    assert main(["--config", str(path), "status"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spool"]["backlog"]["processing_metric"] == 7 and report["thing_name"] == "thing-1"


def run_agent(config, seconds=60):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    log = open(config.parent / "agent.log", "a")  # a file, not a pipe nobody reads
    return subprocess.Popen([sys.executable, "-m", "cloud_sync.agent", "--config", str(config), "run",
                             "--seconds", str(seconds)], env=env, stderr=log)


def agent_log(config):
    text = (config.parent / "agent.log").read_text()
    assert "PRIVATE KEY" not in text  # no secrets in logs
    return text


def test_agent_sigkilled_mid_batch_then_restarted_delivers_everything(tmp_path, broker, pki, thing):
    config = write_config(tmp_path, broker, pki, thing)
    spool = Spool(tmp_path / "spool.sqlite", 1 << 26)
    records = make_metrics(20000)
    spool.append(records)
    collector = Collector(broker, pki)
    agent = run_agent(config)
    try:
        deadline = time.monotonic() + 60
        while spool.stats()["acked"] < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        agent.send_signal(signal.SIGKILL)  # mid-stream: messages are in flight
        agent.wait()
        acked_at_kill = spool.stats()["acked"]
        assert 2000 <= acked_at_kill < 20000
        agent = run_agent(config)
        deadline = time.monotonic() + 90
        while spool.stats()["backlog_total"] and time.monotonic() < deadline:
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while len(set(collector.record_ids())) < 20000 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        collector.stop()
    got = collector.record_ids()
    assert set(got) == {r.record_id for r in records}
    duplicates = sum(c - 1 for c in collections.Counter(got).values())
    stats = spool.stats()
    assert stats["backlog_total"] == 0 and stats["acked"] == 20000  # each record acked exactly once
    assert len(got) == 20000 + duplicates  # the counts add up; duplicates carry the same id
    agent_log(config)


def test_shadow_delta_applied_and_malformed_delta_rejected(tmp_path, broker, pki, thing):
    config = write_config(tmp_path, broker, pki, thing)
    state = tmp_path / "state"
    write_reported(state, {"anc_enabled": True, "anc_intensity": 1.0, "preset": "auto", "model_sha256": "abc"})
    emulator = IotCoreEmulator(broker, pki)
    agent = run_agent(config)

    def wait_for(predicate, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def reports():
        with emulator.lock:
            return [body["state"]["reported"] for t, body in emulator.shadow_updates if t == "thing-1"]

    try:
        assert wait_for(lambda: reports())  # reported on connect, with health
        first = reports()[0]
        assert first["runtime"]["model_sha256"] == "abc" and "backlog_total" in first["agent"]
        emulator.send_delta("thing-1", {"anc_intensity": 0.5, "preset": "traffic"}, version=3)
        assert wait_for(lambda: read_desired(state) == {"anc_intensity": 0.5, "preset": "traffic"})
        emulator.send_delta("thing-1", {"anc_intensity": 5, "anc_enabled": False}, version=4)
        emulator.send_raw_delta("thing-1", b"{not json")
        assert wait_for(lambda: sum(1 for r in reports() if r.get("last_rejected")) >= 2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        emulator.stop()
    assert read_desired(state) == {"anc_intensity": 0.5, "preset": "traffic"}  # the invalid delta changed nothing
    rejected = [r["last_rejected"] for r in reports() if r.get("last_rejected")]
    assert any(r["version"] == 4 and "anc_intensity" in r["reason"] for r in rejected)
    assert any("not JSON" in r["reason"] for r in rejected)
    assert agent.returncode == 0


def test_model_update_job_with_a_wrong_checksum_fails_and_a_good_one_succeeds(tmp_path, broker, pki, thing):
    config = write_config(tmp_path, broker, pki, thing)
    models = tmp_path / "models"
    models.mkdir()
    (models / "noise_classifier.onnx").write_bytes(b"old model")
    new = tmp_path / "new.onnx"
    new.write_bytes(b"new model")
    card = tmp_path / "new.json"  # the runtime loads a model only with a card naming its sha256
    card.write_bytes(json.dumps({"classes": ["cafe", "office"], "n_features": features.N_FEATURES,
                                 "sha256": hashlib.sha256(b"new model").hexdigest()}).encode())
    emulator = IotCoreEmulator(broker, pki)
    agent = run_agent(config)

    def updates(job):
        with emulator.lock:
            return [body for j, body in emulator.job_updates if j == job]

    def wait_for(predicate, seconds=20):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.05)
        return predicate()

    try:
        assert wait_for(lambda: (tmp_path / "state" / "status.json").exists()
                        and json.loads((tmp_path / "state" / "status.json").read_text())["connected"])
        bad = {"operation": "model-update", "url": new.as_uri(), "sha256": "0" * 64}
        emulator.notify_job("thing-1", "job-bad", bad)
        assert wait_for(lambda: len(updates("job-bad")) >= 2)
        good = dict(bad, sha256=hashlib.sha256(b"new model").hexdigest(), card_url=card.as_uri(),
                    card_sha256=hashlib.sha256(card.read_bytes()).hexdigest())
        emulator.notify_job("thing-1", "job-good", good)
        assert wait_for(lambda: len(updates("job-good")) >= 2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        emulator.stop()
    failed = updates("job-bad")
    assert [u["status"] for u in failed] == ["IN_PROGRESS", "FAILED"]
    assert "sha256 mismatch" in failed[1]["statusDetails"]["reason"]
    assert [u["status"] for u in updates("job-good")] == ["IN_PROGRESS", "SUCCEEDED"]
    assert (models / "noise_classifier.onnx").read_bytes() == b"new model"
    assert (models / "noise_classifier.onnx.previous").read_bytes() == b"old model"
    assert (models / "noise_classifier.json").read_bytes() == card.read_bytes()
    assert json.loads((tmp_path / "state" / "model.json").read_text())["action"] == "reload"
    agent_log(config)


def test_kinesis_sink_mode_drains_the_spool_into_the_stream(tmp_path, broker, pki, thing, monkeypatch):
    import threading

    import boto3
    from moto import mock_aws

    from cloud_sync.agent import Agent, load_agent_config

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    config = write_config(tmp_path, broker, pki, thing, sink="kinesis")
    records = make_metrics(1500)
    Spool(tmp_path / "spool.sqlite", 1 << 26).append(records)
    with mock_aws():
        client = boto3.client("kinesis", region_name="eu-west-1")
        client.create_stream(StreamName="anc-telemetry", ShardCount=1)
        agent = Agent(load_agent_config(config))
        watcher = Spool(tmp_path / "spool.sqlite", 1 << 26)

        def stop_when_drained():
            while watcher.stats()["backlog_total"] and not agent.stop:
                time.sleep(0.02)
            agent.stop = True

        thread = threading.Thread(target=stop_when_drained)
        thread.start()
        agent.run(max_seconds=60)
        agent.stop = True
        thread.join()
        shard = client.describe_stream(StreamName="anc-telemetry")["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = client.get_shard_iterator(StreamName="anc-telemetry", ShardId=shard,
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        got = client.get_records(ShardIterator=iterator, Limit=10000)["Records"]
    assert {json.loads(r["Data"])["record_id"] for r in got} == {r.record_id for r in records}
    assert watcher.stats()["acked"] == 1500
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["sink"] == "kinesis" and status["backlog_total"] == 0 and status["delivered_this_run"] == 1500
