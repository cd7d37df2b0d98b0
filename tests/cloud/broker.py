"""Test helpers: a throwaway PKI and a real mosquitto with mutual TLS and a thing-policy ACL."""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EMULATOR_IDENTITY = "iot-core-emulator"
CLAIM_IDENTITY = "claim-certificate"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A CA made at test time; issues server and client certificates into `directory`."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        self.ca_cert = (x509.CertificateBuilder().subject_name(_name("anc test CA")).issuer_name(_name("anc test CA"))
                        .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, public_key, cn: str, server: bool = False) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.ca_cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        """Key and certificate files for `cn` (key 0600)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), cn, server)
        cert_file, key_file = self.dir / f"{cn}.crt", self.dir / f"{cn}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_file, 0o600)
        return cert_file, key_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The thing policy: a device may only use its own topics (identity = certificate CN = thing name).
# The claim certificate may only use the fleet-provisioning topics. The emulator sees everything.
ACL = f"""
user {EMULATOR_IDENTITY}
topic readwrite #
topic readwrite $aws/#

user {CLAIM_IDENTITY}
topic readwrite $aws/certificates/create/#
topic readwrite $aws/certificates/create-from-csr/#
topic readwrite $aws/provisioning-templates/#

pattern readwrite anc/%u/#
pattern readwrite $aws/things/%u/#
"""


class Broker:
    """mosquitto on a free loopback port, TLS with require_certificate; kill and restart on the same port."""

    def __init__(self, directory: Path, pki: Pki):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cert, key = pki.issue("localhost", server=True)
        (self.dir / "acl").write_text(ACL)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            # Run as the test user: as root mosquitto would switch to "mosquitto" and lose the temp dir.
            f"user {getpass.getuser()}\n"
            f"per_listener_settings false\n"
            f"allow_anonymous false\n"
            f"persistence false\n"
            f"acl_file {self.dir / 'acl'}\n"
            f"max_inflight_messages 100\n"
            f"max_queued_messages 100000\n"
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {pki.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
            f"require_certificate true\nuse_identity_as_username true\n")
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def tls_context(pki: Pki, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(cert), str(key))
    return context
