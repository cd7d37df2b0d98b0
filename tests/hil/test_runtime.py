"""`anc-device identify`, `latency` and `run` against the plant emulator on a private JACK server.

The device side runs as the real command in its own process, exactly as on the rig; the
emulator, in this process, knows the plant and keeps the ground truth, so the tests can
compare what the device measured or achieved with what is true:

* identify: the stored estimate against the emulator's full secondary path (latency included);
* latency: the loop delay and the reference mic's lead against `Plant.causality()`;
* run: the attenuation at the ear (disturbance over emitted error), measured by the emulator.

identify and latency close their stream themselves when done, and JACK 1.9.21 hangs when a
client closes while the server freewheels, so they run in real time (their results do not
depend on timing: the probe and the recording share the stream clock). `run` is driven in
freewheel where the result is convergence, and in real time where it is shutdown and recovery.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.jack_plant import DEFAULT_CLIENT_NAME
from simulator.plant import Plant
from simulator.scenes import generate_scene

from .conftest import PYTHON, ROOT, JackServer

pytestmark = pytest.mark.hil

ENGINE_HUM = ROOT / "simulator/scenes/engine_hum.wav"
SUMMARY_KEYS = {"blocks", "block_period_ms", "callback_p50_ms", "callback_p99_ms", "callback_max_ms", "jitter_p99_ms",
                "xruns", "estimated_cancellation_db", "unmuted_after_s", "stream_errors", "status"}


def write_config(directory: Path, block_size: int = 32, **sections) -> Path:
    """A config over the defaults: the emulator's device, state and spool in `directory`."""
    config = {
        "audio": {"device": DEFAULT_CLIENT_NAME, "block_size": block_size},
        "runtime": {"state_dir": str(directory / "state")},
        "spool": {"path": str(directory / "spool.sqlite")},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = directory / "anc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def anc_device(*args: str) -> list[str]:
    return [PYTHON, "-m", "device.cli", *args]


def normalised_error_db(estimate: np.ndarray, truth: np.ndarray) -> float:
    """|estimate - truth|^2 / |truth|^2 over the longer of the two (the shorter zero-padded)."""
    n = max(estimate.size, truth.size)
    a, b = np.zeros(n), np.zeros(n)
    a[:estimate.size], b[:truth.size] = estimate, truth
    return 10 * np.log10(np.sum((a - b) ** 2) / np.sum(b ** 2))


def read_session_records(spool: Path) -> list[dict]:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM outbox WHERE kind = 'session' ORDER BY rowid").fetchall()
    return [json.loads(body) for (body,) in rows]


def wait_for_log(process, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(pattern, process.stderr())
        if match:
            return match
        if not process.alive():
            break
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the log of {process.proc.args!r} "
                         f"(exit {process.proc.poll()}):\n{process.stderr()[-3000:]}")


def stop_run(process, timeout_s: float = 30.0) -> tuple[int, dict]:
    process.proc.send_signal(signal.SIGTERM)
    status, out = process.finish(timeout_s=timeout_s)
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert lines, f"no summary on stdout:\n{process.stderr()[-3000:]}"
    return status, json.loads(lines[-1])


# -- one identification, shared ----------------------------------------------------------------

@pytest.fixture(scope="module")
def identification(hil_processes, tmp_path_factory):
    """`anc-device identify` once on the quiet headphone plant; tests copy its state directory.

    The estimate belongs to the stream (device name, rate, block size, channels), not to the
    server, so it is valid on every server of these tests.
    """
    from simulator.jack_plant import PlantEmulator

    directory = tmp_path_factory.mktemp("identify")
    server = JackServer(hil_processes, directory, 32, 48000).start()
    emulator = None
    log = directory / "identify.stderr"
    try:
        plant = Plant.load("headphone")
        # A quiet room: only the microphones' self-noise, as identification wants.
        emulator = PlantEmulator(plant, None, servername=server.name).activate()
        config = write_config(directory)
        with open(log, "w") as stderr:
            proc = hil_processes.popen(anc_device("identify", "--config", str(config), "--json"),
                                       stdout=subprocess.PIPE, stderr=stderr, env=server.env,
                                       cwd=str(ROOT), text=True)
            try:
                out, _ = proc.communicate(timeout=120)
            finally:
                hil_processes.stop(proc)
        # A short run on a copy of the state fills the numba cache as a device's first start
        # does, so the tests below measure a started runtime, not one compiling kernels while
        # the emulator already plays in real time (xruns then shift the stream by a period).
        warm = directory / "warm"
        shutil.copytree(directory / "state", warm / "state")
        with open(directory / "warm.stderr", "w") as stderr:
            warm_proc = hil_processes.popen(anc_device("run", "--config", str(write_config(warm)), "--duration", "4",
                                                       "--json"),
                                            stdout=subprocess.DEVNULL, stderr=stderr, env=server.env,
                                            cwd=str(ROOT), text=True)
            try:
                warm_proc.communicate(timeout=180)
            finally:
                hil_processes.stop(warm_proc)
        emulator.check()
    finally:
        if emulator is not None:
            emulator.close()
        server.stop()
    assert proc.returncode == 0, log.read_text()
    report = json.loads(out.strip().splitlines()[-1])
    print(f"identify on the emulator: {json.dumps(report)}; stderr: {log.read_text().strip()[-500:]}")
    return {"plant": plant, "report": report, "state_dir": directory / "state", "stderr": log.read_text()}


def copy_state(identification, directory: Path) -> None:
    shutil.copytree(identification["state_dir"], directory / "state")


# -- identify ----------------------------------------------------------------------------------

def test_identify_stores_the_emulated_secondary_path(identification):
    plant, report = identification["plant"], identification["report"]
    truth = plant.full_secondary_path()
    for key in ("quality_db", "delay_samples", "taps"):
        assert key in report, f"identify --json has no {key}: {report}"
    # Reported, and within what identify accepts; its exact value moves with the xruns of the
    # real-time run (samples the probe and the recording disagree on), the estimate below does not.
    assert isinstance(report["quality_db"], float) and report["quality_db"] <= -10.0
    # delay_samples is the largest tap of the estimate: the latency plus the path's own peak.
    assert report["delay_samples"] == plant.latency_samples + int(np.argmax(np.abs(plant.secondary_path)))

    state = identification["state_dir"]
    metadata = json.loads((state / "secondary_path.json").read_text())
    for key in ("quality_db", "delay_samples", "sample_rate", "block_size", "device"):
        assert key in metadata, f"secondary_path.json has no {key}: {sorted(metadata)}"
    assert (metadata["sample_rate"], metadata["block_size"]) == (48000, 32)
    assert DEFAULT_CLIENT_NAME in metadata["device"]

    stored = np.load(state / "secondary_path.npz")
    assert stored.files == ["secondary_path"]  # no feedback path asked for on the headphone rig
    estimate = stored["secondary_path"]
    assert estimate.size == report["taps"]
    error_db = normalised_error_db(estimate, truth[:estimate.size])
    print(f"estimate vs the emulator's full secondary path: {error_db:.1f} dB normalised error "
          f"({estimate.size} taps; the true path has {truth.size})")
    assert error_db < -20.0


# -- latency -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plant_name", ["headphone", "duct"])
def test_latency_measures_the_plant_loop_delay_and_causality(plant_name, jack_server, emulator_factory,
                                                             device_processes, tmp_path):
    plant = Plant.load(plant_name)
    causality = plant.causality()
    # Broadband ambient noise, so that the reference mic's lead can be told from it, and quieter
    # than the probe: the duct's onset tap is only 8% of the peak above the 20% threshold, and
    # with the ambient as loud as the probe the estimate's noise moved it by a sample about one
    # run in five (a room that loud is the user's cue to raise the probe level).
    scene = generate_scene("white", 4.0, plant.sample_rate, seed=5, level_dbfs=-45.0)
    emulator_factory(jack_server, plant, scene)
    config = write_config(tmp_path)
    # The JACK dummy server on this VM xruns hundreds of times a second even when the machine is
    # idle; a capture torn by them can leave the ambient fit too poor to name the lead, and the
    # command then says so (`reference_lead_samples: null`, "not measurable") rather than guess.
    # That refusal, and only that, gets another capture; a wrong figure fails at once.
    for attempt in range(1, 4):
        process = device_processes(anc_device("latency", "--config", str(config), "--json", "--ambient-s", "2"),
                                   jack_server, f"latency-{attempt}")
        status, out = process.finish(timeout_s=120)
        assert status == 0, process.stderr()
        result = json.loads(out.strip().splitlines()[-1])
        print(f"{plant_name} (capture {attempt}): {json.dumps(result)}")
        if result.get("reference_lead_samples") is not None:
            break
        assert "not measurable" in result["verdict"]
    for key in ("loop_delay_samples", "loop_delay_ms", "reference_lead_samples", "reference_lead_ms",
                "broadband_possible", "verdict"):
        assert key in result, f"latency --json has no {key}"
    assert result["loop_delay_samples"] == causality.control_delay_samples
    assert result["loop_delay_ms"] == pytest.approx(causality.control_delay_samples * 1e3 / plant.sample_rate, abs=1e-3)
    assert result["reference_lead_samples"] == causality.acoustic_lead_samples
    assert result["broadband_possible"] is causality.broadband_possible
    assert ("impossible" in result["verdict"]) is not causality.broadband_possible


# -- run ---------------------------------------------------------------------------------------

def test_run_cancels_engine_hum_in_freewheel(identification, jack_server, emulator_factory, device_processes,
                                             tmp_path):
    from simulator.scenes import load_scene

    copy_state(identification, tmp_path)
    plant = Plant.load("headphone")
    scene = load_scene(ENGINE_HUM, plant.sample_rate)
    emulator = emulator_factory(jack_server, plant, scene.samples)
    config = write_config(tmp_path)
    process = device_processes(anc_device("run", "--config", str(config), "--json"), jack_server, "run")
    emulator.wait_connected(timeout_s=60, alive=process.alive)
    audio_s = 30.0
    first = emulator.frames
    emulator.set_freewheel(True)
    try:
        emulator.wait_frames(first + int(audio_s * plant.sample_rate), timeout_s=120, alive=process.alive)
    finally:
        emulator.set_freewheel(False)
    emulator.check()
    attenuation = emulator.attenuation_db(5.0)
    status, summary = stop_run(process)
    print(f"run, freewheel, {audio_s:.0f} s of engine hum: {attenuation:.1f} dB at the ear over the last 5 s "
          f"(device estimate {summary.get('estimated_cancellation_db')} dB over the session); "
          f"emulator xruns {emulator.xruns}; summary {json.dumps(summary)}")
    assert status == 0, process.stderr()[-3000:]
    assert SUMMARY_KEYS <= set(summary), f"missing {SUMMARY_KEYS - set(summary)}"
    assert attenuation >= 20.0
    assert summary["stream_errors"] == 0


def _live_run(identification, jack_server, emulator_factory, device_processes, tmp_path, scene):
    """`anc-device run` on the headphone emulator playing `scene`, with the stored identification,
    once the anti-noise is on: (emulator, process)."""
    copy_state(identification, tmp_path)
    emulator = emulator_factory(jack_server, "headphone", scene)
    config = write_config(tmp_path)
    process = device_processes(anc_device("run", "--config", str(config), "--json"), jack_server, "run")
    emulator.wait_connected(timeout_s=60, alive=process.alive)
    wait_for_log(process, r"anti-noise on", timeout_s=30)
    return emulator, process


def test_sigterm_fades_out_exits_0_and_records_the_session(identification, jack_server, emulator_factory,
                                                            device_processes, tmp_path):
    emulator, process = _live_run(identification, jack_server, emulator_factory, device_processes, tmp_path,
                                  generate_scene("engine_hum", 5.0, 48000, seed=1))
    status, summary = stop_run(process)
    print(f"SIGTERM in real time: {json.dumps(summary)}")
    assert status == 0, process.stderr()[-3000:]
    assert SUMMARY_KEYS <= set(summary), f"missing {SUMMARY_KEYS - set(summary)}"
    assert summary["blocks"] > 0 and summary["block_period_ms"] == pytest.approx(32 / 48, abs=1e-3)
    assert summary["unmuted_after_s"] is not None and summary["unmuted_after_s"] > 0
    assert summary["stream_errors"] == 0
    # Faded out before closing: the last speaker samples the emulator received are silent.
    assert not np.any(emulator.recorded(0.005)["speaker"])
    records = read_session_records(tmp_path / "spool.sqlite")
    assert records, "no session record in the spool"
    assert summary["session_id"] in {record["session_id"] for record in records}
    assert records[-1]["total_samples"] > 0


def test_emulator_killed_mid_run_is_reported_once_and_recovered(identification, jack_server, emulator_factory,
                                                                 device_processes, tmp_path):
    copy_state(identification, tmp_path)
    # The plant as its own process, so that it can be killed like a crashed client.
    plant_process = device_processes([PYTHON, "-m", "simulator.jack_plant", "--plant", "headphone", "--scene",
                                      str(ENGINE_HUM), "--json"], jack_server, "jack-plant")
    assert plant_process.read_json_line(timeout_s=60)["event"] == "ready"
    config = write_config(tmp_path)
    process = device_processes(anc_device("run", "--config", str(config), "--json"), jack_server, "run")
    wait_for_log(process, r"anti-noise on", timeout_s=60)
    killed_at = time.monotonic()
    plant_process.processes.stop(plant_process.proc, signal.SIGKILL)
    first_error = wait_for_log(process, r"ERROR audio stream: (.*?);", timeout_s=30)
    detected_after = time.monotonic() - killed_at

    # The plant comes back under the same name; the runtime must find it and reconnect.
    emulator = emulator_factory(jack_server, "headphone", generate_scene("engine_hum", 5.0, 48000, seed=1))
    emulator.wait_connected(timeout_s=60, alive=process.alive)
    reconnected_after = time.monotonic() - killed_at
    emulator.wait_frames(emulator.frames + 48000, timeout_s=30, alive=process.alive)
    # Restarted muted, measured the baseline, faded back in: anti-noise reaches the new plant.
    anti_noise_back = bool(np.any(emulator.recorded(0.5)["speaker"]))
    status, summary = stop_run(process)
    log = process.stderr()
    errors = re.findall(r"ERROR audio stream: (.*?);", log)
    print(f"emulator killed: first error after {detected_after:.1f} s ({first_error.group(1)!r}), reconnected "
          f"after {reconnected_after:.1f} s; stream errors logged: {errors}; summary: {json.dumps(summary)}")
    assert status == 0, log[-3000:]
    assert summary["stream_errors"] >= 1
    assert summary["stream_restarts"] >= 1
    assert len(errors) == len(set(errors)), f"a stream error was logged more than once: {errors}"
    assert anti_noise_back, "no anti-noise reached the restarted plant"


def test_run_without_identification_exits_2_naming_identify(jack_server, emulator_factory, device_processes,
                                                            tmp_path):
    emulator_factory(jack_server, "headphone")
    config = write_config(tmp_path)
    process = device_processes(anc_device("run", "--config", str(config), "--json", "--duration", "5"),
                               jack_server, "run")
    status, out = process.finish(timeout_s=60)
    assert status == 2
    assert "anc-device identify" in process.stderr()
    assert out.strip() == ""


def test_desired_settings_reach_the_live_runtime_and_it_reports_them(identification, jack_server, emulator_factory,
                                                                     device_processes, tmp_path):
    """The cloud agent's side of the local channel (`write_desired`, as a shadow delta does) turns
    the anti-noise off in a running `anc-device run`; the speaker falls silent at the emulator and
    `reported.json` says what was applied. Back on, and the speaker plays again."""
    from device.contract.control_channel import read_reported, write_desired

    state = tmp_path / "state"
    emulator, process = _live_run(identification, jack_server, emulator_factory, device_processes, tmp_path,
                                  generate_scene("engine_hum", 5.0, 48000, seed=2))
    time.sleep(0.5)
    assert np.any(emulator.recorded(0.2)["speaker"]), "no anti-noise before the change"

    write_desired(state, {"anc_enabled": False, "preset": "traffic"})
    wait_for_log(process, r"applied desired settings", timeout_s=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (read_reported(state) or {}).get("anc_enabled") is not False:
        time.sleep(0.05)
    reported = read_reported(state)
    assert reported["anc_enabled"] is False and reported["preset"] == "traffic", reported
    time.sleep(0.5)  # the ramp (anc.ramp_ms) has long ended
    assert not np.any(emulator.recorded(0.2)["speaker"]), "speaker not silent with anc_enabled false"

    write_desired(state, {"anc_enabled": True})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not np.any(emulator.recorded(0.1)["speaker"]):
        time.sleep(0.05)
    assert np.any(emulator.recorded(0.1)["speaker"]), "anti-noise did not come back"
    status, summary = stop_run(process)
    assert status == 0, process.stderr()[-3000:]
    assert (read_reported(state) or {}).get("status") == "stopped"


def test_shadow_anc_mode_reaches_the_live_runtime_and_a_bad_value_changes_nothing(
        identification, jack_server, emulator_factory, device_processes, tmp_path):
    """`anc_mode` through the local channel, as a shadow delta writes it: hear-through in a running
    `anc-device run` (the speaker plays the room, `reported.json` says so), then an unknown mode is
    rejected and reported while the mode stays, then off silences the speaker."""
    from device.contract.control_channel import DESIRED_FILE, read_reported, write_desired
    from device.contract.files import write_json_atomic

    state = tmp_path / "state"
    emulator, process = _live_run(identification, jack_server, emulator_factory, device_processes, tmp_path,
                                  generate_scene("pink", 5.0, 48000, seed=2))

    def reported_becomes(key, value):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (read_reported(state) or {}).get(key) != value:
            time.sleep(0.05)
        return read_reported(state) or {}

    write_desired(state, {"anc_mode": "hear-through"})
    reported = reported_becomes("anc_mode", "hear-through")
    assert reported["anc_mode"] == "hear-through" and reported["speaker_mode"] == "hear-through", reported
    time.sleep(0.5)
    assert np.any(emulator.recorded(0.2)["speaker"]), "hear-through plays nothing"

    previous = json.loads((state / DESIRED_FILE).read_text())
    write_json_atomic(state / DESIRED_FILE, {**previous, "version": previous["version"] + 1,
                                             "settings": {"anc_mode": "transparency"}})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (read_reported(state) or {}).get("desired_error"):
        time.sleep(0.05)
    reported = read_reported(state)
    assert "anc_mode" in (reported.get("desired_error") or ""), reported
    assert reported["anc_mode"] == "hear-through", reported

    write_desired(state, {"anc_mode": "off"})
    reported = reported_becomes("anc_mode", "off")
    assert reported["anc_mode"] == "off", reported
    time.sleep(0.5)  # one ramp (anc.ramp_ms) has long ended
    assert not np.any(emulator.recorded(0.2)["speaker"]), "speaker not silent in mode off"
    status, summary = stop_run(process)
    assert status == 0, process.stderr()[-3000:]
    assert [m["mode"] for m in summary["modes"]][-2:] == ["hear-through", "off"], summary["modes"]
