"""The cloud side as code: cfn-lint clean, least-privilege policies."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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
