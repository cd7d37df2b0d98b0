"""The systemd side of the device: sd_notify, the two units, and the install step.

The units are checked with ``systemd-analyze verify`` exactly as shipped. CI runs in a
container without systemd as PID 1, so verification happens against a staging root
(``--root``) laid out by ``systemd/install.sh --root``. That root differs from a Pi in two
stated ways only: the ``ExecStart=`` programs are stub scripts (the test builds no virtual
environment in /opt), and the host's unit directory is copied in so that sysinit.target,
sound.target and network-online.target resolve.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from device.rig import sdnotify

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "systemd" / "install.sh"
UNITS = ("anc-device.service", "anc-cloud-sync.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def run_install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, check=False)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd allows a key more than once, e.g. Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- sd_notify -------------------------------------------------------------------------------
@pytest.fixture
def notify_receiver(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(10)  # only so a broken sender fails the test instead of hanging it
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield receiver
    receiver.close()


def test_ready_sends_ready_1(notify_receiver):
    assert sdnotify.ready() is True
    assert notify_receiver.recv(4096) == b"READY=1"


def test_ready_with_status_sends_both_in_one_datagram(notify_receiver):
    assert sdnotify.ready("cancelling on hw:2,0") is True
    assert notify_receiver.recv(4096) == b"READY=1\nSTATUS=cancelling on hw:2,0"


def test_status_watchdog_and_stopping_messages(notify_receiver):
    assert sdnotify.status("identifying the secondary path")
    assert sdnotify.watchdog()
    assert sdnotify.stopping()
    assert notify_receiver.recv(4096) == b"STATUS=identifying the secondary path"
    assert notify_receiver.recv(4096) == b"WATCHDOG=1"
    assert notify_receiver.recv(4096) == b"STOPPING=1"


def test_status_text_cannot_inject_other_assignments(notify_receiver):
    assert sdnotify.status("bad\nREADY=1")
    assert notify_receiver.recv(4096) == b"STATUS=bad READY=1"


def test_socket_is_created_once_and_reused(notify_receiver):
    sdnotify.watchdog()
    first = sdnotify._socket
    sdnotify.watchdog()
    assert first is not None and sdnotify._socket is first
    assert notify_receiver.recv(4096) == notify_receiver.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"anc-device-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        assert sdnotify.ready("up") is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
    finally:
        receiver.close()


def test_without_notify_socket_every_call_returns_false(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    assert sdnotify.status("x") is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False


def test_send_error_returns_false_without_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens-here"))
    assert sdnotify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + f"anc-device-test-absent-{uuid.uuid4().hex}")
    assert sdnotify.watchdog() is False


def test_watchdog_period_for_this_process(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_period_s() == 10.0
    monkeypatch.delenv("WATCHDOG_PID")
    assert sdnotify.watchdog_period_s() == 10.0


def test_watchdog_period_meant_for_another_process_is_none(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_period_s() is None


@pytest.mark.parametrize("usec", [None, "", "ten", "0", "-5"])
def test_watchdog_period_absent_or_invalid_is_none(monkeypatch, usec):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert sdnotify.watchdog_period_s() is None


# -- install step ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A staging root laid out by the install step."""
    root = tmp_path_factory.mktemp("staged")
    result = run_install("--root", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_install_lays_out_directories_and_files(staged):
    assert mode_of(staged / "var/lib/anc-device") == 0o2770
    assert mode_of(staged / "var/lib/anc-device/models") == 0o2770
    assert mode_of(staged / "var/lib/anc-cloud-sync") == 0o700
    assert mode_of(staged / "var/lib/anc-cloud-sync/certs") == 0o700
    assert mode_of(staged / "var/cache/anc-device") == 0o700
    assert mode_of(staged / "var/lib/anc-device/spool.sqlite") == 0o660
    assert mode_of(staged / "etc/anc-device/config.yaml") == 0o644
    assert mode_of(staged / "etc/anc-device/cloud_sync.yaml") == 0o640
    for unit in UNITS:
        installed = staged / "etc/systemd/system" / unit
        assert installed.read_bytes() == (ROOT / "systemd" / unit).read_bytes()
    model_dir = staged / "var/lib/anc-device/models"
    assert (model_dir / "noise_classifier.onnx").read_bytes() == (ROOT / "models/noise_classifier.onnx").read_bytes()
    assert (model_dir / "noise_classifier.json").exists()


def test_installed_config_validates_and_points_at_the_layout(staged):
    from device.contract.config import load_config

    cfg = load_config(staged / "etc/anc-device/config.yaml")
    assert cfg.runtime.state_dir == "/var/lib/anc-device"
    assert cfg.spool.path == "/var/lib/anc-device/spool.sqlite"
    assert cfg.classifier.model == "/var/lib/anc-device/models/noise_classifier.onnx"
    # The model it names is the one the install step laid out, with its card beside it.
    assert (staged / cfg.classifier.model.lstrip("/")).is_file()
    assert (staged / cfg.classifier.model.lstrip("/")).with_suffix(".json").is_file()


def test_installed_agent_config_validates_and_agrees_with_the_runtime(staged):
    from cloud_sync.agent import load_agent_config
    from device.contract.config import load_config

    runtime = load_config(staged / "etc/anc-device/config.yaml")
    agent = load_agent_config(staged / "etc/anc-device/cloud_sync.yaml")
    assert agent["spool_path"] == runtime.spool.path
    assert agent["state_dir"] == runtime.runtime.state_dir
    assert agent["jobs"]["models_dir"] == str(Path(runtime.classifier.model).parent)
    credentials = Path(agent["provisioning"]["credentials_dir"])
    assert credentials == Path("/var/lib/anc-cloud-sync/certs")
    assert Path(agent["mqtt"]["key_file"]).parent == credentials
    assert Path(agent["mqtt"]["cert_file"]).parent == credentials
    assert agent["thing_name"] is None  # set by `anc-cloud-sync provision`, not by the installer


def test_second_install_keeps_an_edited_config(tmp_path):
    assert run_install("--root", str(tmp_path)).returncode == 0
    config = tmp_path / "etc/anc-device/config.yaml"
    agent_config = tmp_path / "etc/anc-device/cloud_sync.yaml"
    edited = config.read_text() + "anc:\n  intensity: 0.5\n"
    config.write_text(edited)
    agent_edited = agent_config.read_text().replace("endpoint: localhost", "endpoint: example-ats.iot.eu-west-1.amazonaws.com")
    agent_config.write_text(agent_edited)
    spool = tmp_path / "var/lib/anc-device/spool.sqlite"
    spool.write_bytes(b"records")

    second = run_install("--root", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert config.read_text() == edited
    assert agent_config.read_text() == agent_edited
    assert spool.read_bytes() == b"records"
    assert f"keeping {config}" in second.stdout

    from device.contract.config import load_config

    assert load_config(config).anc.intensity == 0.5


def test_dry_run_changes_nothing(tmp_path):
    target = tmp_path / "root"
    result = run_install("--dry-run", "--root", str(target))
    assert result.returncode == 0, result.stderr
    assert not target.exists()
    assert f"would write {target}/etc/anc-device/config.yaml" in result.stdout


def test_unknown_option_is_refused():
    result = run_install("--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr


# -- units -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def verify_root(staged):
    """The staged root plus what systemd-analyze needs to resolve the units' references."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    for name in ("anc-device", "anc-cloud-sync"):
        stub = staged / "opt/anc-device/venv/bin" / name
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    host_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    target = staged / "usr/lib/systemd/system"
    if not target.exists():
        shutil.copytree(host_units, target, symlinks=True)
    return staged


def analyze_verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEMD_ANALYZE, f"--root={root}", "verify", "--man=no", "--generators=no", unit],
        capture_output=True, text=True, check=False,
    )


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(verify_root, unit):
    assert (verify_root / "etc/systemd/system" / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()
    result = analyze_verify(verify_root, unit)
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "anc-" in line]
    assert ours == []


def test_verify_reports_problems_in_our_units(verify_root):
    # The check above filters stderr by unit name; make sure a bad directive does show up there.
    broken = verify_root / "etc/systemd/system/anc-broken.service"
    text = (ROOT / "systemd/anc-device.service").read_text()
    broken.write_text(text.replace("[Service]\n", "[Service]\nWatchdogSecs=10s\n"))
    try:
        result = analyze_verify(verify_root, "anc-broken.service")
    finally:
        broken.unlink()
    assert "anc-broken.service" in result.stderr and "WatchdogSecs" in result.stderr


def test_runtime_unit_contract():
    service = unit_settings(ROOT / "systemd/anc-device.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    watchdog = service["WatchdogSec"][-1]  # the last assignment wins
    seconds = float(watchdog[:-1]) if watchdog.endswith("s") else float(watchdog)
    assert seconds > 0, f"WatchdogSec={watchdog} switches the watchdog off"
    assert service["User"] == ["anc-device"] and service["Group"] == ["anc"]
    assert service["SupplementaryGroups"] == ["audio"]
    assert service["ExecStart"] == ["/opt/anc-device/venv/bin/anc-device run --config /etc/anc-device/config.yaml"]
    assert "NUMBA_CACHE_DIR=/var/cache/anc-device" in service["Environment"]
    assert service["CacheDirectory"] == ["anc-device"] and service["StateDirectory"] == ["anc-device"]
    assert service["LimitRTPRIO"] == ["95"] and service["LimitMEMLOCK"] == ["infinity"]
    assert service["DeviceAllow"] == ["char-alsa rw"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    # numba writes machine code at run time; PortAudio needs SCHED_FIFO; /dev/snd must be visible.
    for forbidden in ("MemoryDenyWriteExecute", "RestrictRealtime", "PrivateDevices", "PrivateUsers"):
        assert forbidden not in service
    unit = unit_settings(ROOT / "systemd/anc-device.service")["Unit"]
    assert unit["StartLimitIntervalSec"] and unit["StartLimitBurst"]


def test_agent_unit_contract():
    settings = unit_settings(ROOT / "systemd/anc-cloud-sync.service")
    service = settings["Service"]
    assert "network-online.target" in settings["Unit"]["After"][0].split()
    assert service["User"] == ["anc-sync"] and service["Group"] == ["anc"]
    assert "SupplementaryGroups" not in service and "DeviceAllow" not in service
    assert service["PrivateDevices"] == ["true"]
    assert service["StateDirectory"] == ["anc-cloud-sync"] and service["StateDirectoryMode"] == ["0700"]
    assert service["ReadWritePaths"] == ["/var/lib/anc-device"]
    assert service["ExecStart"] == [
        "/opt/anc-device/venv/bin/anc-cloud-sync --config /etc/anc-device/cloud_sync.yaml run"]
    # The runtime's state directory is where both configs put the shared files.
    runtime = unit_settings(ROOT / "systemd/anc-device.service")["Service"]
    assert f"/var/lib/{runtime['StateDirectory'][0]}" == service["ReadWritePaths"][0]
