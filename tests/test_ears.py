"""Several ears in one stream: the channel map, the stacked engine and per-ear safety."""

import numpy as np
import pytest
import yaml

from device.contract.config import EarChannels, ear_channels, load_config
from device.contract.errors import ConfigError, UserError
from device.core.ears import EarsEngine
from device.core.engine import AncEngine

FS = 48000
BLOCK = 32
TWO_EARS = [
    {"name": "left", "reference_channel": 0, "error_channel": 1, "speaker_channel": 0},
    {"name": "right", "reference_channel": 2, "error_channel": 3, "speaker_channel": 1},
]


def _config(tmp_path, ears, **controller):
    path = tmp_path / "ears.yaml"
    path.write_text(yaml.safe_dump({"audio": {"ears": ears},
                                    "controller": {"taps": 256, **controller},
                                    "safety": {"baseline_ms": 5.0, "fade_ms": 5.0}}))
    return load_config(path)


# -- the channel map -----------------------------------------------------------------------------
def test_no_ears_key_is_one_ear_on_the_single_channel_keys(cfg):
    assert cfg.audio.ears is None
    assert ear_channels(cfg.audio) == (EarChannels("ear", cfg.audio.reference_channel, cfg.audio.error_channel,
                                                   cfg.audio.speaker_channel),)


def test_two_ears_in_order(tmp_path):
    ears = ear_channels(_config(tmp_path, TWO_EARS).audio)
    assert ears == (EarChannels("left", 0, 1, 0), EarChannels("right", 2, 3, 1))


@pytest.mark.parametrize("change, message", [
    ({1: {"reference_channel": 1}}, "audio.ears[1].reference_channel: channel 1 is also left.error_channel"),
    ({1: {"speaker_channel": 0}}, "audio.ears[1].speaker_channel: channel 0 is also left.speaker_channel"),
    ({0: {"error_channel": 0}}, "audio.ears[0].error_channel: channel 0 is also left.reference_channel"),
    ({1: {"name": "left"}}, "audio.ears[1].name: 'left' names two ears"),
    ({1: {"error_channel": 64}}, "audio.ears[1].error_channel: 64 is out of range [0, 63]"),
    ({1: {"gain": 2}}, "audio.ears[1].gain: unknown key"),
])
def test_ears_that_collide_or_are_malformed_are_refused_naming_the_key(tmp_path, change, message):
    ears = [dict(ear) for ear in TWO_EARS]
    for index, keys in change.items():
        ears[index].update(keys)
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, ears)
    assert message in str(caught.value)
    assert str(tmp_path / "ears.yaml") in str(caught.value)


def test_an_empty_or_non_list_ears_key_is_refused(tmp_path):
    for value in ([], {"left": 1}, [3]):
        with pytest.raises(ConfigError, match="audio.ears"):
            _config(tmp_path, value)


# -- the stacked engine --------------------------------------------------------------------------
def _paths(headphone):
    """Two different estimates of different lengths: the headphone's, and a shorter, quieter copy
    (so the padding to the longest ear is exercised)."""
    long_path = headphone.full_secondary_path()[:256]
    short_path = 0.7 * headphone.full_secondary_path()[:160]
    return long_path, short_path


def _signals(seed, n):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    tone = 0.2 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t + 0.3)
    return tone + 0.01 * rng.standard_normal(n), 0.8 * tone + 0.01 * rng.standard_normal(n)


def test_each_ear_of_the_stacked_engine_is_its_one_ear_engine_sample_for_sample(tmp_path, headphone):
    """The stacked kernel is the one-ear kernel on each row: outputs, weights and status are the
    same, bit for bit, as one `AncEngine` per ear fed the same blocks."""
    cfg = _config(tmp_path, TWO_EARS)
    paths = _paths(headphone)
    ears = EarsEngine.from_config(cfg, paths)
    alone = [AncEngine.from_config(cfg, path) for path in paths]
    ears.warm_up()
    n = 9600
    signals = [_signals(seed, n) for seed in (1, 2)]
    refs, errs, outs = (np.zeros((2, BLOCK)) for _ in range(3))
    out_alone = np.zeros(BLOCK)
    got, expected = np.zeros((2, n)), np.zeros((2, n))
    for k in range(0, n, BLOCK):
        for ear in range(2):
            refs[ear] = signals[ear][0][k:k + BLOCK]
            errs[ear] = signals[ear][1][k:k + BLOCK]
        ears.process(refs, errs, outs)
        got[:, k:k + BLOCK] = outs
        for ear, engine in enumerate(alone):
            engine.process(refs[ear], errs[ear], out_alone)
            expected[ear, k:k + BLOCK] = out_alone
    assert np.max(np.abs(got)) > 1e-3  # both controllers did play
    np.testing.assert_array_equal(got, expected)
    for ear, engine in enumerate(alone):
        np.testing.assert_array_equal(ears.ears[ear].weights, engine.weights)
        np.testing.assert_array_equal(ears.ears[ear].status, engine.status)
        assert ears.ears[ear].snapshot() == engine.snapshot()
    # The padded tail of the shorter ear's rows is never written.
    short = ears.lengths[1]
    assert not np.any(ears.stacked["secondary_path"][1, short[1]:])


def test_each_ear_has_its_own_reidentification_probe(tmp_path, headphone):
    """Two ears checked at once hear each other's probe through the crosstalk: each ear's probe
    has the configured length and level and does not correlate with the other's."""
    cfg = _config(tmp_path, TWO_EARS)
    engine = EarsEngine.from_config(cfg, _paths(headphone))
    left, right = (ear.probe for ear in engine.ears)
    assert left.size == right.size == int(round(cfg.controller.reidentify_probe_s * FS))
    for probe in (left, right):
        level = 10 * np.log10(np.mean(probe ** 2))
        assert abs(level - cfg.controller.reidentify_probe_level_dbfs) < 0.5, level
    correlation = np.dot(left, right) / np.sqrt(np.dot(left, left) * np.dot(right, right))
    assert abs(correlation) < 0.02, correlation


def test_one_ear_engine_matches_the_engine_in_closed_loop(cfg, headphone):
    from simulator.closed_loop import run_closed_loop
    from simulator.scenes import generate_scene

    cfg = cfg.replace("controller", taps=256)
    path = headphone.full_secondary_path()[:256]
    engine = AncEngine.from_config(cfg, path)
    ears = EarsEngine.from_config(cfg, [path])
    scene = generate_scene("engine_hum", 0.5, FS, seed=3)
    direct = run_closed_loop(scene, headphone, lambda r, e, o, m: engine.process(r, e, o), BLOCK, seed=0)
    refs, errs, outs = (np.zeros((1, BLOCK)) for _ in range(3))

    def stacked(ref, err, out, meta):
        refs[0], errs[0] = ref, err
        ears.process(refs, errs, outs)
        out[:] = outs[0]

    wrapped = run_closed_loop(scene, headphone, stacked, BLOCK, seed=0)
    assert np.max(np.abs(direct.output)) > 1e-3
    np.testing.assert_array_equal(wrapped.output, direct.output)


def test_one_ear_tripping_leaves_the_other_playing(tmp_path, headphone):
    """The right ear's error mic rises 20 dB (its path broke): only the right ear's watchdog trips
    and fades it; the left ear keeps its gain and plays on."""
    cfg = _config(tmp_path, TWO_EARS)
    ears = EarsEngine.from_config(cfg, _paths(headphone))
    n = int(0.6 * FS)
    signals = [list(_signals(seed, n)) for seed in (1, 2)]
    start = int(0.2 * FS)
    signals[1][1][start:] *= 10.0
    refs, errs, outs = (np.zeros((2, BLOCK)) for _ in range(3))
    played = np.zeros((2, n))
    for k in range(0, n, BLOCK):
        for ear in range(2):
            refs[ear] = signals[ear][0][k:k + BLOCK]
            errs[ear] = signals[ear][1][k:k + BLOCK]
        ears.process(refs, errs, outs)
        played[:, k:k + BLOCK] = outs
    left, right = ears.ear("left"), ears.ear("right")
    right_events = right.drain_events()
    assert right_events and right_events[0].sample_index >= start, right_events
    assert left.drain_events() == []
    assert left.snapshot()["safety_gain"] == 1.0 and left.mode == "run"
    assert np.sqrt(np.mean(played[0, -4800:] ** 2)) > 1e-2  # the left speaker still plays anti-noise


def test_estimates_that_do_not_match_the_configured_ears_are_refused(tmp_path, headphone):
    cfg = _config(tmp_path, TWO_EARS)
    with pytest.raises(UserError, match="1 for 2 configured ears"):
        EarsEngine.from_config(cfg, [headphone.full_secondary_path()[:256]])


# -- the two-ear plant in the simulator ----------------------------------------------------------
@pytest.fixture(scope="module")
def hum_scene(tmp_path_factory):
    import soundfile

    from simulator.scenes import generate_scene

    folder = tmp_path_factory.mktemp("ears_scenes")
    hum = generate_scene("engine_hum", 4.5, 16000, seed=3)
    soundfile.write(str(folder / "mono.wav"), hum, 16000)
    soundfile.write(str(folder / "stereo.wav"), np.stack([hum, 0.05 * hum], axis=1), 16000)
    return folder


def test_both_ears_cancel_as_well_as_each_ear_alone_with_crosstalk_on_and_off(cfg, hum_scene):
    """The done-when of two ears: on the bundled stereo headphone, each ear's steady-state
    attenuation with the other cup on (its crosstalk included or not) is within 1 dB of that
    ear alone, and nothing trips."""
    from simulator.ears import EarsPlant, simulate_ears

    plant = EarsPlant.load("headphone-stereo")
    assert plant.names == ("left", "right") and all(plant.crosstalk[name] is not None for name in plant.names)
    scene = hum_scene / "mono.wav"
    alone = {name: simulate_ears(scene, cfg, plant.only(name)).summary["ears"][name] for name in plant.names}
    for variant in (plant, plant.without_crosstalk()):
        summary = simulate_ears(scene, cfg, variant).summary
        assert summary["crosstalk"] is (variant is plant)
        for name in plant.names:
            ear = summary["ears"][name]
            assert ear["attenuation_db"] > 20.0, (name, ear)
            assert abs(ear["attenuation_db"] - alone[name]["attenuation_db"]) <= 1.0, (name, ear, alone[name])
            assert not ear["diverged"]
        # The overall figure is the energy of both error mics together: between the two ears'.
        ears = [summary["ears"][name]["attenuation_db"] for name in plant.names]
        assert min(ears) - 0.01 <= summary["attenuation_db"] <= max(ears) + 0.01


def test_the_two_cups_have_different_paths_and_crosstalk_is_measured(cfg, hum_scene):
    from simulator.ears import EarsPlant, simulate_ears

    plant = EarsPlant.load("headphone-stereo")
    left, right = plant.ears["left"], plant.ears["right"]
    assert not np.allclose(left.secondary_path, right.secondary_path)
    assert not np.allclose(left.primary_path, right.primary_path)
    summary = simulate_ears(hum_scene / "mono.wav", cfg, plant).summary
    for name in plant.names:
        # A probe on one speaker reaches the other cup's error mic, far below its own.
        assert -70.0 < summary["ears"][name]["crosstalk_db"] < -20.0


def test_a_stereo_scene_feeds_one_channel_to_each_ear(cfg, hum_scene):
    """The right channel is 26 dB below the left: so is the right ear's uncontrolled error."""
    from simulator.ears import simulate_ears

    sim = simulate_ears(hum_scene / "stereo.wav", cfg, "headphone-stereo")
    assert sim.summary["scene_channels"] == 2
    level = {name: 10 * np.log10(np.mean(data[0] ** 2)) for name, data in sim.plot_data.items()}
    assert level["left"] - level["right"] > 20.0
    assert set(sim.summary["ears"]) == {"left", "right"}


def test_simulate_json_gives_per_ear_figures_and_writes_a_report_of_both_ears(hum_scene, tmp_path, capsys):
    import json

    from device.cli import main

    out = tmp_path / "out"
    assert main(["--simulate", str(hum_scene / "mono.wav"), "--plant", "headphone-stereo", "--json",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("left", "right"):
        assert {"attenuation_db", "attenuation_band_db", "optimum_db", "convergence_s", "diverged"} <= set(
            summary["ears"][name])
    assert {"attenuation_db", "attenuation_band_db", "optimum_db", "diverged"} <= set(summary)
    assert (out / "report.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    # Each ear's signals and per-second metrics in files named after it, and one session record.
    import sqlite3

    import soundfile

    for name in ("left", "right"):
        for stem in ("error_off", "error_on", "anti_noise"):
            info = soundfile.info(str(out / f"{stem}.{name}.wav"))
            assert info.frames == int(round(summary["duration_s"] * summary["sample_rate"])) and info.channels == 1
        rows = [json.loads(line) for line in (out / f"metrics.{name}.jsonl").read_text().splitlines()]
        assert rows and all("attenuation_db" in row and "device" in row for row in rows)
    assert not list(out.glob(".*")), "temporary files left behind"
    with sqlite3.connect(out / "spool.sqlite") as db:
        sessions = [json.loads(body) for (body,) in db.execute("SELECT body FROM outbox WHERE kind = 'session'")]
    assert len(sessions) == 1 and set(sessions[0]["ears"]) == {"left", "right"}
    assert summary["classifier"] == "on" and summary["classifier_input"] == "mean of the ears' reference mics"


def test_the_classifier_hears_the_mean_of_the_reference_mics_and_every_ear_takes_its_preset(tmp_path, headphone):
    """The windows the classifier is given are the 16 kHz decimation of the mean of both cups'
    reference mics (not either cup alone), and the preset of the class it settles on reaches
    both ears' controllers."""
    from device.core.classifier import Detection
    from device.core.ears import EarsSession
    from device.core.features import SAMPLE_RATE, StreamDecimator
    from device.core.session import Session

    class Listening:
        def __init__(self):
            self.windows = []

        def classify(self, window, rule=None):
            self.windows.append(window.copy())
            return Detection("traffic", 0.99, {"traffic": 0.99})

    cfg = _config(tmp_path, TWO_EARS)
    engine = EarsEngine.from_config(cfg, _paths(headphone))
    listening = Listening()
    ears = EarsSession(engine, [Session(cfg, ear, classifier=listening if k == 0 else None)
                                for k, ear in enumerate(engine.ears)])
    n = int(3.5 * FS) // BLOCK * BLOCK
    t = np.arange(n) / FS
    rng = np.random.default_rng(4)
    refs = np.stack([0.2 * np.sin(2 * np.pi * 440 * t), 0.1 * rng.standard_normal(n)])
    references, errors, outs, meta = np.zeros((2, BLOCK)), np.zeros((2, BLOCK)), np.zeros((2, BLOCK)), np.zeros(4)
    for k in range(0, n, BLOCK):
        references[:] = refs[:, k:k + BLOCK]
        errors[:] = 0.5 * refs[:, k:k + BLOCK]
        ears.process_block(references, errors, outs, meta)
        if (k // BLOCK) % 20 == 19:
            ears.poll()
    ears.poll()
    assert len(listening.windows) >= 2

    def decimated(signal):
        return StreamDecimator(FS, SAMPLE_RATE).process(signal)

    def found_in(window, signal):
        starts = np.flatnonzero(np.abs(signal[:signal.size - window.size + 1] - window[0]) < 1e-9)
        return any(np.allclose(signal[k:k + window.size], window, rtol=0, atol=1e-9) for k in starts)

    mean, left, right = decimated(refs.mean(axis=0)), decimated(refs[0]), decimated(refs[1])
    for window in listening.windows:
        assert found_in(window, mean) and not found_in(window, left) and not found_in(window, right)
    traffic = cfg.presets["traffic"]
    for worker in ears.workers:
        assert worker.current_class == "traffic"
        assert worker.engine.base_step_size == pytest.approx(traffic.step_size)


def test_a_broken_ear_path_in_the_plant_trips_only_that_ears_watchdog(cfg, hum_scene):
    """The right cup's speaker is wired with its polarity reversed after identification (its
    real secondary path is minus what was identified, from the start of control): the right
    ear's watchdog trips; the left ear runs on, cancelling as before. (A gain error of 3 is
    not enough: the partitioned update stays stable and cancels with it.)"""
    from simulator.ears import EarsPlant, simulate_ears
    from simulator.plant import PathChange

    plant = EarsPlant.load("headphone-stereo")
    broken = plant.ears["right"]
    broken.path_changes = [PathChange(int(0.3 * plant.sample_rate), -broken.secondary_path)]
    try:
        summary = simulate_ears(hum_scene / "mono.wav", cfg, plant).summary
    finally:
        broken.path_changes = []
    assert summary["ears"]["right"]["diverged"], summary["ears"]["right"]
    assert not summary["ears"]["left"]["diverged"]
    assert summary["ears"]["left"]["attenuation_db"] > 20.0
    assert summary["diverged"]


def test_plant_yaml_with_ears_refuses_what_it_cannot_use(tmp_path):
    from simulator.ears import EarsPlant
    from simulator.plant import Plant

    np.save(tmp_path / "h.npy", np.array([0.0, 1.0, 0.5]))
    base = "sample_rate: 48000\nlatency_samples: 72\nears:\n"
    cases = [
        (base + "  left: {primary_path: h.npy, secondary_path: h.npy, gain: 2}\n", "ears.left.gain: unknown key"),
        (base + "  left: {primary_path: h.npy}\n", "ears.left.secondary_path: missing key"),
        (base + "  left: {primary_path: h.npy, secondary_path: missing.npy}\n",
         "ears.left.secondary_path: file missing.npy not found"),
        (base + "  left: {primary_path: h.npy, secondary_path: h.npy, crosstalk_path: 3}\n",
         "ears.left.crosstalk_path: expected a file name"),
        ("sample_rate: 48000\nlatency_samples: 72\nprimary_path: h.npy\nears:\n  left: {secondary_path: h.npy}\n",
         "primary_path: unknown key of a plant with ears"),
        ("latency_samples: 72\nears:\n  left: {primary_path: h.npy, secondary_path: h.npy}\n",
         "plant.yaml: sample_rate: missing key"),
        (base + "  []\n", "ears: expected a mapping"),
    ]
    for text, message in cases:
        (tmp_path / "plant.yaml").write_text(text)
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
            EarsPlant.load(tmp_path / "plant.yaml")
    with pytest.raises(UserError, match="plant with 2 ears, where one ear was expected"):
        Plant.load("headphone-stereo")


# -- the rig: channel map, callback, stored estimates ---------------------------------------------
@pytest.fixture
def four_in_two_out():
    from test_rig import FakeSoundDevice, device

    return FakeSoundDevice([device("USB Audio Device: Headset (hw:1,0)", 4, 2), device("small", 2, 2)])


def test_stream_opens_every_ears_channels_and_names_one_beyond_the_device(tmp_path, four_in_two_out):
    from device.rig.audio import resolve_stream

    cfg = _config(tmp_path, TWO_EARS)
    spec = resolve_stream(four_in_two_out, cfg.replace("audio", device="headset"))
    assert (spec.input_channels, spec.output_channels) == (4, 2)
    assert spec.ear_names == ("left", "right")
    assert spec.identity["ears"] == [["left", 0, 1, 0], ["right", 2, 3, 1]]
    right = spec.for_ear("right")
    assert (right.reference_channel, right.error_channel, right.speaker_channel) == (2, 3, 1)
    assert right.input_channels == 4 and right.identity == spec.identity
    with pytest.raises(UserError, match=r"audio.ears\[1\].reference_channel: channel 2 \(right\) is beyond "
                                        r"audio.device device 1 'small', which has 2 input channels"):
        resolve_stream(four_in_two_out, cfg.replace("audio", device="small"))


def test_duplex_callback_hands_every_ear_to_one_processor_call(tmp_path, four_in_two_out):
    from device.rig.audio import DuplexStream, resolve_stream

    cfg = _config(tmp_path, TWO_EARS)
    spec = resolve_stream(four_in_two_out, cfg.replace("audio", device="headset", block_size=3))
    calls = []

    class Ears:
        ears_at_once = True

        def process_block(self, references, errors, outs, meta):
            calls.append((references.copy(), errors.copy()))
            outs[:] = errors * 2

    stream = DuplexStream(four_in_two_out, spec, Ears())
    indata = np.array([[1, 10, 100, 1000], [2, 20, 200, 2000], [3, 30, 300, 3000]], dtype=np.float32)
    outdata = np.full((3, 2), 9.0, dtype=np.float32)
    stream._ears_callback(indata, outdata, 3, None, False)
    assert len(calls) == 1
    references, errors = calls[0]
    assert references.tolist() == [[1, 2, 3], [100, 200, 300]]
    assert errors.tolist() == [[10, 20, 30], [1000, 2000, 3000]]
    assert outdata[:, 0].tolist() == [20, 40, 60] and outdata[:, 1].tolist() == [2000, 4000, 6000]
    assert stream.blocks == 1


def test_each_ears_estimate_is_stored_apart_and_refused_for_another_ear_layout(tmp_path):
    from device.rig.estimates import load_estimates, save_estimates

    identity = {"input_device": "x", "block_size": 32, "ears": [["left", 0, 1, 0], ["right", 2, 3, 1]]}
    left, right = np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.8, 0.3, 0.1])
    save_estimates(tmp_path, left, None, identity, {}, ear="left")
    with pytest.raises(UserError, match="no secondary-path estimate for ear right"):
        load_estimates(tmp_path, identity, ear="right")
    save_estimates(tmp_path, right, None, identity, {}, ear="right")
    np.testing.assert_array_equal(load_estimates(tmp_path, identity, ear="left").secondary_path, left)
    np.testing.assert_array_equal(load_estimates(tmp_path, identity, ear="right").secondary_path, right)
    swapped = {**identity, "ears": [["left", 2, 3, 1], ["right", 0, 1, 0]]}
    with pytest.raises(UserError, match="made for a different stream: ears"):
        load_estimates(tmp_path, swapped, ear="left")


def test_identify_probes_each_ear_alone_and_stores_every_ears_estimate(tmp_path, four_in_two_out, monkeypatch,
                                                                       capsys):
    """`anc-device identify` with two ears: one measurement per ear on that ear's channels (here
    the simulated cups stand in for the recordings), every estimate stored with the whole
    channel map."""
    import json

    import device.commands.identify as identify
    import device.rig.audio as audio
    from device.cli import main
    from simulator.ears import EarsPlant
    from simulator.run import identify_rig_of_plant

    plant = EarsPlant.load("headphone-stereo")
    path = tmp_path / "ears.yaml"
    path.write_text(yaml.safe_dump({"audio": {"device": "headset", "ears": TWO_EARS},
                                    "runtime": {"state_dir": str(tmp_path / "state")}}))
    (tmp_path / "state").mkdir()
    probed = []

    def measure(sd, cfg, spec):
        ear = next(ear.name for ear in spec.ears if ear.error_channel == spec.error_channel)
        probed.append((ear, spec.reference_channel, spec.error_channel, spec.speaker_channel))
        return {"rig": identify_rig_of_plant(cfg, plant.ears[ear], seed=0), "xruns": 0}

    monkeypatch.setattr(audio, "import_sounddevice", lambda: four_in_two_out)
    monkeypatch.setattr(identify, "measure", measure)
    assert main(["identify", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert probed == [("left", 0, 1, 0), ("right", 2, 3, 1)]
    assert set(report["ears"]) == {"left", "right"}
    for ear in ("left", "right"):
        assert (tmp_path / "state" / f"secondary_path.{ear}.npz").exists()
        stored = json.loads((tmp_path / "state" / f"secondary_path.{ear}.json").read_text())
        assert stored["ear"] == ear and stored["identity"]["ears"] == [["left", 0, 1, 0], ["right", 2, 3, 1]]
    assert report["ears"]["left"]["taps"] != report["ears"]["right"]["taps"]  # each its own cup's fit


def test_latency_reports_each_ears_verdict(tmp_path, four_in_two_out, monkeypatch, capsys):
    import json

    import device.commands.latency as latency
    import device.rig.audio as audio
    from device.cli import main

    path = tmp_path / "ears.yaml"
    path.write_text(yaml.safe_dump({"audio": {"device": "headset", "ears": TWO_EARS}}))
    monkeypatch.setattr(audio, "import_sounddevice", lambda: four_in_two_out)
    monkeypatch.setattr(latency, "measure", lambda sd, cfg, spec, ambient_s: {
        "error_channel": spec.error_channel, "verdict": f"ear on error channel {spec.error_channel}"})
    assert main(["latency", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {name: ear["error_channel"] for name, ear in report["ears"].items()} == {"left": 1, "right": 3}


def test_an_alarm_one_cup_hears_switches_both_ears_to_hear_through_and_back(cfg, tmp_path):
    """A siren mixed into the left channel only (the right cup hears the hum alone): both ears
    go to hear-through together and come back to anti-noise together."""
    import soundfile

    from simulator.alarm_sounds import alarm, mix_at_snr
    from simulator.ears import simulate_ears
    from simulator.scenes import generate_scene

    rate = 16000
    hum = generate_scene("engine_hum", 5.0, rate, seed=3)
    sound, on = alarm("siren_wail", 1.5, rate, seed=7)
    left = mix_at_snr(hum, sound, on, 1.5, 10.0, rate)
    scene = tmp_path / "siren_left.wav"
    soundfile.write(str(scene), np.stack([left, hum], axis=1) / max(np.max(np.abs(left)), 1.0) * 0.5, rate)
    ears_cfg = cfg.replace("alarms", enabled=True, hold_s=0.5)
    summary = simulate_ears(scene, ears_cfg, "headphone-stereo").summary
    modes = {name: [m["mode"] for m in ear["modes"]] for name, ear in summary["ears"].items()}
    assert "hear-through" in modes["left"], modes
    assert modes["left"] == modes["right"], modes
    assert modes["right"][-1] == "anc", modes
