"""Temporary AWS credentials from the AWS IoT credentials provider: the device certificate and
a role alias, no long-lived keys on the device.

``GET https://<credentials endpoint>/role-aliases/<alias>/credentials`` over mutual TLS with
the device certificate, header ``x-amzn-iot-thingname: <thing>``; the answer is
``{"credentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}}``. The
credentials are kept until five minutes before they expire. Nothing of them is logged.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

REFRESH_BEFORE_S = 300.0


class CredentialsError(Exception):
    """The provider refused or could not be reached; the message names the endpoint, not secrets."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # epoch seconds


class IotCredentialsProvider:
    def __init__(self, endpoint: str, role_alias: str, thing_name: str, cert_file: str, key_file: str,
                 ca_file: str, timeout_s: float = 10.0, clock: Callable[[], float] = time.time):
        self.url = f"https://{endpoint}/role-aliases/{role_alias}/credentials"
        self.thing_name = thing_name
        self.timeout_s = timeout_s
        self.clock = clock
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self._cached: Credentials | None = None
        self.fetches = 0

    def get(self) -> Credentials:
        cached = self._cached
        if cached is not None and cached.expires_at - self.clock() > REFRESH_BEFORE_S:
            return cached
        request = urllib.request.Request(self.url, headers={"x-amzn-iot-thingname": self.thing_name})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self.context) as response:
                document = json.loads(response.read(64 * 1024))
        except urllib.error.HTTPError as exc:
            raise CredentialsError(f"credentials provider {self.url}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"credentials provider {self.url}: {exc.__class__.__name__}: {exc}") from None
        try:
            values = document["credentials"]
            expires = datetime.fromisoformat(values["expiration"].replace("Z", "+00:00")).timestamp()
            credentials = Credentials(values["accessKeyId"], values["secretAccessKey"], values["sessionToken"],
                                      expires)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise CredentialsError(f"credentials provider {self.url}: unexpected answer") from None
        self._cached = credentials
        self.fetches += 1
        return credentials
