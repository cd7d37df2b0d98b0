"""Fleet provisioning by claim: the real awsiotsdk identity client against the emulator."""

import random
import stat

import pytest

from cloud_sync.mqtt import MqttClient, MqttSettings
from cloud_sync.provisioning import ProvisioningError, ProvisioningSettings, provision

from .broker import CLAIM_IDENTITY
from .emulator import IotCoreEmulator


def claim_settings(broker, pki, tmp_path, **kw):
    cert, key = pki.issue(CLAIM_IDENTITY)
    values = dict(endpoint="127.0.0.1", port=broker.port, ca_file=str(pki.ca_file), claim_cert_file=str(cert),
                  claim_key_file=str(key), template_name="anc-fleet", parameters={"SerialNumber": "anc-0042"},
                  credentials_dir=str(tmp_path / "creds"), timeout_s=10.0)
    values.update(kw)
    return ProvisioningSettings(**values)


@pytest.mark.parametrize("use_csr", [True, False])
def test_provision_by_claim_saves_a_private_identity(tmp_path, broker, pki, use_csr):
    emulator = IotCoreEmulator(broker, pki)
    try:
        result = provision(claim_settings(broker, pki, tmp_path, use_csr=use_csr))
    finally:
        emulator.stop()
    assert result.thing_name == "anc-0042" and emulator.things == {"anc-0042": {"SerialNumber": "anc-0042"}}
    assert stat.S_IMODE(result.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(result.cert_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(result.key_file.parent.stat().st_mode) == 0o700
    if use_csr:
        # The new identity works on the broker, under the thing policy of its own name.
        client = MqttClient(MqttSettings(host="127.0.0.1", port=broker.port, thing_name=result.thing_name,
                                         ca_file=str(pki.ca_file), cert_file=str(result.cert_file),
                                         key_file=str(result.key_file)), rng=random.Random(0))
        try:
            for _ in range(500):
                client.poll(0.01)
                if client.connected:
                    break
            assert client.connected
        finally:
            client.close()


def test_rejected_register_is_a_clear_error(tmp_path, broker, pki):
    emulator = IotCoreEmulator(broker, pki, reject_register=True)
    try:
        with pytest.raises(ProvisioningError, match="RegisterThing: rejected: 400 InvalidParameters"):
            provision(claim_settings(broker, pki, tmp_path))
    finally:
        emulator.stop()
    assert not (tmp_path / "creds" / "private.pem.key").exists()


def test_timeout_and_missing_claim_certificate(tmp_path, broker, pki):
    emulator = IotCoreEmulator(broker, pki, silent=True)
    try:
        with pytest.raises(ProvisioningError, match="CreateCertificateFromCsr: no answer within 1 s"):
            provision(claim_settings(broker, pki, tmp_path, timeout_s=1.0))
    finally:
        emulator.stop()
    with pytest.raises(ProvisioningError, match="claim certificate: file not found"):
        provision(claim_settings(broker, pki, tmp_path, claim_cert_file=str(tmp_path / "nope.crt")))
