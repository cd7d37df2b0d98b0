"""The rig-side runtime without a sound card: device selection, stored estimates, the
control channel, run-long timing percentiles and the latency measurements' signal processing.
The same code against a real PortAudio stream is exercised in tests/hil."""

import json
import os

import numpy as np
import pytest
import scipy.signal

from device.contract.errors import UserError


# -- a stand-in for the sounddevice module: just what device selection reads -------------------
class FakeSoundDevice:
    class PortAudioError(Exception):
        pass

    class default:
        device = (0, 0)

    def __init__(self, devices):
        self.devices = devices

    def query_devices(self):
        return self.devices

    def query_hostapis(self, index=None):
        apis = [{"name": "ALSA"}, {"name": "JACK Audio Connection Kit"}]
        return apis if index is None else apis[index]

    def get_portaudio_version(self):
        return (0, "PortAudio V19 (fake)")


class PortAudioError(Exception):
    """Named as sounddevice's: what its import raises when Pa_Initialize fails."""


def refusing_import(monkeypatch, refusals: int):
    """Make `import sounddevice` fail the way a busy JACK server makes it fail, `refusals`
    times, then succeed with a stand-in module. Returns the list of attempts."""
    import builtins
    import sys
    import types

    real_import = builtins.__import__
    attempts = []

    def fake_import(name, *args, **kwargs):
        if name != "sounddevice":
            return real_import(name, *args, **kwargs)
        attempts.append(name)
        if len(attempts) <= refusals:
            raise PortAudioError("Error initializing PortAudio: Unanticipated host error [PaErrorCode -9999]")
        return types.SimpleNamespace(name="stand-in")

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    return attempts


def test_portaudio_that_refuses_one_initialization_is_tried_again(monkeypatch):
    from device.rig import audio
    monkeypatch.setattr(audio.time, "sleep", lambda s: None)
    attempts = refusing_import(monkeypatch, refusals=2)
    assert audio.import_sounddevice().name == "stand-in"
    assert len(attempts) == 3


def test_portaudio_that_keeps_refusing_is_one_clear_error(monkeypatch):
    from device.rig import audio
    monkeypatch.setattr(audio.time, "sleep", lambda s: None)
    attempts = refusing_import(monkeypatch, refusals=100)
    with pytest.raises(UserError, match=r"cannot initialize PortAudio after 5 tries: .*PaErrorCode -9999"):
        audio.import_sounddevice()
    assert len(attempts) == audio.PORTAUDIO_INIT_ATTEMPTS


def device(name, inputs, outputs, hostapi=0):
    return {"name": name, "hostapi": hostapi, "max_input_channels": inputs, "max_output_channels": outputs,
            "default_samplerate": 48000.0, "default_low_input_latency": 0.005, "default_low_output_latency": 0.005}


@pytest.fixture
def fake_sd():
    return FakeSoundDevice([
        device("USB Audio Device: Headset (hw:1,0)", 2, 2),
        device("bcm2835 Headphones", 0, 2),
        device("USB Audio Device: Mono mic", 1, 0),
        device("anc-plant", 2, 1, hostapi=1),
    ])


def test_resolve_stream_by_name_substring_and_channel_map(cfg, fake_sd):
    from device.rig.audio import resolve_stream

    spec = resolve_stream(fake_sd, cfg.replace("audio", device="headset"))
    assert (spec.input_index, spec.output_index) == (0, 0)
    assert (spec.input_channels, spec.output_channels) == (2, 1)
    assert spec.identity["input_device"] == "USB Audio Device: Headset (hw:1,0)"
    assert spec.identity["block_size"] == cfg.audio.block_size


@pytest.mark.parametrize("audio, message", [
    ({"device": "nonexistent"}, "audio.device: no input device matches 'nonexistent'"),
    ({"device": "usb audio"}, "matches several input devices"),
    ({"device": 9}, "audio.device: device index 9 does not exist"),
    ({"device": "headset", "error_channel": 3}, "has 2 input channels, the channel map needs 4"),
    ({"device": "headset", "error_channel": 0}, "audio.error_channel: 0 is also the reference channel"),
    ({"input_device": "headset", "output_device": "anc-plant"}, "same host API"),
])
def test_resolve_stream_errors_name_the_key(cfg, fake_sd, audio, message):
    from device.rig.audio import resolve_stream

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_stream(fake_sd, cfg.replace("audio", **audio))


def test_list_devices_marks_the_configured_ones(cfg, fake_sd):
    from device.rig.audio import list_devices

    listing = list_devices(fake_sd, cfg.replace("audio", device="anc-plant"))
    marked = {d["name"]: d["configured"] for d in listing["devices"] if d["configured"]}
    assert marked == {"anc-plant": ["input", "output"]}
    assert listing["host_apis"] == ["ALSA", "JACK Audio Connection Kit"]


# -- the duplex callback, driven by hand ------------------------------------------------------------
def test_duplex_callback_routes_channels_and_counts_xruns(cfg, fake_sd):
    from device.rig.audio import DuplexStream, resolve_stream

    spec = resolve_stream(fake_sd, cfg.replace("audio", device="headset", speaker_channel=1, block_size=4))
    seen = {}

    class Echo:
        def process_block(self, reference, error, out, meta):
            seen["reference"], seen["error"], seen["meta"] = reference.copy(), error.copy(), meta.copy()
            out[:] = error * 2

    stream = DuplexStream(fake_sd, spec, Echo())
    indata = np.array([[1, 10], [2, 20], [3, 30], [4, 40]], dtype=np.float32)
    outdata = np.full((4, 2), 9.0, dtype=np.float32)
    stream._callback(indata, outdata, 4, None, True)
    assert seen["reference"].tolist() == [1, 2, 3, 4] and seen["error"].tolist() == [10, 20, 30, 40]
    assert outdata[:, 0].tolist() == [0, 0, 0, 0] and outdata[:, 1].tolist() == [20, 40, 60, 80]
    assert seen["meta"][2] == 1.0 and stream.xruns == 1 and stream.blocks == 1
    stream._callback(indata, outdata, 4, None, False)
    assert stream.xruns == 1 and stream.blocks == 2 and stream.meta[1] > 0  # duration of the callback


def test_duplex_callback_silences_the_block_when_the_processor_raises(cfg, fake_sd):
    from device.rig.audio import DuplexStream, resolve_stream

    spec = resolve_stream(fake_sd, cfg.replace("audio", device="headset", block_size=2))

    class Broken:
        def process_block(self, reference, error, out, meta):
            out[:] = 1.0
            raise RuntimeError("boom")

    stream = DuplexStream(fake_sd, spec, Broken())
    outdata = np.ones((2, 1), dtype=np.float32)
    stream._callback(np.ones((2, 2), dtype=np.float32), outdata, 2, None, False)
    assert not outdata.any() and stream.callback_errors == 1 and "boom" in stream.last_callback_error


def test_play_record_aligns_played_and_recorded_samples():
    from device.rig.audio import PlayRecord

    played = np.arange(1, 11, dtype=np.float64)
    recorder = PlayRecord(played, block_size=4)
    out = np.zeros(4, dtype=np.float32)
    meta = np.zeros(4)
    outputs = []
    for k in range(4):
        block = np.full(4, k, dtype=np.float32)
        recorder.process_block(block, block + 100, out, meta)
        outputs.append(out.copy())
    assert np.concatenate(outputs[:3]).tolist() == list(range(1, 11)) + [0, 0]
    assert recorder.done.is_set() and not outputs[3].any()
    assert recorder.error[:12].tolist() == [100] * 4 + [101] * 4 + [102] * 4


# -- stored estimates ---------------------------------------------------------------------------------
IDENTITY = {"host_api": "ALSA", "input_device": "card", "output_device": "card", "sample_rate": 48000,
            "block_size": 32, "error_channel": 1, "speaker_channel": 0, "stream_latency": "low"}


def test_estimate_round_trip_and_refusals(tmp_path):
    from device.rig.estimates import load_estimates, save_estimates

    with pytest.raises(UserError, match="no secondary-path estimate; run `anc-device identify` first"):
        load_estimates(tmp_path, IDENTITY)
    estimate = np.linspace(0, 1, 256)
    save_estimates(tmp_path, estimate, None, IDENTITY, {"quality_db": -30.0})
    loaded = load_estimates(tmp_path, IDENTITY)
    assert np.array_equal(loaded.secondary_path, estimate) and loaded.feedback_path is None
    assert loaded.metadata["quality_db"] == -30.0
    with pytest.raises(UserError, match=r"made for a different stream: block_size 32 \(now 64\).*identify` again"):
        load_estimates(tmp_path, {**IDENTITY, "block_size": 64})
    (tmp_path / "secondary_path.npz").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="unreadable estimate"):
        load_estimates(tmp_path, IDENTITY)


# -- the control channel, as the runtime applies it -------------------------------------------------
@pytest.fixture
def control_worker(cfg, headphone_estimate, tmp_path):
    from device.core.engine import AncEngine
    from device.core.ringbuffer import BlockRing
    from device.core.worker import Worker

    engine = AncEngine.from_config(cfg, headphone_estimate)
    worker = Worker(cfg, BlockRing(8, cfg.audio.block_size), engine)
    return worker


def test_desired_settings_reach_the_engine_and_reported_follows(control_worker, tmp_path):
    from device.rig.control import RuntimeControl
    from device.contract.control_channel import read_reported, write_desired

    control = RuntimeControl(tmp_path, control_worker, health=lambda: {"xruns": 3})
    control.poll()
    assert read_reported(tmp_path)["anc_enabled"] is True
    write_desired(tmp_path, {"anc_enabled": False, "anc_intensity": 0.5, "preset": "traffic"})
    control.poll()
    engine = control_worker.engine
    assert engine.enabled is False
    traffic = control_worker.cfg.presets["traffic"]
    assert engine.params[__import__("device.core.dsp.layout", fromlist=["P_STEP"]).P_STEP] == pytest.approx(traffic.step_size)
    assert engine.intensity == pytest.approx(0.5 * traffic.intensity)
    reported = read_reported(tmp_path)
    assert reported["anc_enabled"] is False and reported["anc_intensity"] == 0.5
    assert reported["preset"] == "traffic" and reported["xruns"] == 3 and reported["desired_error"] is None


def test_invalid_desired_file_is_reported_and_nothing_applied(control_worker, tmp_path):
    from device.rig.control import RuntimeControl
    from device.contract.control_channel import read_reported

    control = RuntimeControl(tmp_path, control_worker)
    (tmp_path / "desired.json").write_text(json.dumps({"version": 1, "settings": {"anc_intensity": 7}}))
    control.poll()
    assert control_worker.engine.intensity == 1.0
    assert "anc_intensity: must be a number in 0..1" in read_reported(tmp_path)["desired_error"]


def test_a_refused_model_keeps_the_running_one(control_worker, tmp_path):
    from device.rig.control import RuntimeControl
    from device.contract.control_channel import read_reported
    from device.contract.files import write_json_atomic

    running = object()
    control_worker.classifier = running
    control = RuntimeControl(tmp_path, control_worker)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    write_json_atomic(tmp_path / "model.json", {"path": str(bad), "sha256": "0" * 64, "action": "reload"})
    control.poll()
    assert control_worker.classifier is running
    assert "new model refused, the running one stays" in read_reported(tmp_path)["model_error"]


# -- timing percentiles over a whole run --------------------------------------------------------------
def test_latency_histogram_percentiles_within_a_bin():
    from device.core.worker import LatencyHistogram

    values = np.random.default_rng(0).uniform(10e-6, 200e-6, 100_000)
    histogram = LatencyHistogram()
    for chunk in np.array_split(values, 37):
        histogram.add(chunk)
    for q in (50, 99, 99.9):
        assert histogram.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.025)
    assert histogram.maximum == values.max()
    assert LatencyHistogram().summary_ms("callback")["callback_p99_ms"] is None


# -- pieces that replace scipy.signal on the device (start-up time) -----------------------------------
@pytest.mark.parametrize("cutoff", [10.0, 20.0, 80.0])
def test_highpass_coefficients_equal_scipy_butter(cutoff):
    from device.core.engine import butterworth_highpass

    b, a = butterworth_highpass(cutoff, 48000)
    b_ref, a_ref = scipy.signal.butter(2, cutoff, "highpass", fs=48000)
    assert np.allclose(b, b_ref, rtol=1e-12, atol=1e-15) and np.allclose(a, a_ref, rtol=1e-12, atol=1e-15)


def test_worker_streaming_fir_equals_lfilter(control_worker):
    x = np.random.default_rng(2).standard_normal(3000)
    pieces = [control_worker._speaker_at_error(x[a:a + 333]) for a in range(0, x.size, 333)]
    expected = scipy.signal.lfilter(control_worker._secondary, [1.0], x)
    assert np.allclose(np.concatenate(pieces), expected, atol=1e-12)


def test_runtime_modules_do_not_import_scipy_signal():
    """scipy.signal costs seconds of start-up on a Pi; the live path must not need it (nor
    scipy.fft, which only identification's convolutions use)."""
    import subprocess
    import sys

    code = ("import sys, device.core.engine, device.core.worker, device.core.session, device.rig.audio, device.rig.supervisor, "
            "device.rig.control, device.core.classifier, device.core.features, device.commands.run; "
            "print('scipy.signal' in sys.modules, 'scipy.fft' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.stdout.strip() == "False False"


# -- the latency command's measurements on synthetic signals ------------------------------------------
def test_loop_impulse_response_finds_the_delay():
    from device.core.causality import onset
    from device.commands.latency import loop_impulse_response

    rng = np.random.default_rng(3)
    probe = rng.standard_normal(48000) * 0.03
    path = np.zeros(300)
    path[137:140] = [0.2, 0.5, -0.3]
    recorded = np.convolve(probe, path)[:probe.size + 2000] + rng.standard_normal(probe.size + 299)[:probe.size + 2000] * 1e-4
    response = loop_impulse_response(probe, recorded, 2000)
    assert onset(response) == 137


def test_reference_lead_from_broadband_ambient_and_refusal_on_a_tone():
    from device.commands.latency import reference_lead

    fs = 48000
    rng = np.random.default_rng(4)
    noise = rng.standard_normal(3 * fs) * 0.05
    primary = np.zeros(200)
    primary[40], primary[60] = 0.7, 0.2
    error = np.convolve(noise, primary)[:noise.size]
    lead, fit_db = reference_lead(noise, error, fs)
    assert lead == 40 and fit_db < -30
    lagging, _ = reference_lead(error, noise + 0 * error, fs)  # the "reference" hears it 40 samples later
    assert lagging == -40
    tone = 0.1 * np.sin(2 * np.pi * 200 * np.arange(3 * fs) / fs)
    assert reference_lead(tone, np.roll(tone, 30), fs)[0] is None


# -- identification in a noisy room -------------------------------------------------------------------
@pytest.mark.parametrize("room_dbfs", [-60.0, -30.0, -20.0])
def test_expected_estimate_error_matches_the_true_error_in_room_noise(room_dbfs):
    """The modelling error only says how loud the room is; the expected estimate error says
    how far the estimate is from the path, which is what FxLMS depends on."""
    from device.core.dsp.identification import identify_path, make_probe

    rng = np.random.default_rng(5)
    path = np.zeros(256)
    path[72:78] = [0.3, 0.8, -0.5, 0.2, 0.1, -0.05]
    probe = make_probe(144_000, -30.0, 960, 1)
    recorded = np.convolve(probe, path)[:probe.size] + rng.standard_normal(probe.size) * 10 ** (room_dbfs / 20)
    result = identify_path(probe, recorded, 256)
    true_error_db = 10 * np.log10(np.sum((result.estimate - path) ** 2) / np.sum(path ** 2))
    assert result.estimate_error_db == pytest.approx(true_error_db, abs=1.0)
    if room_dbfs >= -30.0:
        assert result.quality_db > -5.0 > result.estimate_error_db + 10  # loud room, usable estimate


def test_feature_helpers_equal_scipy_signal():
    from device.core.features import hann_periodic, kaiser_lowpass, welch_psd

    assert np.allclose(hann_periodic(400), scipy.signal.get_window("hann", 400, fftbins=True), atol=1e-15)
    assert np.allclose(kaiser_lowpass(61, 1 / 3, 5.0), scipy.signal.firwin(61, 1 / 3, window=("kaiser", 5.0)), atol=1e-15)
    x = np.random.default_rng(6).standard_normal(20_000)
    for nperseg in (1024, 999, 20_000):
        freqs, psd = welch_psd(x, 16000, nperseg)
        freqs_ref, psd_ref = scipy.signal.welch(x, fs=16000, window="hann", nperseg=nperseg, detrend="constant")
        assert np.array_equal(freqs, freqs_ref) and np.allclose(psd, psd_ref, rtol=1e-10, atol=0)


def test_missing_portaudio_library_is_one_clear_line(tmp_path):
    """sounddevice raises OSError when libportaudio2 is absent; every audio command says what to install."""
    import subprocess
    import sys

    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    for command in (["devices"], ["run", "--duration", "1"], ["identify"], ["latency"]):
        result = subprocess.run([sys.executable, "-m", "device.cli", *command], capture_output=True, text=True, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            "anc-device: error: cannot load PortAudio (PortAudio library not found); "
            "install it with `sudo apt-get install libportaudio2`"]
