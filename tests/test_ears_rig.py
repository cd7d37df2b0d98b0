"""`anc-device run` with two ears on a sound card, without one: a fake 4-in/2-out card whose
stream thread calls the real duplex callback with the microphones of a two-cup plant (each
cup's speaker heard two blocks after it was written, as on a duplex stream), and SIGTERM
after a fixed amount of audio, as systemd stops the service. The same code on JACK is in
tests/hil/test_ears.py."""

import json
import os
import signal
import sqlite3
import threading
import time
from collections import deque

import numpy as np
import pytest
import scipy.signal
import yaml

from test_rig import FakeSoundDevice, device

FS = 48000
BLOCK = 32
LOOP_BLOCKS = 2   # a duplex stream hears what it wrote this many blocks later
TWO_EARS = [
    {"name": "left", "reference_channel": 0, "error_channel": 1, "speaker_channel": 0},
    {"name": "right", "reference_channel": 2, "error_channel": 3, "speaker_channel": 1},
]


class FakeCard(FakeSoundDevice):
    """Device selection as `FakeSoundDevice`, plus `Stream`: a thread playing `plant`."""

    def __init__(self, devices, plant, stop_after_blocks):
        super().__init__(devices)
        self.plant = plant
        self.stop_after_blocks = stop_after_blocks
        self.streams = []

    def Stream(self, **kwargs):  # noqa: N802 - sounddevice's name
        stream = FakeStream(self, **kwargs)
        self.streams.append(stream)
        return stream


class FakeStream:
    latency = (0.001, 0.001)

    def __init__(self, card, samplerate, blocksize, device, channels, dtype, latency, callback,
                 finished_callback, dither_off):
        assert (samplerate, blocksize, dtype) == (FS, BLOCK, "float32")
        self.card = card
        self.channels = channels
        self.callback = callback
        self.active = False
        self.blocks = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        inputs, outputs = self.channels
        indata = np.zeros((BLOCK, inputs), dtype=np.float32)
        outdata = np.zeros((BLOCK, outputs), dtype=np.float32)
        while not self._stop.is_set():
            self.card.plant.microphones(indata)
            self.callback(indata, outdata, BLOCK, None, None)
            self.card.plant.speakers(outdata)
            self.blocks += 1
            if self.blocks == self.card.stop_after_blocks:
                os.kill(os.getpid(), signal.SIGTERM)   # the supervisor's handler: fade out and stop
            time.sleep(0.0003)   # about real time or a little faster, so the worker keeps up

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.active = False

    def close(self):
        self.stop()


class TwoCupPlant:
    """Each cup: reference mic = the tone, error mic = primary path * tone + polarity *
    secondary path * its speaker (written LOOP_BLOCKS blocks earlier), + a little noise."""

    def __init__(self, secondary_paths, polarity):
        rng = np.random.default_rng(0)
        self.rng = rng
        self.secondary = secondary_paths
        self.polarity = polarity
        self.primary = [np.array([0.0] * 20 + [0.9, 0.3]), np.array([0.0] * 24 + [0.8, 0.25])]
        self.primary_state = [np.zeros(p.size - 1) for p in self.primary]
        self.secondary_state = [np.zeros(p.size - 1) for p in self.secondary]
        self.played = deque([np.zeros((BLOCK, 2))] * LOOP_BLOCKS)
        self.position = 0

    def microphones(self, indata):
        t = (self.position + np.arange(BLOCK)) / FS
        self.position += BLOCK
        tone = 0.1 * np.sin(2 * np.pi * 180 * t) + 0.05 * np.sin(2 * np.pi * 360 * t + 0.4)
        heard = self.played.popleft()
        for ear in range(2):
            disturbance, self.primary_state[ear] = scipy.signal.lfilter(self.primary[ear], [1.0], tone,
                                                                        zi=self.primary_state[ear])
            anti, self.secondary_state[ear] = scipy.signal.lfilter(self.secondary[ear], [1.0], heard[:, ear],
                                                                   zi=self.secondary_state[ear])
            indata[:, 2 * ear] = tone + 1e-4 * self.rng.standard_normal(BLOCK)
            indata[:, 2 * ear + 1] = disturbance + self.polarity[ear] * anti + 1e-4 * self.rng.standard_normal(BLOCK)

    def speakers(self, outdata):
        self.played.append(outdata[:, :2].astype(np.float64))


def _store_estimates(state, spec_identity, secondary_paths):
    from device.rig.estimates import save_estimates

    for name, path in zip(("left", "right"), secondary_paths):
        estimate = np.concatenate([np.zeros(LOOP_BLOCKS * BLOCK), path])
        save_estimates(state, estimate, None, spec_identity, {"quality_db": -40.0}, ear=name)


def _config(tmp_path, device_name="headset"):
    path = tmp_path / "anc.yaml"
    path.write_text(yaml.safe_dump({
        "audio": {"device": device_name, "block_size": BLOCK, "ears": TWO_EARS},
        "runtime": {"state_dir": str(tmp_path / "state"), "metrics_interval_s": 0.5},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "controller": {"taps": 128},
    }))
    return path


def _records(spool, kind):
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT body FROM outbox WHERE kind = ? ORDER BY rowid", (kind,)).fetchall()
    return [json.loads(body) for (body,) in rows]


@pytest.fixture(scope="module")
def cup_paths():
    from simulator.ears import EarsPlant

    plant = EarsPlant.load("headphone-stereo")
    return [plant.ears[name].secondary_path[:96] for name in ("left", "right")]


def test_run_drives_both_ears_in_one_stream_and_one_ear_reversed_trips_only_that_ear(
        tmp_path, cup_paths, monkeypatch, capsys):
    """Two ears on one card: the left cup as identified, the right cup's speaker wired with its
    polarity reversed. Only the right ear's watchdog trips; that ear checks its own path, takes
    the reversed estimate and cancels again, while the left ear keeps cancelling. The
    summary, the processing metrics (one per ear per interval, naming the ear) and the one
    session record (each ear's cancellation in it) all say so; the classifier, hearing the
    mean of both reference mics, gives both ears the same preset."""
    import device.rig.audio as audio
    from device.cli import main
    from device.rig.audio import resolve_stream
    from device.contract.config import load_config

    devices = [device("USB Audio Device: Headset (hw:1,0)", 4, 2)]
    # 8 s: after its trip and re-identification the right ear re-converges with the variable step,
    # slower than with the fixed step (in 5 s it was at 9.5 dB in one fresh-clone run).
    card = FakeCard(devices, TwoCupPlant(cup_paths, polarity=(1.0, -1.0)), stop_after_blocks=int(8.0 * FS / BLOCK))
    config = _config(tmp_path)
    (tmp_path / "state").mkdir()
    _store_estimates(tmp_path / "state", resolve_stream(card, load_config(config)).identity, cup_paths)
    monkeypatch.setattr(audio, "import_sounddevice", lambda: card)

    assert main(["run", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(card.streams) == 1 and card.streams[0].channels == (4, 2)
    assert summary["status"] == "stopped" and summary["callback_errors"] == 0
    left, right = summary["ears"]["left"], summary["ears"]["right"]
    print(f"two ears on the fake card: left {left}, right {right}; callback p50 {summary['callback_p50_ms']} ms, "
          f"p99 {summary['callback_p99_ms']} ms; dropped blocks {summary['dropped_blocks']}")
    assert right["diverged"] and right["watchdog_trips"] >= 1
    assert not left["diverged"] and left["watchdog_trips"] == 0
    assert left["estimated_cancellation_recent_db"] > 10.0, left
    assert summary["watchdog_trips"] == right["watchdog_trips"]
    assert {event["ear"] for event in summary["safety_events"]} == {"right"}
    checks = [event for event in right["safety_events"] if event["kind"] == "secondary_path_reidentified"]
    assert len(checks) == 1 and checks[0]["ear"] == "right" and checks[0]["replaced"], right["safety_events"]
    assert [check["ear"] for check in summary["path_checks"]] == ["right"]
    # The re-identified right estimate is stored for the next run; the left one is as identified.
    from device.rig.estimates import load_estimates

    identity = resolve_stream(card, load_config(config)).identity
    stored = {name: load_estimates(tmp_path / "state", identity, ear=name) for name in ("left", "right")}
    assert "reidentified" not in stored["left"].metadata
    assert stored["right"].metadata["reidentified"]["reidentifications"] == 1
    assert stored["right"].metadata["quality_db"] == -40.0   # the identification's metadata kept
    as_identified = np.concatenate([np.zeros(LOOP_BLOCKS * BLOCK), cup_paths[1]])
    assert np.allclose(stored["left"].secondary_path, np.concatenate([np.zeros(LOOP_BLOCKS * BLOCK), cup_paths[0]]))
    # Reversed: the stored right estimate now points the other way from the one identified.
    assert np.dot(stored["right"].secondary_path, as_identified) < 0.0
    assert right["estimated_cancellation_recent_db"] > 10.0, right
    assert not right["stopped_for_reidentification"] and not left["stopped_for_reidentification"]
    from device.rig.supervisor import format_summary

    lines = {line.split()[0]: line for line in format_summary(summary).splitlines()}
    assert "no watchdog events" in lines["left"]
    assert f"watchdog tripped {right['watchdog_trips']}x" in lines["right"]
    assert "anti-noise stopped" not in lines["right"]

    spool = tmp_path / "spool.sqlite"
    sessions = _records(spool, "session")
    assert len(sessions) == 1, sessions
    record = sessions[0]
    assert record["session_id"] == summary["session_id"]
    assert set(record["ears"]) == {"left", "right"}
    assert record["ears"]["right"]["watchdog_trips"] >= 1 and record["ears"]["left"]["watchdog_trips"] == 0
    metrics = _records(spool, "processing_metric")
    by_ear = {name: [m for m in metrics if m["extras"].get("ear") == name] for name in ("left", "right")}
    assert by_ear["left"] and len(by_ear["left"]) == len(by_ear["right"]), {k: len(v) for k, v in by_ear.items()}
    assert all(m["session_id"] == summary["session_id"] for m in metrics)
    # One classifier for the headphone: both ears run the preset it chose, interval for interval.
    assert summary["classifier"] == "on" and _records(spool, "noise_detection")
    assert [m["extras"]["noise_type"] for m in by_ear["left"]] == [m["extras"]["noise_type"] for m in by_ear["right"]]


def test_run_refuses_an_ear_channel_the_card_does_not_have(tmp_path, monkeypatch, capsys):
    """The right cup on input channels 2 and 3 of a two-input card: one line naming the key, the
    ear, the channel and the device, exit 2, before anything is opened."""
    import device.rig.audio as audio
    from device.cli import main

    card = FakeCard([device("small", 2, 2)], plant=None, stop_after_blocks=0)
    monkeypatch.setattr(audio, "import_sounddevice", lambda: card)
    assert main(["run", "--config", str(_config(tmp_path, "small")), "--duration", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["anc-device: error: audio.ears[1].reference_channel: channel 2 (right) is beyond audio.device "
                     "device 0 'small', which has 2 input channels"]
    assert card.streams == []


def test_the_control_channel_sets_every_ear_and_reports_each(tmp_path, cup_paths):
    """A desired setting written as the cloud agent writes it reaches both ears' controllers;
    `reported.json` gives each ear's mode and watchdog trips; a refused value changes no ear."""
    from device.contract.config import load_config
    from device.contract.control_channel import read_reported, write_desired
    from device.core.ears import compose_ears_session
    from device.rig.control import RuntimeControl

    cfg = load_config(_config(tmp_path)).replace("classifier", enabled=False)
    estimates = [np.concatenate([np.zeros(LOOP_BLOCKS * BLOCK), path]) for path in cup_paths]
    session = compose_ears_session({"left": cfg, "right": cfg}, estimates, [None, None], sample_rate=FS,
                                   block_size=BLOCK)
    control = RuntimeControl(tmp_path, session.worker, workers=session.workers)
    write_desired(tmp_path, {"anc_enabled": False, "anc_intensity": 0.5})
    control.poll()
    for worker in session.workers:
        assert worker.engine.enabled is False and worker.engine.intensity == pytest.approx(0.5)
    reported = read_reported(tmp_path)
    assert reported["anc_enabled"] is False and set(reported["ears"]) == {"left", "right"}
    assert all(ear["watchdog_trips"] == 0 for ear in reported["ears"].values())
    (tmp_path / "desired.json").write_text(json.dumps({"version": 99, "settings": {"anc_intensity": 7}}))
    control.poll()
    assert [worker.engine.intensity for worker in session.workers] == [pytest.approx(0.5)] * 2
    assert "anc_intensity" in read_reported(tmp_path)["desired_error"]
