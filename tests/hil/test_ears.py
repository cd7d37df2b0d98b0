"""Two ears on JACK: `anc-device identify`, `latency` and `run` against the two-cup plant emulator.

The emulator plays `headphone-stereo` with ports per ear (4 in: each cup's reference and
error mic, 2 out: each cup's speaker, crosstalk round the head included), and keeps each
ear's ground truth. The device side is the real command in its own process, with the two
ears in `audio.ears`. As in test_runtime.py, identify and latency run in real time (they
close their own streams) and the runs whose result is convergence run in freewheel.

A broken ear: the stored estimates are the true cups', and the emulator then plays the right
cup with its secondary path changed. A gain of 3 on it is not a reliable trip (the no-harm
output scale and the step guard keep that ear cancelling, at most one trip in the start-up
transient); a reversed polarity (gain -1) trips it, and only it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pytest

from simulator.ears import EarsPlant
from simulator.scenes import load_scene

from .conftest import ROOT, JackServer
from .test_runtime import ENGINE_HUM, anc_device, normalised_error_db, read_session_records, stop_run, write_config

pytestmark = pytest.mark.hil

PLANT = "headphone-stereo"
EARS = [
    {"name": "left", "reference_channel": 0, "error_channel": 1, "speaker_channel": 0},
    {"name": "right", "reference_channel": 2, "error_channel": 3, "speaker_channel": 1},
]
AUDIO_S = 20.0   # of engine hum per run, in freewheel
# Attenuation at the ear an ear that cancels keeps over the last 5 s. Typically 35-40 dB, but a
# stream that xruns during the real-time start can come back a period late, and with the loop
# that much longer than its estimate tonal cancellation settles near 20 dB (seen once in six
# runs: both ears 19.9 and 20.1 dB, the device estimating 39 dB from its own model). 10 dB
# still tells an ear that cancels from one that tripped or plays nothing (0 dB).
CANCELLING_DB = 10.0


def ears_config(directory):
    return write_config(directory, audio={"ears": EARS})


@pytest.fixture(scope="module")
def ears_identification(hil_processes, tmp_path_factory):
    """`anc-device identify` once with both ears on the quiet two-cup plant, then a short run on
    a copy of the state that fills the numba cache (as in test_runtime.py's fixture)."""
    from simulator.jack_plant import PlantEmulator

    directory = tmp_path_factory.mktemp("identify_ears")
    server = JackServer(hil_processes, directory, 32, 48000).start()
    emulator = None
    log = directory / "identify.stderr"
    try:
        plant = EarsPlant.load(PLANT)
        emulator = PlantEmulator(plant, None, servername=server.name).activate()
        with open(log, "w") as stderr:
            proc = hil_processes.popen(anc_device("identify", "--config", str(ears_config(directory)), "--json"),
                                       stdout=subprocess.PIPE, stderr=stderr, env=server.env, cwd=str(ROOT),
                                       text=True)
            try:
                out, _ = proc.communicate(timeout=240)
            finally:
                hil_processes.stop(proc)
        warm = directory / "warm"
        shutil.copytree(directory / "state", warm / "state")
        with open(directory / "warm.stderr", "w") as stderr:
            warm_proc = hil_processes.popen(anc_device("run", "--config", str(ears_config(warm)), "--duration", "4",
                                                       "--json"),
                                            stdout=subprocess.DEVNULL, stderr=stderr, env=server.env,
                                            cwd=str(ROOT), text=True)
            try:
                warm_proc.communicate(timeout=300)
            finally:
                hil_processes.stop(warm_proc)
        emulator.check()
    finally:
        if emulator is not None:
            emulator.close()
        server.stop()
    assert proc.returncode == 0, log.read_text()
    report = json.loads(out.strip().splitlines()[-1])
    print(f"identify, two ears on the emulator: {json.dumps(report)}")
    return {"plant": plant, "report": report, "state_dir": directory / "state"}


def test_identify_stores_each_ears_emulated_path(ears_identification):
    """Each ear's stored estimate is its own cup's path (latency included), not the other's: the
    probe played on that ear's speaker alone, heard on that ear's error mic."""
    plant, report = ears_identification["plant"], ears_identification["report"]
    state = ears_identification["state_dir"]
    assert set(report["ears"]) == {"left", "right"}
    errors = {}
    for name, other in (("left", "right"), ("right", "left")):
        estimate = np.load(state / f"secondary_path.{name}.npz")["secondary_path"]
        own = plant.ears[name].full_secondary_path()
        theirs = plant.ears[other].full_secondary_path()
        errors[name] = (normalised_error_db(estimate, own[:estimate.size]),
                        normalised_error_db(estimate, theirs[:estimate.size]))
        metadata = json.loads((state / f"secondary_path.{name}.json").read_text())
        assert metadata["ear"] == name and metadata["identity"]["ears"] == [
            [ear["name"], ear["reference_channel"], ear["error_channel"], ear["speaker_channel"]] for ear in EARS]
        assert report["ears"][name]["delay_samples"] == plant.latency_samples + int(
            np.argmax(np.abs(plant.ears[name].secondary_path)))
    print(f"each ear's estimate against its own cup's path and the other cup's (dB): {errors}")
    for name, (own_db, theirs_db) in errors.items():
        assert own_db < -20.0, (name, own_db)
        assert own_db < theirs_db - 3.0, (name, own_db, theirs_db)


def test_latency_reports_each_ears_loop_delay_and_verdict(jack_server, emulator_factory, device_processes, tmp_path):
    from simulator.scenes import generate_scene

    plant = EarsPlant.load(PLANT)
    scene = generate_scene("white", 4.0, plant.sample_rate, seed=5, level_dbfs=-45.0)
    emulator_factory(jack_server, plant, scene)
    process = device_processes(anc_device("latency", "--config", str(ears_config(tmp_path)), "--json",
                                          "--ambient-s", "2"), jack_server, "latency")
    status, out = process.finish(timeout_s=240)
    assert status == 0, process.stderr()
    result = json.loads(out.strip().splitlines()[-1])
    print(f"latency, two ears: {json.dumps(result)}")
    for name in ("left", "right"):
        causality = plant.ears[name].causality()
        ear = result["ears"][name]
        assert ear["loop_delay_samples"] == causality.control_delay_samples
        assert ear["broadband_possible"] is causality.broadband_possible


def _run_in_freewheel(ears_identification, jack_server, emulator_factory, device_processes, tmp_path, plant):
    """`anc-device run` with both ears on `plant` playing engine hum, AUDIO_S of it in freewheel:
    (each ear's attenuation at the ear over the last 5 s, the device's summary, its spool)."""
    shutil.copytree(ears_identification["state_dir"], tmp_path / "state")
    scene = load_scene(ENGINE_HUM, plant.sample_rate)
    emulator = emulator_factory(jack_server, plant, scene.samples)
    process = device_processes(anc_device("run", "--config", str(ears_config(tmp_path)), "--json"), jack_server, "run")
    emulator.wait_connected(timeout_s=120, alive=process.alive)
    first = emulator.frames
    emulator.set_freewheel(True)
    try:
        emulator.wait_frames(first + int(AUDIO_S * plant.sample_rate), timeout_s=400, alive=process.alive)
        # Taken while freewheeling: back in real time this busy machine may xrun, and an xrun
        # shifts the stream by a period, which no controller with a fixed estimate survives.
        recorded = {name: emulator.recorded(5.0, name) for name in plant.names}
    finally:
        emulator.set_freewheel(False)
    emulator.check()

    def attenuation_db(names):
        disturbance = sum(float(np.sum(recorded[name]["disturbance"] ** 2)) for name in names)
        error = sum(float(np.sum(recorded[name]["error"] ** 2)) for name in names)
        return round(10.0 * np.log10(max(disturbance, 1e-30) / max(error, 1e-30)), 2)

    attenuation = {name: attenuation_db([name]) for name in plant.names}
    status, summary = stop_run(process, timeout_s=60)
    assert status == 0, process.stderr()[-3000:]
    print(f"run, two ears, freewheel, {AUDIO_S:.0f} s of engine hum on {plant.name}: at the ear, last 5 s "
          f"{attenuation} (both ears {attenuation_db(plant.names)} dB); device: {json.dumps(summary['ears'])}; "
          f"callback p50 {summary['callback_p50_ms']} ms, p99 {summary['callback_p99_ms']} ms, "
          f"xruns {summary['xruns']}")
    return attenuation, summary, tmp_path / "spool.sqlite"


def test_run_cancels_both_ears_in_freewheel(ears_identification, jack_server, emulator_factory, device_processes,
                                            tmp_path):
    plant = ears_identification["plant"]
    attenuation, summary, spool = _run_in_freewheel(ears_identification, jack_server, emulator_factory,
                                                    device_processes, tmp_path, plant)
    for name in plant.names:
        assert attenuation[name] >= CANCELLING_DB, (name, attenuation)
        ear = summary["ears"][name]
        assert not ear["diverged"] and ear["watchdog_trips"] == 0, (name, ear)
        assert ear["estimated_cancellation_db"] is not None
    assert summary["stream_errors"] == 0
    records = read_session_records(spool)
    assert records and set(records[-1]["ears"]) == {"left", "right"}


def _with_right_secondary_gain(plant: EarsPlant, gain: float) -> EarsPlant:
    right = plant.ears["right"]
    ears = {**plant.ears, "right": dataclasses.replace(right, secondary_path=gain * right.secondary_path)}
    return dataclasses.replace(plant, name=f"{plant.name} (right secondary path x{gain:g})", ears=ears)


def test_a_gain_of_3_on_one_ears_path_is_held_at_no_harm_and_the_other_ear_cancels(
        ears_identification, jack_server, emulator_factory, device_processes, tmp_path):
    """The right cup's secondary path three times what was identified. Whether its watchdog trips
    in the start-up transient depends on the xruns of the real-time start (measured: 0, 0, 1,
    2 and 1 trips in five runs, all in the first 0.6 s), so that is not asserted.
    What holds every time: that ear is never stopped, it is no louder than without control at
    the end, and the left ear neither trips nor loses its attenuation."""
    plant = _with_right_secondary_gain(ears_identification["plant"], 3.0)
    attenuation, summary, _ = _run_in_freewheel(ears_identification, jack_server, emulator_factory,
                                                device_processes, tmp_path, plant)
    left, right = summary["ears"]["left"], summary["ears"]["right"]
    assert attenuation["left"] >= CANCELLING_DB, attenuation
    assert not left["diverged"] and left["watchdog_trips"] == 0, left
    assert attenuation["right"] >= -0.5, attenuation   # no harm: not louder than off (0.5 dB for the window)
    assert not right["stopped_for_reidentification"], right
    assert {event["ear"] for event in summary["safety_events"]} <= {"right"}


def test_a_reversed_speaker_on_one_ear_trips_only_that_ears_watchdog(
        ears_identification, jack_server, emulator_factory, device_processes, tmp_path):
    plant = _with_right_secondary_gain(ears_identification["plant"], -1.0)
    attenuation, summary, spool = _run_in_freewheel(ears_identification, jack_server, emulator_factory,
                                                    device_processes, tmp_path, plant)
    right, left = summary["ears"]["right"], summary["ears"]["left"]
    assert right["diverged"] and right["watchdog_trips"] >= 1, right
    assert not left["diverged"] and left["watchdog_trips"] == 0, left
    assert attenuation["left"] >= CANCELLING_DB, attenuation
    assert {event["ear"] for event in summary["safety_events"]} == {"right"}
    record = read_session_records(spool)[-1]
    assert record["ears"]["right"]["watchdog_trips"] >= 1 and record["ears"]["left"]["watchdog_trips"] == 0
