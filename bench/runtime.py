"""The live runtime on JACK in real time: callback timing, xruns, CPU, memory and start time.

For each block size, on a private `jackd -d dummy` whose period is that block size, with the
plant emulator playing the engine-hum scene (so the classifier and the metrics run as on the
rig): `anc-device identify`, then `anc-device run --json --duration S` (not freewheel).
Prints one JSON line per block size: callback duration and start jitter p50/p99/p99.9/max
against the block period (from the runtime's own summary), xruns (the stream's flags and the
server's count), CPU of each process over the run (utime+stime from /proc/PID/stat between
the stream start and the last sample before exit, in % of one core), the runtime's peak RSS
(VmHWM from /proc/PID/status, last read before it exits: a high-water mark, so that is its
peak), the attenuation at the ear measured by the emulator, and `unmuted_after_s` (process
start to the first non-muted block) with a warm numba cache (a short warm-up run first).

The load average is printed with them: on a shared machine other work makes xruns, and in
real time an xrun can shift the stream against the plant by a period, which costs
cancellation (the attenuation at the ear shows it; freewheel runs in the tests do not).

The figures are compared with the targets (callback p99 under 25% of the block period,
steady-state RSS under 200 MB without JACK's shared memory, which plain ALSA does not map,
anti-noise on within 3 s of process start) and printed, never asserted. The peak RSS is
printed too: it is reached during start-up, before the runtime hands start-up-only pages back.

    python bench/runtime.py [--blocks 32 64] [--duration 20]

A block of 64 makes the JACK round trip 128 samples, longer than the headphone preset's 72;
the plant then gets the same construction at that period: 2 x 64 + 8 converter samples.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hil.processes import Processes, read_json_line  # noqa: E402  (the HIL tests' harness)

PYTHON = sys.executable
ENGINE_HUM = ROOT / "simulator" / "scenes" / "engine_hum.wav"
CLIENT_NAME = "anc-plant"
CONVERTER_SAMPLES = 8            # the presets' converter group delay
TARGET_CALLBACK_P99_OF_PERIOD = 0.25
TARGET_RSS_MB = 200.0
TARGET_START_S = 3.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"bench/runtime: {message}", file=sys.stderr, flush=True)


# -- /proc -----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # stat(5) fields 14 and 15


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class CpuWindow:
    """CPU seconds of one process between a start mark and its last sample."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start_cpu: float | None = None
        self.start_wall: float | None = None
        self.last_cpu: float | None = None
        self.last_wall: float | None = None

    def mark_start(self) -> None:
        self.start_cpu, self.start_wall = cpu_seconds(self.pid), time.monotonic()

    def sample(self) -> None:
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.last_cpu, self.last_wall = cpu, time.monotonic()

    def percent_of_one_core(self) -> float | None:
        if None in (self.start_cpu, self.last_cpu) or self.last_wall <= self.start_wall:
            return None
        return round(100.0 * (self.last_cpu - self.start_cpu) / (self.last_wall - self.start_wall), 1)


# -- processes -------------------------------------------------------------------------------

class BenchProcesses(Processes):
    """The HIL harness's process groups, with the bench's environment and logs."""

    def __init__(self, env: dict[str, str]):
        super().__init__()
        self.env = env

    def start(self, argv: list[str], stderr_path: Path) -> subprocess.Popen:
        """Its own group, stdout piped (JSON lines), stderr to a log."""
        with open(stderr_path, "w") as stderr:
            return self.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=self.env,
                              cwd=str(ROOT), text=True)


def start_jackd(processes: Processes, name: str, block: int, rate: int, work: Path) -> subprocess.Popen:
    import jack

    proc = processes.start(["jackd", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(block)],
                           work / f"jackd-{block}.log")
    deadline = time.monotonic() + 15.0
    jack.set_error_function(lambda message: None)  # refusals while the server comes up are expected
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jackd exited: {(work / f'jackd-{block}.log').read_text()}")
            try:
                jack.Client("bench-ready", no_start_server=True, servername=name).close()
                return proc
            except jack.JackOpenError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jackd {name} accepted no client in 15 s") from None
                time.sleep(0.05)
    finally:
        jack.set_error_function(None)


def remove_server_shm(name: str) -> None:
    for path in glob.glob(f"/dev/shm/jack_{name}_*") + glob.glob(f"/dev/shm/jack_sem.*_{name}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


# -- one block size ----------------------------------------------------------------------------

def start_emulator(processes: Processes, block: int, scene: Path | None, work: Path, tag: str) -> tuple:
    latency = 2 * block + CONVERTER_SAMPLES
    argv = [PYTHON, "-m", "simulator.jack_plant", "--plant", "headphone", "--latency-samples", str(latency),
            "--json"]
    if scene is not None:
        argv += ["--scene", str(scene)]
    proc = processes.start(argv, work / f"emulator-{block}-{tag}.log")
    ready = read_json_line(proc, 60.0, lambda: "the plant emulator")
    return proc, ready


def write_config(work: Path, block: int) -> Path:
    import yaml

    path = work / f"anc-{block}.yaml"
    path.write_text(yaml.safe_dump({
        "audio": {"device": CLIENT_NAME, "block_size": block},
        "runtime": {"state_dir": str(work / f"state-{block}")},
        "spool": {"path": str(work / f"spool-{block}.sqlite")},
    }))
    return path


def anc_device(*args: str) -> list[str]:
    return [PYTHON, "-m", "device.cli", *args]


def run_once(processes: Processes, config: Path, duration_s: float, work: Path, tag: str,
             watch: dict[str, int], allowance_s: float = 90.0) -> dict:
    """`anc-device run --json --duration S`, sampling /proc while it runs; stopped, and an
    error, if it has not ended `allowance_s` after its duration."""
    stderr_path = work / f"run-{tag}.log"
    proc = processes.start(anc_device("run", "--config", str(config), "--json", "--duration", str(duration_s)),
                           stderr_path)
    windows = {"anc-device": CpuWindow(proc.pid), **{name: CpuWindow(pid) for name, pid in watch.items()}}
    stream_started = False
    peak_rss = None
    deadline = time.monotonic() + duration_s + allowance_s
    while proc.poll() is None:
        if not stream_started and "audio stream started" in stderr_path.read_text(errors="replace"):
            stream_started = True
            for window in windows.values():
                window.mark_start()
        if stream_started:
            for window in windows.values():
                window.sample()
        hwm = vm_hwm_mb(proc.pid)
        if hwm is not None:
            peak_rss = hwm
        if time.monotonic() > deadline:
            processes.stop(proc)
            raise RuntimeError(f"run {tag} had not ended {allowance_s:g} s after its {duration_s:g} s: "
                               f"{stderr_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    out = proc.stdout.read()
    proc.wait()
    lines = [line for line in out.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"anc-device run exited {proc.returncode}: {stderr_path.read_text()[-2000:]}")
    summary = json.loads(lines[-1])
    summary["_cpu_percent"] = {name: window.percent_of_one_core() for name, window in windows.items()}
    summary["_peak_rss_mb"] = None if peak_rss is None else round(peak_rss, 1)
    return summary


def bench_block(block: int, duration_s: float, rate: int, warm_up: bool, work: Path) -> dict:
    server = f"anc-bench-{os.getpid()}-{block}"
    env = {**os.environ, "JACK_DEFAULT_SERVER": server, "JACK_NO_START_SERVER": "1",
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba")),
           "PYTHONUNBUFFERED": "1"}
    processes = BenchProcesses(env)
    try:
        jackd = start_jackd(processes, server, block, rate, work)
        config = write_config(work, block)

        log(f"block {block}: identify on the quiet plant")
        emulator, _ = start_emulator(processes, block, None, work, "identify")
        ident = subprocess.run(anc_device("identify", "--config", str(config), "--json"), env=env, cwd=str(ROOT),
                               capture_output=True, text=True, timeout=120)
        if ident.returncode != 0:
            raise RuntimeError(f"identify failed: {ident.stderr[-2000:]}")
        identified = json.loads(ident.stdout.strip().splitlines()[-1])
        processes.stop(emulator, close_streams=False)

        emulator, ready = start_emulator(processes, block, ENGINE_HUM, work, "run")
        if warm_up:
            log(f"block {block}: warm-up run (fills the numba cache and the page cache)")
            # The first run after a source change compiles every kernel: minutes on a busy machine.
            run_once(processes, config, 3.0, work, f"{block}-warmup", {}, allowance_s=900.0)
        log(f"block {block}: measured run, {duration_s:g} s in real time")
        summary = run_once(processes, config, duration_s, work, str(block),
                           {"emulator": emulator.pid, "jackd": jackd.pid})
        processes.stop(emulator, close_streams=False)
        stopped = json.loads([line for line in emulator.stdout.read().splitlines() if line.strip()][-1])
    finally:
        processes.stop_all()
        remove_server_shm(server)

    period_ms = summary["block_period_ms"]
    p99 = summary.get("callback_p99_ms")
    start_s = summary.get("unmuted_after_s")
    rss = summary["_peak_rss_mb"]
    # Steady state, at the end of the run (the runtime's own summary): what a Pi must hold while
    # cancelling. JACK maps its server's segments into every client; on plain ALSA they are not
    # there, so the target is judged without them.
    steady = summary.get("rss_mb")
    shmem = summary.get("rss_shmem_mb")
    steady_alsa = None if steady is None or shmem is None else round(steady - shmem, 1)
    return {
        "bench": "runtime_jack_realtime",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "block_size": block,
        "sample_rate": rate,
        "block_period_ms": period_ms,
        "plant_latency_samples": ready["latency_samples"],
        "duration_s": summary.get("duration_s"),
        "blocks": summary.get("blocks"),
        **{key: summary.get(key) for key in (
            "callback_p50_ms", "callback_p99_ms", "callback_p999_ms", "callback_max_ms",
            "jitter_p50_ms", "jitter_p99_ms", "jitter_p999_ms", "jitter_max_ms")},
        "callback_p99_of_period": None if p99 is None else round(p99 / period_ms, 4),
        "xruns_stream_flags": summary.get("xruns"),
        "xruns_jack_server": stopped.get("xruns"),
        "emulator_callback_max_ms": stopped.get("callback_max_ms"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "dropped_blocks": summary.get("dropped_blocks"),
        "stream_errors": summary.get("stream_errors"),
        "cpu_percent_of_one_core": summary["_cpu_percent"],
        "peak_rss_mb": rss,
        "steady_rss_mb": steady,
        "steady_rss_split_mb": {key: summary.get(key) for key in ("rss_anon_mb", "rss_file_mb", "rss_shmem_mb")},
        "steady_rss_without_jack_shm_mb": steady_alsa,
        "unmuted_after_s": start_s,
        "estimated_cancellation_db": summary.get("estimated_cancellation_db"),
        "attenuation_at_ear_db": stopped.get("attenuation_db"),
        "attenuation_window_s": stopped.get("attenuation_window_s"),
        "identify_quality_db": identified.get("quality_db"),
        "classifier": summary.get("classifier"),
        "targets": {
            "callback_p99_under_25pct_of_period":
                None if p99 is None else p99 < TARGET_CALLBACK_P99_OF_PERIOD * period_ms,
            "steady_rss_without_jack_shm_under_200_mb": None if steady_alsa is None else steady_alsa < TARGET_RSS_MB,
            "start_under_3_s": None if start_s is None else start_s < TARGET_START_S,
        },
        "missing_from_summary": [key for key in ("callback_p999_ms", "jitter_p999_ms") if key not in summary],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64], help="block sizes (= JACK periods)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each measured run")
    parser.add_argument("--rate", type=int, default=48000)
    args = parser.parse_args()
    if shutil.which("jackd") is None:
        print("bench/runtime: jackd is not installed (scripts/setup.sh installs jackd2)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="anc-bench-runtime-") as tmp:
        for index, block in enumerate(args.blocks):
            try:
                result = bench_block(block, args.duration, args.rate, warm_up=index == 0, work=Path(tmp))
            except RuntimeError as exc:
                print(f"bench/runtime: block {block}: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
