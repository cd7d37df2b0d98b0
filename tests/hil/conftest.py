"""Fixtures of the hardware-in-the-loop tests: a private JACK server, the plant emulator, device processes.

Every test gets its own `jackd -d dummy` under a unique server name (JACK_DEFAULT_SERVER is
passed to every process it starts, with JACK_NO_START_SERVER so nothing ever starts a
server of its own), the emulator as an in-process JACK client, and device-side processes
(`sounddevice`, `anc-device`) started in their own process groups. PortAudio scans JACK
clients when `sounddevice` is imported, so the device side always runs in a fresh process
started after the server and the emulator's ports exist; this process never imports
`sounddevice`.

Teardown always runs, in reverse order: device processes (SIGTERM, then SIGKILL of the
whole group), the emulator (out of freewheel first: JACK 1.9.21 hangs when a client closes
while the server freewheels), the server, and the server's shared-memory files. A session
finalizer fails the run if any process group started here is still alive.

With ANC_HIL_DEVICE naming a real PortAudio device, the `real_device` fixture gives its
name; without it those tests are skipped, because there is no rig to test.
"""

from __future__ import annotations

import gc
import glob
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .processes import Processes, read_json_line

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STREAM_PROBE = Path(__file__).resolve().parent / "stream_probe.py"
SERVER_PREFIX = f"anchil{os.getpid()}"
_server_numbers = itertools.count()


@pytest.fixture(scope="session")
def hil_processes():
    processes = Processes()
    yield processes
    left = processes.leftovers()
    for proc in processes.started:
        processes.stop(proc, signal.SIGKILL, timeout_s=2.0)
    assert not left, f"HIL tests left processes behind: {left}"


# -- JACK server -----------------------------------------------------------------------------

class JackServer:
    """A private `jackd -d dummy` under a unique name."""

    def __init__(self, processes: Processes, log_dir: Path, period: int, rate: int):
        self.processes = processes
        self.period = period
        self.rate = rate
        self.name = f"{SERVER_PREFIX}-{next(_server_numbers)}"
        self.log_path = log_dir / f"jackd-{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of every process that talks to this server."""
        return {
            **os.environ,
            "JACK_DEFAULT_SERVER": self.name,
            "JACK_NO_START_SERVER": "1",
            "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, timeout_s: float = 15.0) -> "JackServer":
        import jack

        with open(self.log_path, "w") as log:
            self.proc = self.processes.popen(
                ["jackd", "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        # libjack prints every refused connection while the server is coming up; those are expected.
        jack.set_error_function(lambda message: None)
        try:
            return self._wait_ready(deadline, timeout_s)
        finally:
            jack.set_error_function(None)

    def _wait_ready(self, deadline: float, timeout_s: float) -> "JackServer":
        import jack

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                probe = jack.Client("hil-ready", no_start_server=True, servername=self.name)
            except jack.JackOpenError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jackd {self.name} accepted no client in {timeout_s} s:\n"
                                       f"{self.log_path.read_text()}") from None
                time.sleep(0.05)
                continue
            actual = (int(probe.samplerate), int(probe.blocksize))
            probe.close()
            assert actual == (self.rate, self.period), f"jackd runs at {actual}, asked for {(self.rate, self.period)}"
            return self

    def client_names(self) -> set[str]:
        """Clients that own ports on this server (what PortAudio would list as devices)."""
        import jack

        probe = jack.Client("hil-inspect", no_start_server=True, servername=self.name)
        try:
            names = {port.name.split(":", 1)[0] for port in probe.get_ports()}
        finally:
            probe.close()
        names.discard("hil-inspect")
        return names

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)
        # A killed server leaves its shared memory behind; these names are this server's alone.
        for path in glob.glob(f"/dev/shm/jack_{self.name}_*") + glob.glob(f"/dev/shm/jack_sem.*_{self.name}_*"):
            try:
                os.unlink(path)
            except OSError:
                pass


@pytest.fixture
def jack_server_factory(hil_processes, tmp_path):
    import shutil

    if shutil.which("jackd") is None:
        pytest.fail("jackd is not installed (scripts/setup.sh installs jackd2)")
    servers: list[JackServer] = []

    def start(period: int = 32, rate: int = 48000) -> JackServer:
        server = JackServer(hil_processes, tmp_path, period, rate)
        servers.append(server)
        return server.start()

    yield start
    # A client left unreachable in a reference cycle is closed by its finalizer whenever the
    # collector gets to it; with its server gone that close crashed the test process in a later
    # test. Collect while the servers still run.
    gc.collect()
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def jack_server(jack_server_factory) -> JackServer:
    return jack_server_factory(32)


# -- emulator --------------------------------------------------------------------------------

@pytest.fixture
def emulator_factory(jack_server_factory):
    """make(server, plant, scene=None, **kwargs) -> an activated PlantEmulator, closed at teardown,
    before the servers stop (it depends on their factory, so pytest tears it down first).
    `plant`: a Plant, an EarsPlant, or a preset name or YAML path of either."""
    from simulator.jack_plant import PlantEmulator, load_plant

    emulators = []

    def make(server: JackServer, plant="headphone", scene=None, **kwargs) -> PlantEmulator:
        if isinstance(plant, (str, Path)):
            plant = load_plant(plant)
        emulator = PlantEmulator(plant, scene, servername=server.name, **kwargs)
        emulators.append(emulator)
        return emulator.activate()

    yield make
    for emulator in reversed(emulators):
        emulator.close()


# -- device side -----------------------------------------------------------------------------

class DeviceProcess:
    """A process on the device side: pipes for stdin/stdout, stderr to a file."""

    def __init__(self, processes: Processes, argv: list[str], server: JackServer | None, log_path: Path,
                 cwd: Path = ROOT):
        self.processes = processes
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = server.env if server is not None else {
            **os.environ, "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))}
        self.proc = processes.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                    env=env, cwd=str(cwd), text=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def read_json_line(self, timeout_s: float = 30.0) -> dict:
        """The next JSON line on stdout (non-JSON lines are skipped)."""
        return read_json_line(self.proc, timeout_s, self.stderr)

    def finish(self, stdin_text: str = "", timeout_s: float = 30.0) -> tuple[int, str]:
        """Send stdin_text, close stdin, wait; returns (exit status, remaining stdout)."""
        try:
            out, _ = self.proc.communicate(stdin_text, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.processes.stop(self.proc)
            raise
        return self.proc.returncode, out

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.processes.stop(self.proc)
        self._log.close()


@pytest.fixture
def device_processes(hil_processes, tmp_path):
    """start(argv, server, name) -> DeviceProcess; all stopped (group-killed if needed) at teardown.
    `server` None: a real sound card, the process gets this environment as it is."""
    started: list[DeviceProcess] = []
    numbers = itertools.count()

    def start(argv: list[str], server: JackServer | None, name: str = "device") -> DeviceProcess:
        process = DeviceProcess(hil_processes, argv, server, tmp_path / f"{name}-{next(numbers)}.stderr")
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.close()


def stream_probe_argv(device: str, block: int, frames: int, impulses=(), out: Path | None = None,
                      rate: int = 48000, inputs: int = 2, outputs: int = 1, impulse_channel: int = 0) -> list[str]:
    argv = [PYTHON, str(STREAM_PROBE), "--device", device, "--block", str(block), "--frames", str(frames),
            "--rate", str(rate), "--inputs", str(inputs), "--outputs", str(outputs),
            "--impulse-channel", str(impulse_channel)]
    for k in impulses:
        argv += ["--impulse", str(k)]
    if out is not None:
        argv += ["--out", str(out)]
    return argv


# -- real rig --------------------------------------------------------------------------------

@pytest.fixture
def real_device() -> str:
    """The real rig's PortAudio device name (ANC_HIL_DEVICE), its channel map from the defaults or
    ANC_HIL_CONFIG (a config file merged over them)."""
    name = os.environ.get("ANC_HIL_DEVICE")
    if not name:
        pytest.skip("ANC_HIL_DEVICE is not set: no real PortAudio device is attached to this machine")
    return name
