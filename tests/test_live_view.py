"""The terminal status line of `anc-device run`: what it shows, and when it stays off."""

import io
import time
from types import SimpleNamespace

from device.commands import live_view


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fake_supervisor():
    metrics = [SimpleNamespace(estimated_cancellation_db=18.24)]
    worker = SimpleNamespace(report=SimpleNamespace(metrics=metrics), current_class="traffic")
    return SimpleNamespace(session=SimpleNamespace(worker=worker, workers=(worker,)), engine=SimpleNamespace(mode="run"),
                           xruns=3)


def test_status_line_names_estimate_class_mode_xruns_and_cpu():
    line = live_view.status_line(fake_supervisor(), 23.4)
    assert line == "anc-device: cancelling 18.2 dB (device estimate) | class traffic | mode run | xruns 3 | CPU 23%"


def test_status_line_gives_each_ears_estimate():
    supervisor = fake_supervisor()
    left = supervisor.session.worker
    left.ear = "left"
    right = SimpleNamespace(report=SimpleNamespace(metrics=[]), current_class="traffic", ear="right")
    supervisor.session.workers = (left, right)
    line = live_view.status_line(supervisor, None)
    assert line.startswith("anc-device: cancelling left 18.2 dB, right - (device estimate) | class traffic")


def test_off_when_not_a_terminal_or_under_systemd(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert live_view.wanted(Terminal())
    assert not live_view.wanted(io.StringIO())
    monkeypatch.setenv("INVOCATION_ID", "0123")
    assert not live_view.wanted(Terminal())
    monkeypatch.delenv("INVOCATION_ID")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert not live_view.wanted(Terminal())


def test_refreshes_in_place_and_clears_the_line_when_stopped(monkeypatch):
    monkeypatch.setattr(live_view, "PERIOD_S", 0.01)
    terminal = Terminal()
    view = live_view.LiveView(fake_supervisor(), terminal)
    view.start()
    deadline = time.monotonic() + 5
    while terminal.getvalue().count("\r") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    view.stop()
    text = terminal.getvalue()
    assert text.count("cancelling 18.2 dB") >= 2 and "\n" not in text
    assert text.endswith("\r\x1b[K")
