"""The plant emulator on a private JACK server, driven by a plain `sounddevice` stream.

What is asserted is behaviour: where an impulse comes back, which ports exist, what is
refused. Loop delays are measured in freewheel mode, where JACK runs the same callbacks
without deadlines, so they are exact and repeatable; nothing here asserts timing.
"""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pytest

from device.contract.errors import UserError
from simulator.jack_plant import DEFAULT_CLIENT_NAME, JACK_ROUND_TRIP_PERIODS, PlantEmulator
from simulator.plant import Plant, onset

from .conftest import PYTHON, ROOT, stream_probe_argv

pytestmark = pytest.mark.hil

AMPLITUDE = 0.5
# float32 ports: the emitted response carries float32 rounding of the path taps.
FLOAT32_TOLERANCE = 1e-6


def run_probe_in_freewheel(emulator, start_device, server, argv, frames: int) -> dict:
    """Start the stream probe, freewheel until it has recorded `frames`, stop freewheeling, stop it."""
    device = start_device(argv, server, "stream-probe")
    started = device.read_json_line()
    assert started["event"] == "started"
    emulator.wait_connected(alive=device.alive)
    first = emulator.frames
    emulator.set_freewheel(True)
    try:
        # A period of slack either side: the probe's first callback may come one cycle late.
        emulator.wait_frames(first + frames + 4 * server.period, timeout_s=60.0, alive=device.alive)
    finally:
        emulator.set_freewheel(False)
    status, out = device.finish("stop\n")
    assert status == 0, device.stderr()
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["frames"] >= frames
    assert stopped["odd_blocks"] == 0, "PortAudio called back with blocks of another size than asked"
    return {"started": started, "stopped": stopped}


def test_emulator_is_a_portaudio_device_with_two_inputs_and_one_output(jack_server, emulator_factory, device_processes):
    emulator_factory(jack_server, "headphone")
    device = device_processes([PYTHON, str(ROOT / "tests/hil/stream_probe.py"), "--device", "x", "--block", "32",
                               "--list"], jack_server, "list")
    listing = device.read_json_line()
    status, _ = device.finish()
    assert status == 0, device.stderr()
    ours = [d for d in listing["devices"] if d["name"] == DEFAULT_CLIENT_NAME]
    assert ours == [{"name": DEFAULT_CLIENT_NAME, "hostapi": "JACK Audio Connection Kit", "inputs": 2, "outputs": 1}]


@pytest.mark.parametrize(
    "plant_name, period, latency",
    [
        ("headphone", 32, None),   # the preset as it is: 2 periods of 32 + 8 converter samples = 72
        ("headphone", 64, 136),    # the same rig on 64-sample periods: 2 x 64 + 8
        ("duct", 32, None),        # a plant with a feedback path: the speaker also reaches the reference mic
    ],
)
def test_impulse_returns_after_plant_latency_plus_path_delay(
        plant_name, period, latency, jack_server_factory, emulator_factory, device_processes, tmp_path):
    server = jack_server_factory(period)
    plant = Plant.load(plant_name)
    if latency is not None:
        plant = dataclasses.replace(plant, latency_samples=latency)
    # No scene and no sensor noise: the microphones carry only the speaker's echo, sample-exact.
    emulator = emulator_factory(server, plant, None, sensor_noise=False)
    assert emulator.round_trip_samples == JACK_ROUND_TRIP_PERIODS * period
    assert emulator.speaker_delay == plant.latency_samples - JACK_ROUND_TRIP_PERIODS * period

    # Impulses off the period grid, far enough apart for the responses not to overlap.
    impulses = [4800, 9605, 14417, 19231]
    frames = 24000
    recordings = []
    for run in range(2):
        out = tmp_path / f"run{run}.npz"
        run_probe_in_freewheel(emulator, device_processes, server,
                               stream_probe_argv(DEFAULT_CLIENT_NAME, period, frames, impulses, out), frames)
        recordings.append(np.load(out))
    emulator.check()

    error, reference = recordings[0]["error"].astype(np.float64), recordings[0]["reference"].astype(np.float64)
    expected_delay = plant.latency_samples + onset(plant.secondary_path)
    full_secondary = plant.full_secondary_path()
    print(f"{plant_name}, period {period}: JACK round trip {emulator.round_trip_samples} samples, emulator adds "
          f"{emulator.speaker_delay}; impulse back on the error mic after {expected_delay} samples "
          f"(latency {plant.latency_samples} + secondary-path onset {onset(plant.secondary_path)})")
    for k in impulses:
        segment = error[k:k + full_secondary.size]
        first = int(np.argmax(np.abs(segment) >= 0.2 * np.abs(segment).max()))
        assert first == expected_delay, f"impulse at {k} came back after {first} samples, not {expected_delay}"
        np.testing.assert_allclose(segment, AMPLITUDE * full_secondary, rtol=0, atol=FLOAT32_TOLERANCE)
    # Nothing but the echoes: silence before the first impulse's echo.
    assert not np.any(error[:impulses[0] + plant.latency_samples])

    if plant.feedback_path is None:
        assert not np.any(reference)
    else:
        full_feedback = plant.full_feedback_path()
        for k in impulses:
            np.testing.assert_allclose(reference[k:k + full_feedback.size], AMPLITUDE * full_feedback,
                                       rtol=0, atol=FLOAT32_TOLERANCE)
    # Deterministic: a second stream on the same emulator records the same samples.
    assert np.array_equal(recordings[0]["error"], recordings[1]["error"])
    assert np.array_equal(recordings[0]["reference"], recordings[1]["reference"])


def test_scene_reaches_the_microphones_through_the_plant_paths(jack_server, emulator_factory):
    from simulator.scenes import generate_scene

    plant = Plant.load("duct")
    scene = generate_scene("engine_hum", 0.5, plant.sample_rate, seed=3)
    emulator = emulator_factory(jack_server, plant, scene, sensor_noise=False)
    # Nobody is connected: the speaker is silent, so the error is the disturbance itself.
    emulator.set_freewheel(True)
    try:
        emulator.wait_frames(2 * scene.size, timeout_s=30.0)
    finally:
        emulator.set_freewheel(False)
    emulator.check()
    recorded = emulator.recorded()
    looped = np.tile(scene, recorded["error"].size // scene.size + 3)
    # The emulator's first frame is the scene's first sample, in the steady state of the loop.
    expected = np.convolve(looped, plant.primary_path)[scene.size:scene.size + recorded["error"].size]
    np.testing.assert_allclose(recorded["disturbance"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(recorded["error"], recorded["disturbance"])
    assert emulator.attenuation_db(0.5) == pytest.approx(0.0, abs=1e-9)


def test_refuses_a_plant_faster_than_the_jack_round_trip(jack_server, device_processes):
    plant = dataclasses.replace(Plant.load("headphone"), latency_samples=40)
    with pytest.raises(UserError) as refused:
        PlantEmulator(plant, None, servername=jack_server.name)
    message = str(refused.value)
    assert "latency_samples: 40" in message and "round trip of 64 samples" in message
    assert DEFAULT_CLIENT_NAME not in jack_server.client_names()

    # The bench command says the same in one line and exits 2.
    scene = ROOT / "simulator/scenes/engine_hum.wav"
    cli = device_processes([PYTHON, "-m", "simulator.jack_plant", "--plant", "headphone", "--latency-samples", "40",
                            "--scene", str(scene), "--server", jack_server.name], jack_server, "jack-plant")
    status, out = cli.finish(timeout_s=60.0)
    assert status == 2
    assert "latency_samples: 40 is less than the JACK round trip of 64 samples" in cli.stderr()
    assert DEFAULT_CLIENT_NAME not in jack_server.client_names()


def test_refuses_a_plant_at_another_sample_rate(jack_server_factory):
    server = jack_server_factory(32, rate=44100)
    with pytest.raises(UserError, match="sample_rate is 48000 Hz but the JACK server runs at 44100 Hz"):
        PlantEmulator(Plant.load("headphone"), None, servername=server.name)
    assert DEFAULT_CLIENT_NAME not in server.client_names()


def test_teardown_leaves_no_jack_client_behind(jack_server, emulator_factory, device_processes, tmp_path):
    emulator = emulator_factory(jack_server, "headphone")
    run_probe_in_freewheel(emulator, device_processes, jack_server,
                           stream_probe_argv(DEFAULT_CLIENT_NAME, 32, 4800), 4800)
    assert DEFAULT_CLIENT_NAME in jack_server.client_names()
    emulator.close()
    emulator.close()  # idempotent
    assert jack_server.client_names() & {DEFAULT_CLIENT_NAME, "PortAudio"} == set()

    # The bench command: ports while it runs, none after SIGTERM, exit 0 with a summary.
    scene = ROOT / "simulator/scenes/engine_hum.wav"
    cli = device_processes([PYTHON, "-m", "simulator.jack_plant", "--plant", "headphone", "--scene", str(scene),
                            "--json"], jack_server, "jack-plant")
    ready = cli.read_json_line(timeout_s=60.0)
    assert ready["event"] == "ready" and ready["speaker_delay_samples"] == 72 - 64
    expected_ports = {f"{DEFAULT_CLIENT_NAME}:{port}" for port in ("reference_mic", "error_mic", "speaker")}
    assert set(ready["ports"].values()) == expected_ports
    assert DEFAULT_CLIENT_NAME in jack_server.client_names()
    cli.proc.send_signal(signal.SIGTERM)
    status, out = cli.finish()
    assert status == 0, cli.stderr()
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["frames"] > 0
    # Nobody played anti-noise: the error is the disturbance.
    assert stopped["attenuation_db"] == pytest.approx(0.0, abs=1e-6)
    assert DEFAULT_CLIENT_NAME not in jack_server.client_names()


def test_two_ear_emulator_routes_each_speaker_to_its_cup_and_round_the_head(jack_server, emulator_factory,
                                                                           device_processes, tmp_path):
    """headphone-stereo: a 4-in/2-out device, its ports numbered ear by ear. An impulse on one
    speaker comes back on that ear's error mic through its own full secondary path and on the
    other ear's error mic through its crosstalk path, nowhere else."""
    from simulator.ears import EarsPlant

    plant = EarsPlant.load("headphone-stereo")
    emulator = emulator_factory(jack_server, plant, None, sensor_noise=False)
    assert list(emulator.port_names) == ["left_reference_mic", "left_error_mic", "left_speaker",
                                         "right_reference_mic", "right_error_mic", "right_speaker"]
    impulses, frames = [4800, 9605], 14400
    delay = np.zeros(plant.latency_samples)
    for channel, (speaker, other) in enumerate((("left", "right"), ("right", "left"))):
        out = tmp_path / f"{speaker}.npz"
        run_probe_in_freewheel(emulator, device_processes, jack_server,
                               stream_probe_argv(DEFAULT_CLIENT_NAME, 32, frames, impulses, out, inputs=4, outputs=2,
                                                 impulse_channel=channel), frames)
        inputs = np.load(out)["inputs"].astype(np.float64)
        own = plant.ears[speaker].full_secondary_path()
        leak = np.concatenate([delay, plant.crosstalk[speaker]])
        own_error, other_error = inputs[:, 2 * channel + 1], inputs[:, 2 * (1 - channel) + 1]
        for k in impulses:
            np.testing.assert_allclose(own_error[k:k + own.size], AMPLITUDE * own, rtol=0, atol=FLOAT32_TOLERANCE)
            np.testing.assert_allclose(other_error[k:k + leak.size], AMPLITUDE * leak, rtol=0, atol=FLOAT32_TOLERANCE)
        assert not np.any(inputs[:, 0]) and not np.any(inputs[:, 2]), "no feedback path: the reference mics are silent"
        print(f"impulse on the {speaker} speaker: its error mic peak {np.abs(own_error).max():.4f}, "
              f"the {other} error mic {np.abs(other_error).max():.2e}")
    emulator.check()
