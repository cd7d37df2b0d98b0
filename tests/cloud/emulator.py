"""A small IoT Core emulator on the test broker: fleet provisioning and classic shadow topics.

Payloads follow the AWS documentation (provision-wo-cert.html, device-shadow-mqtt.html).
Template rule of the emulator: the thing name is the SerialNumber parameter; a CSR is signed
with its own subject (the device puts its serial number in the CN), so the new certificate's
identity is the thing name and the broker ACL (thing policy) applies to it.
"""

from __future__ import annotations

import json
import threading
import uuid

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .broker import EMULATOR_IDENTITY

CSR_TOPIC = "$aws/certificates/create-from-csr/json"
KEYS_TOPIC = "$aws/certificates/create/json"


class IotCoreEmulator:
    def __init__(self, broker, pki, template="anc-fleet", reject_register=False, silent=False):
        self.pki, self.template = pki, template
        self.reject_register, self.silent = reject_register, silent
        self.tokens: dict[str, str] = {}
        self.things: dict[str, dict] = {}
        self.shadow_updates: list[tuple[str, dict]] = []
        self.job_updates: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        cert, key = pki.issue(EMULATOR_IDENTITY)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="iot-core-emulator")
        self.client.tls_set(ca_certs=str(pki.ca_file), certfile=str(cert), keyfile=str(key))
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(CSR_TOPIC, 1), (KEYS_TOPIC, 1), (f"$aws/provisioning-templates/{template}/provision/json", 1),
             ("$aws/things/+/shadow/update", 1), ("$aws/things/+/jobs/+/update", 1)])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def publish(self, topic, document):
        self.client.publish(topic, json.dumps(document), qos=1)

    def _issue(self, public_key, subject) -> tuple[str, str, str]:
        cert = self.pki.sign(public_key, subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
        cert_id, token = uuid.uuid4().hex, uuid.uuid4().hex
        self.tokens[token] = cert_id
        return cert_id, token, cert.public_bytes(serialization.Encoding.PEM).decode()

    def _on_message(self, client, userdata, message):
        if self.silent:
            return
        topic = message.topic
        body = json.loads(message.payload or b"{}")
        if topic == CSR_TOPIC:
            try:
                csr = x509.load_pem_x509_csr(body["certificateSigningRequest"].encode())
            except Exception:
                self.publish(CSR_TOPIC + "/rejected", {"statusCode": 400, "errorCode": "InvalidCSR",
                                                       "errorMessage": "bad CSR"})
                return
            cert_id, token, pem = self._issue(csr.public_key(), csr.subject)
            self.publish(CSR_TOPIC + "/accepted", {"certificateId": cert_id, "certificateOwnershipToken": token,
                                                   "certificatePem": pem})
        elif topic == KEYS_TOPIC:
            key = ec.generate_private_key(ec.SECP256R1())
            cert_id, token, pem = self._issue(key.public_key(), x509.Name(
                [x509.NameAttribute(x509.NameOID.COMMON_NAME, "keys-" + uuid.uuid4().hex[:8])]))
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
            self.publish(KEYS_TOPIC + "/accepted", {"certificateId": cert_id, "certificateOwnershipToken": token,
                                                    "certificatePem": pem, "privateKey": key_pem})
        elif topic.startswith("$aws/provisioning-templates/"):
            out = topic + "/"
            serial = (body.get("parameters") or {}).get("SerialNumber")
            if self.reject_register or body.get("certificateOwnershipToken") not in self.tokens or not serial:
                self.publish(out + "rejected", {"statusCode": 400, "errorCode": "InvalidParameters",
                                                "errorMessage": "template refused the request"})
                return
            self.things[serial] = body["parameters"]
            self.publish(out + "accepted", {"thingName": serial, "deviceConfiguration": {}})
        elif "/jobs/" in topic and topic.endswith("/update"):
            with self.lock:
                self.job_updates.append((topic.split("/")[4], body))
        elif topic.endswith("/shadow/update"):
            with self.lock:
                self.shadow_updates.append((topic.split("/")[2], body))

    def send_delta(self, thing, state, version=1):
        self.publish(f"$aws/things/{thing}/shadow/update/delta", {"state": state, "version": version})

    def send_raw_delta(self, thing, payload: bytes):
        self.client.publish(f"$aws/things/{thing}/shadow/update/delta", payload, qos=1)

    def notify_job(self, thing, job_id, document):
        self.publish(f"$aws/things/{thing}/jobs/notify-next",
                     {"execution": {"jobId": job_id, "jobDocument": document, "status": "QUEUED"}})

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()
