"""sd_notify(3) for the runtime, without libsystemd or any other dependency.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, and
with ``WatchdogSec=`` it kills and restarts the service when ``WATCHDOG=1`` stops arriving.
Both are datagrams sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET``; a name starting
with ``@`` lives in the abstract namespace (its first byte is NUL on the wire).

The runtime pings the watchdog from its worker thread, which must keep up with the audio
callback, so a ping costs one ``sendto`` and nothing else: the socket is created once, on
first use, and kept open. It is non-blocking, so a full receive queue loses one ping instead
of stalling the worker. Sending never raises: without systemd (``NOTIFY_SOCKET`` unset, a
terminal, the simulator, the tests) or on any send error, the functions return False and the
runtime carries on.
"""

from __future__ import annotations

import os
import socket
import threading

_socket: socket.socket | None = None
_socket_lock = threading.Lock()  # the worker and the main thread may both send first


def _notify_socket() -> socket.socket:
    global _socket
    if _socket is None:
        with _socket_lock:
            if _socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                _socket = sock
    return _socket


def _address() -> str | None:
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]
    return name


def _one_line(text: str) -> str:
    # A newline would start a second assignment in the datagram (e.g. a status text that
    # smuggles in "READY=1").
    return " ".join(text.splitlines())


def notify(message: str) -> bool:
    """Send `message` (newline-separated ``KEY=VALUE`` lines); True if it was sent."""
    address = _address()
    if address is None:
        return False
    try:
        _notify_socket().sendto(message.encode("utf-8"), address)
    except (OSError, UnicodeError):
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up is complete (``READY=1``), optionally with a status line."""
    if status is None:
        return notify("READY=1")
    return notify(f"READY=1\nSTATUS={_one_line(status)}")


def stopping() -> bool:
    """Shutdown has begun (``STOPPING=1``): systemd stops expecting watchdog pings."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One line for ``systemctl status`` (``STATUS=...``)."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """Watchdog keep-alive (``WATCHDOG=1``)."""
    return notify("WATCHDOG=1")


def watchdog_period_s() -> float | None:
    """The watchdog timeout systemd expects this process to honour, in seconds, or None.

    From ``$WATCHDOG_USEC``; ignored when ``$WATCHDOG_PID`` names another process (the
    variables were inherited by a child). Ping at half this period.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1e6
