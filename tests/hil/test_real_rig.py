"""The same checks on a real rig: ANC_HIL_DEVICE names its PortAudio device.

    ANC_HIL_DEVICE="USB Audio" [ANC_HIL_CONFIG=rig.yaml] \\
    [ANC_HIL_TONE_DEVICE="other card" ANC_HIL_TONE_CHANNEL=0] pytest tests/hil -m hil

ANC_HIL_CONFIG (optional) is a config file with the rig's channel map and block size, merged
over the defaults; the tests only replace the device, the state directory and the spool.
The tone test needs a second loudspeaker to make the noise, driven by ANC_HIL_TONE_DEVICE
(a PortAudio output device other than the rig's, which the runtime holds). Without these
variables the tests are skipped: there is no rig to test, which is not a failure.

No ground truth exists on a real rig, so cancellation is the device's own estimate.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from .conftest import PYTHON, ROOT

pytestmark = pytest.mark.hil

# Modelling error a healthy rig reaches in a quiet room (the runtime accepts up to -10 dB).
MAX_QUALITY_DB = -20.0
TONE_HZ = 200.0
MIN_TONE_CANCELLATION_DB = 10.0


def rig_config(directory: Path, device: str) -> tuple[Path, dict]:
    base = {}
    if os.environ.get("ANC_HIL_CONFIG"):
        base = yaml.safe_load(Path(os.environ["ANC_HIL_CONFIG"]).read_text()) or {}
    base.setdefault("audio", {})["device"] = device
    base.setdefault("runtime", {})["state_dir"] = str(directory / "state")
    base.setdefault("spool", {})["path"] = str(directory / "spool.sqlite")
    path = directory / "rig.yaml"
    path.write_text(yaml.safe_dump(base))
    from device.contract.config import load_config

    return path, load_config(path).as_dict()


def anc_device(*args: str) -> list[str]:
    return [PYTHON, "-m", "device.cli", *args]


def last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.strip()][-1])


@pytest.fixture
def rig(real_device, tmp_path):
    config, values = rig_config(tmp_path, real_device)
    return {"device": real_device, "config": config, "audio": values["audio"]}


@pytest.fixture
def identified_rig(rig, device_processes):
    process = device_processes(anc_device("identify", "--config", str(rig["config"]), "--json"), None, "identify")
    status, out = process.finish(timeout_s=120)
    assert status == 0, process.stderr()
    return {**rig, "identify": last_json(out)}


def test_real_stream_opens_and_closes_cleanly(rig, device_processes):
    audio = rig["audio"]
    argv = [PYTHON, str(ROOT / "tests/hil/stream_probe.py"), "--device", rig["device"], "--block",
            str(audio["block_size"]), "--rate", str(audio["sample_rate"]), "--frames", str(audio["sample_rate"]),
            "--inputs", str(max(audio["reference_channel"], audio["error_channel"]) + 1),
            "--outputs", str(audio["speaker_channel"] + 1)]
    process = device_processes(argv, None, "stream-probe")
    assert process.read_json_line()["event"] == "started"
    time.sleep(1.5)
    status, out = process.finish("stop\n")
    assert status == 0, process.stderr()
    stopped = last_json(out)
    print(f"real stream on {rig['device']!r}: {stopped}")
    assert stopped["frames"] >= audio["sample_rate"]
    assert stopped["odd_blocks"] == 0


def test_real_identification_quality(identified_rig):
    report = identified_rig["identify"]
    print(f"identify on {identified_rig['device']!r}: {report}")
    assert report["quality_db"] < MAX_QUALITY_DB
    assert report["delay_samples"] > 0


def test_real_latency(identified_rig, device_processes):
    process = device_processes(anc_device("latency", "--config", str(identified_rig["config"]), "--json"), None,
                               "latency")
    status, out = process.finish(timeout_s=120)
    assert status == 0, process.stderr()
    result = last_json(out)
    print(f"latency on {identified_rig['device']!r}: {result}")
    assert result["loop_delay_samples"] > 0
    # The onset of the loop response comes no later than the identified path's largest tap.
    assert result["loop_delay_samples"] <= identified_rig["identify"]["delay_samples"]
    if result["reference_lead_samples"] is not None:
        assert result["broadband_possible"] is (result["reference_lead_samples"] >= result["loop_delay_samples"])


def test_real_cancellation_of_a_played_tone(identified_rig, device_processes):
    tone_device = os.environ.get("ANC_HIL_TONE_DEVICE")
    if not tone_device:
        pytest.skip("ANC_HIL_TONE_DEVICE is not set: no second loudspeaker to play the noise on this rig")
    channel = int(os.environ.get("ANC_HIL_TONE_CHANNEL", "0"))
    rate = identified_rig["audio"]["sample_rate"]
    player = device_processes([PYTHON, "-c", TONE_PLAYER, tone_device, str(channel), str(TONE_HZ), str(rate)], None,
                              "tone")
    assert player.read_json_line()["event"] == "playing"
    run = device_processes(anc_device("run", "--config", str(identified_rig["config"]), "--json", "--duration", "15"),
                           None, "run")
    status, out = run.finish(timeout_s=120)
    player.close()
    assert status == 0, run.stderr()
    summary = last_json(out)
    print(f"tone {TONE_HZ:g} Hz on {tone_device!r}: {summary}")
    assert summary["estimated_cancellation_db"] is not None
    assert summary["estimated_cancellation_db"] >= MIN_TONE_CANCELLATION_DB


# A steady tone, 0.1 peak (-23 dBFS RMS), on one output channel until killed.
TONE_PLAYER = """
import json, sys, time, numpy as np, sounddevice as sd
device, channel, freq, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
phase = [0.0]
def callback(outdata, frames, time_info, status):
    t = phase[0] + np.arange(frames) / rate
    outdata.fill(0)
    outdata[:, channel] = 0.1 * np.sin(2 * np.pi * freq * t)
    phase[0] += frames / rate
with sd.OutputStream(device=device, samplerate=rate, channels=channel + 1, callback=callback):
    print(json.dumps({"event": "playing"}), flush=True)
    while True:
        time.sleep(1)
"""
