"""Fleet provisioning by claim with awsiotsdk's identity client.

Steps (AWS "provisioning by claim"):
1. Connect with the claim certificate (its policy allows only the provisioning topics).
2. Subscribe first to the accepted/rejected topics, then request a certificate:
   * CreateCertificateFromCsr (default): the private key is generated here (EC P-256) and never
     leaves the device; only the CSR is sent.
   * CreateKeysAndCertificate: AWS generates the key and returns it once.
3. RegisterThing with the ownership token and the template parameters (SerialNumber, ...).
4. Save certificate and key in ``credentials_dir`` (directory 0700, files 0600, written
   atomically), write the thing name into the agent config, and let the agent reconnect
   with the new identity.

A rejected request, a timeout or a missing claim certificate raise `ProvisioningError`
(a `UserError`: one line, exit 2); error messages name the step, never key material.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device.contract.errors import UserError
from device.contract.files import MODE_PRIVATE, MODE_PRIVATE_DIR, write_bytes_atomic

log = logging.getLogger(__name__)


class ProvisioningError(UserError):
    pass


@dataclass(frozen=True)
class ProvisioningSettings:
    endpoint: str
    port: int
    ca_file: str
    claim_cert_file: str
    claim_key_file: str
    template_name: str
    parameters: dict[str, str]
    credentials_dir: str
    use_csr: bool = True
    timeout_s: float = 30.0
    client_id: str = "anc-provisioning"


@dataclass(frozen=True)
class ProvisioningResult:
    thing_name: str
    cert_file: Path
    key_file: Path
    certificate_id: str


def new_key_and_csr(common_name: str = "anc-device") -> tuple[bytes, str]:
    """A fresh EC P-256 private key (PEM, PKCS#8) and a CSR for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def write_private(path: Path, data: bytes) -> None:
    """Write `data` with mode 0600 from the start (never briefly world-readable), atomically."""
    write_bytes_atomic(path, data, MODE_PRIVATE)


class _Waiter:
    """One expected response: the accepted payload, or the rejection, or a timeout."""

    def __init__(self, step: str):
        self.step = step
        self.event = threading.Event()
        self.response: Any = None
        self.error: str | None = None

    def accepted(self, response) -> None:
        self.response = response
        self.event.set()

    def rejected(self, error) -> None:
        self.error = f"{error.status_code} {error.error_code}: {error.error_message}"
        self.event.set()

    def wait(self, timeout: float) -> Any:
        if not self.event.wait(timeout):
            raise ProvisioningError(f"provisioning: {self.step}: no answer within {timeout:g} s")
        if self.error is not None:
            raise ProvisioningError(f"provisioning: {self.step}: rejected: {self.error}")
        return self.response


def provision(settings: ProvisioningSettings) -> ProvisioningResult:
    """Run the whole exchange; returns where the new identity was saved."""
    from awscrt import mqtt
    from awsiot import iotidentity, mqtt_connection_builder

    for label, path in (("claim certificate", settings.claim_cert_file), ("claim key", settings.claim_key_file),
                        ("CA file", settings.ca_file)):
        if not Path(path).is_file():
            raise ProvisioningError(f"provisioning: {label}: file not found: {path}")
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=settings.endpoint, port=settings.port, cert_filepath=settings.claim_cert_file,
        pri_key_filepath=settings.claim_key_file, ca_filepath=settings.ca_file, client_id=settings.client_id,
        clean_session=True, keep_alive_secs=30)
    try:
        connection.connect().result(settings.timeout_s)
    except Exception as exc:
        raise ProvisioningError(f"provisioning: connect to {settings.endpoint}:{settings.port} with the claim "
                                f"certificate failed: {exc.__class__.__name__}: {exc}") from None
    try:
        identity = iotidentity.IotIdentityClient(connection)
        qos = mqtt.QoS.AT_LEAST_ONCE
        cert = _Waiter("CreateCertificateFromCsr" if settings.use_csr else "CreateKeysAndCertificate")
        if settings.use_csr:
            sub = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
            futures = [identity.subscribe_to_create_certificate_from_csr_accepted(sub, qos, cert.accepted)[0],
                       identity.subscribe_to_create_certificate_from_csr_rejected(sub, qos, cert.rejected)[0]]
        else:
            sub = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
            futures = [identity.subscribe_to_create_keys_and_certificate_accepted(sub, qos, cert.accepted)[0],
                       identity.subscribe_to_create_keys_and_certificate_rejected(sub, qos, cert.rejected)[0]]
        register = _Waiter("RegisterThing")
        reg_sub = iotidentity.RegisterThingSubscriptionRequest(template_name=settings.template_name)
        futures += [identity.subscribe_to_register_thing_accepted(reg_sub, qos, register.accepted)[0],
                    identity.subscribe_to_register_thing_rejected(reg_sub, qos, register.rejected)[0]]
        for future in futures:  # subscribe first, so no answer can be missed
            future.result(settings.timeout_s)

        if settings.use_csr:
            key_pem, csr = new_key_and_csr(settings.parameters.get("SerialNumber", "anc-device"))
            identity.publish_create_certificate_from_csr(
                iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), qos
            ).result(settings.timeout_s)
        else:
            identity.publish_create_keys_and_certificate(
                iotidentity.CreateKeysAndCertificateRequest(), qos).result(settings.timeout_s)
        response = cert.wait(settings.timeout_s)
        if not settings.use_csr:
            key_pem = response.private_key.encode()

        identity.publish_register_thing(iotidentity.RegisterThingRequest(
            template_name=settings.template_name, certificate_ownership_token=response.certificate_ownership_token,
            parameters=dict(settings.parameters)), qos).result(settings.timeout_s)
        registered = register.wait(settings.timeout_s)
        if not registered.thing_name:
            raise ProvisioningError("provisioning: RegisterThing: accepted without a thing name")

        directory = Path(settings.credentials_dir)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, MODE_PRIVATE_DIR)
        cert_file, key_file = directory / "device.pem.crt", directory / "private.pem.key"
        write_private(key_file, key_pem)
        write_private(cert_file, response.certificate_pem.encode())
        (directory / "identity.json").write_text(json.dumps(
            {"thing_name": registered.thing_name, "certificate_id": response.certificate_id}, indent=2))
        log.info("provisioned thing %s (certificate %s)", registered.thing_name, response.certificate_id)
        return ProvisioningResult(registered.thing_name, cert_file, key_file, response.certificate_id)
    finally:
        try:
            connection.disconnect().result(5)
        except Exception:
            pass
