"""The cloud side as code: cfn-lint clean, least-privilege policies."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from device.contract.records import KINDS

TEMPLATE = Path("cloud_sync/aws/anc-fleet.yaml")


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else loader.construct_sequence(node)))


def test_cfn_lint_passes():
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is part of the test extra"
    result = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_device_policy_is_scoped_to_the_thing_and_claim_policy_to_provisioning():
    resources = yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]
    device = resources["DevicePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    for statement in device:
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all("${!iot:Connection.Thing.ThingName}" in t for t in targets), statement
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not [a for a in actions if "*" in a], statement  # neither "*" nor "iot:*" nor "iot:Publish*"
    claim = resources["ClaimPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    topics = [t for s in claim if s["Action"] != "iot:Connect" for t in s["Resource"]]
    assert topics and all("$aws/certificates/create" in t or "$aws/provisioning-templates/" in t for t in topics)
    body = json.loads(resources["FleetTemplate"]["Properties"]["TemplateBody"].replace("${DevicePolicy}", "p"))
    assert body["Resources"]["thing"]["Properties"]["ThingName"] == {"Ref": "SerialNumber"}
    rule = resources["TelemetryRule"]["Properties"]["TopicRulePayload"]
    assert rule["Sql"] == "SELECT * FROM 'anc/+/telemetry'"
    assert rule["Actions"][0]["Kinesis"]["PartitionKey"] == "${topic(2)}"


def test_recordings_bucket_is_private_encrypted_expiring_and_devices_may_only_put_their_own():
    resources = yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]
    bucket = resources["RecordingsBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
        "SSEAlgorithm"] == "aws:kms"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rule = bucket["LifecycleConfiguration"]["Rules"][0]
    assert rule["Status"] == "Enabled" and rule["ExpirationInDays"] == "RecordingRetentionDays"
    role = resources["RecordingsRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "credentials.iot.amazonaws.com"}
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert [s["Action"] for s in statements] == ["s3:PutObject"]
    assert statements[0]["Resource"].endswith("/recordings/${!credentials-iot:ThingName}/*")
    assert resources["RecordingsRoleAlias"]["Properties"]["RoleAlias"] == "RecordingsRoleAliasName"
    device = resources["RecordingsDevicePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [s["Action"] for s in device] == ["iot:AssumeRoleWithCertificate"]
    template = json.loads(resources["FleetTemplate"]["Properties"]["TemplateBody"]
                          .replace("${DevicePolicy}", "p").replace("${RecordingsDevicePolicy}", "r"))
    assert template["Resources"]["recordingsPolicy"]["Properties"]["PolicyName"] == "r"


def test_monitoring_routes_metrics_and_alarms_on_error_rate_spool_and_model_accuracy():
    resources = yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]
    health = resources["HealthToMetricsRule"]["Properties"]["TopicRulePayload"]
    assert health["Sql"] == "SELECT * FROM 'anc/+/health'"
    published = {a["CloudwatchMetric"]["MetricName"] for a in health["Actions"]}
    assert {"SpoolBacklog", "SpoolFill", "DroppedRecords", "ModelAccuracy"} <= published
    records = resources["RecordsToLogsRule"]["Properties"]["TopicRulePayload"]
    assert records["Actions"][0]["CloudwatchLogs"]["BatchMode"] is True
    filters = {r["Properties"]["MetricTransformations"][0]["MetricName"] for r in resources.values()
               if r["Type"] == "AWS::Logs::MetricFilter"}
    assert {"CancellationDb", "CallbackLatencyMs", "Xruns", "ErrorIntervals", "ClassifierConfidence"} <= filters
    alarms = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms["ModelAccuracyAlarm"]["Threshold"] == 0.9 and alarms["ModelAccuracyAlarm"][
        "ComparisonOperator"] == "LessThanThreshold"
    assert alarms["SpoolNearBudgetAlarm"]["Threshold"] == 0.9
    assert alarms["ErrorRateAlarm"]["Threshold"] == 0.1
    body = resources["FleetDashboard"]["Properties"]["DashboardBody"]
    for name in ("AWS::Region", "ErrorRateAlarm.Arn", "SpoolNearBudgetAlarm.Arn", "ModelAccuracyAlarm.Arn"):
        body = body.replace("${" + name + "}", "x")
    titles = " ".join(w["properties"]["title"] for w in json.loads(body)["widgets"])
    for word in ("Cancellation", "latency", "Xruns", "Spool", "Dropped", "Model quality", "Alarms"):
        assert word in titles


def test_the_health_carries_what_the_rules_read(tmp_path, pki, thing):
    """The health rule reads these fields of the agent's health."""
    from cloud_sync.agent import Agent, load_agent_config

    from .test_agent import write_config

    models = tmp_path / "models"
    models.mkdir()
    for name in ("noise_classifier.onnx", "noise_classifier.json"):
        (models / name).write_bytes((Path("models") / name).read_bytes())
    health = Agent(load_agent_config(write_config(tmp_path, None, pki, thing))).health()
    for field in ("backlog_total", "spool_file_bytes", "spool_budget_bytes", "connect_failures", "dropped_oversize"):
        assert isinstance(health[field], int), field
    assert set(health["dropped"]) == set(KINDS)
    card = json.loads((Path("models") / "noise_classifier.json").read_text())
    assert health["model_accuracy"] == card["evaluation"]["real_accuracy"]
