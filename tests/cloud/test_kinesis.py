"""Kinesis sink: moto for the real API shape, botocore Stubber for partial failures."""

import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from cloud_sync.kinesis import (MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, KinesisForwarder, KinesisSink,
                                pack_calls)
from device.contract.spool import Spool
from device.contract.records import RecordFactory


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(key, value)


def metrics(n, pad=0):
    f = RecordFactory("thing-1", "s1")
    return [f.processing_metric(latency_ms=0.2, cpu_utilization=0.1, memory_mb=30.0, cancellation_db=None,
                                algorithm="fxlms", extras={"i": i, "pad": "x" * pad}) for i in range(n)]


def test_pack_calls_stays_within_api_limits():
    records = [r.to_dict() for r in metrics(1200)] + [r.to_dict() for r in metrics(12, pad=600_000)]
    records.append(metrics(1, pad=1024 * 1024)[0].to_dict())
    calls, oversize = pack_calls(records, "thing-1")
    assert oversize == [records[-1]["record_id"]]
    for call in calls:
        assert len(call) <= MAX_RECORDS_PER_CALL
        assert sum(len(e["Data"]) + len(e["PartitionKey"]) for _, e in call) <= MAX_BYTES_PER_CALL
    assert [rid for call in calls for rid, _ in call] == [r["record_id"] for r in records[:-1]]


def test_spool_to_moto_kinesis_delivers_every_record_with_the_device_partition_key(tmp_path):
    with mock_aws():
        client = boto3.client("kinesis", region_name="eu-west-1")
        client.create_stream(StreamName="anc-telemetry", ShardCount=1)
        spool = Spool(tmp_path / "s.sqlite", 1 << 26)
        records = metrics(1234)
        spool.append(records)
        forwarder = KinesisForwarder(spool, KinesisSink(client, "anc-telemetry", "thing-1"))
        for _ in range(10):  # 1234 records are 3 calls; a spool whose acks do nothing would loop for ever
            if not forwarder.step():
                break
        assert spool.stats()["backlog_total"] == 0, spool.stats()
        shard = client.describe_stream(StreamName="anc-telemetry")["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = client.get_shard_iterator(StreamName="anc-telemetry", ShardId=shard,
                                             ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        got = []
        while True:
            out = client.get_records(ShardIterator=iterator, Limit=10000)
            got.extend(out["Records"])
            if not out["Records"]:
                break
            iterator = out["NextShardIterator"]
    assert [json.loads(r["Data"])["record_id"] for r in got] == [r.record_id for r in records]
    assert {r["PartitionKey"] for r in got} == {"thing-1"}
    assert spool.stats()["backlog_total"] == 0 and spool.stats()["acked"] == 1234


def test_partial_failure_retries_only_the_failed_records(tmp_path):
    client = boto3.client("kinesis", region_name="eu-west-1")
    stubber = Stubber(client)
    records = metrics(4)
    ok = {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}
    throttled = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
    stubber.add_response("put_records", {"FailedRecordCount": 2, "Records": [ok, throttled, ok, throttled]})
    # The retry carries only records 1 and 3, in order; the first of them fails again.
    retry_1 = {"StreamName": "s", "Records": [{"Data": pack_calls([records[i].to_dict()], "thing-1")[0][0][0][1]["Data"],
                                               "PartitionKey": "thing-1"} for i in (1, 3)]}
    stubber.add_response("put_records", {"FailedRecordCount": 1, "Records": [throttled, ok]}, retry_1)
    stubber.add_client_error("put_records", service_error_code="InternalFailure", http_status_code=500)
    stubber.add_response("put_records", {"Records": [ok]})
    sleeps = []
    spool = Spool(tmp_path / "s.sqlite", 1 << 20)
    spool.append(records)
    sink = KinesisSink(client, "s", "thing-1", sleep=sleeps.append)
    with stubber:
        assert KinesisForwarder(spool, sink).step() == 4
        stubber.assert_no_pending_responses()
    assert spool.stats()["backlog_total"] == 0
    assert sink.stats["records_retried"] == 3 and sink.stats["records_ok"] == 4
    assert len(sleeps) == 3 and all(s >= 0 for s in sleeps)


def test_records_stay_in_the_spool_when_attempts_run_out(tmp_path):
    client = boto3.client("kinesis", region_name="eu-west-1")
    stubber = Stubber(client)
    for _ in range(2):
        stubber.add_client_error("put_records", service_error_code="ProvisionedThroughputExceededException")
    spool = Spool(tmp_path / "s.sqlite", 1 << 20)
    spool.append(metrics(3))
    with stubber:
        assert KinesisForwarder(spool, KinesisSink(client, "s", "thing-1", max_attempts=2,
                                                   sleep=lambda s: None)).step() == 0
    assert spool.stats()["backlog_total"] == 3
