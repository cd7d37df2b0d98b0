"""The device's TLS identity checked before any connection: files present, key private,
certificate and key parseable and a pair, certificate issued for this thing.

Each problem is one `UserError` line naming the config key and the file (exit 2), instead of
what paho or ssl would raise later (FileNotFoundError without a path, ``[SSL] PEM lib``,
``KEY_VALUES_MISMATCH``), or, for a certificate of another thing, a broker that silently
drops every publish while still acknowledging it.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from device.contract.errors import UserError

# The subject AWS IoT gives a certificate it generates (CreateKeysAndCertificate, console):
# it names no thing, the thing is bound to it in the registry instead.
AWS_GENERATED_SUBJECT = "AWS IoT Certificate"


def check_private_key(path: str | Path, what: str = "private key") -> None:
    """Refuse a missing key or one that group or others can read (AWS and ssh convention: 0600)."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found (run `anc-cloud-sync provision` first)") from None
    if mode & 0o077:
        raise UserError(f"{path}: {what} is readable by others (mode {mode:04o}); run chmod 600 {path}")


def _require_file(path: str | Path, key: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {key}: file not found")
    return path


def certificate_thing(cert_file: str | Path) -> str | None:
    """The certificate's subject common name (None when it has none)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    path = Path(cert_file)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise UserError(f"{path}: mqtt.cert_file: not a PEM X.509 certificate") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def check_identity(ca_file: str | Path, cert_file: str | Path, key_file: str | Path, thing_name: str) -> None:
    """Everything the TLS connect needs, checked up front (see the module docstring)."""
    ca = _require_file(ca_file, "mqtt.ca_file")
    cert = _require_file(cert_file, "mqtt.cert_file")
    check_private_key(key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise UserError(f"{ca}: mqtt.ca_file: not a PEM CA certificate ({exc.reason or exc})") from None
    subject = certificate_thing(cert)
    try:
        context.load_cert_chain(str(cert), str(key_file))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UserError(f"{cert}: mqtt.cert_file: does not match the private key {key_file}") from None
        raise UserError(f"{key_file}: mqtt.key_file: not a usable PEM private key ({exc.reason or exc})") from None
    if subject != thing_name and subject != AWS_GENERATED_SUBJECT:
        raise UserError(f"{cert}: mqtt.cert_file: issued for {subject!r}, not for thing_name {thing_name!r}; the "
                        f"broker would refuse every topic of {thing_name!r}")
