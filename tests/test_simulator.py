"""Closed-loop behaviour on the simulated plants, judged against the causal optimum."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.core.dsp.identification import identify_path, make_probe
from device.core.dsp.lsfir import normal_equations
from device.contract.errors import UserError
from simulator.plant import Plant
from simulator.run import simulate
from simulator.scenes import SCENE_TYPES, generate_scene, load_scene


@pytest.fixture(scope="module")
def tonal_scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "hum.wav"
    soundfile.write(str(path), generate_scene("engine_hum", 12.0, 48000, seed=11), 48000, subtype="FLOAT")
    return path


def test_tonal_scene_on_headphone_reaches_25_db_within_6_db_of_the_optimum(cfg, tonal_scene):
    sim = simulate(tonal_scene, cfg, "headphone")
    summary = sim.summary
    assert summary["attenuation_db"] >= 25.0, summary
    assert summary["wiener_bound_db"] - summary["attenuation_db"] <= 6.0, summary
    assert summary["attenuation_band_db"] >= 25.0
    assert summary["safety_events"] == [] and not summary["diverged"]
    # The device's own estimate (error mic against its secondary-path model) agrees with the truth.
    assert abs(summary["estimated_cancellation_db"] - summary["attenuation_db"]) < 3.0
    assert summary["convergence_s"] is not None and summary["convergence_s"] < summary["steady_state_s"][0]
    # The anti-noise stays far below the ceiling when all is well.
    assert summary["output_peak_dbfs"] < cfg.safety.output_ceiling_dbfs - 3


def test_causality_verdicts_follow_the_physics():
    headphone = Plant.load("headphone").causality()
    assert not headphone.broadband_possible
    assert "impossible" in headphone.explain() and "tonal" in headphone.explain()
    duct = Plant.load("duct").causality()
    assert duct.broadband_possible and "possible" in duct.explain()


def test_broadband_noise_on_headphone_is_reported_as_non_causal(cfg, tmp_path):
    path = tmp_path / "white.wav"
    soundfile.write(str(path), generate_scene("white", 4.0, 48000, seed=2), 48000)
    sim = simulate(path, cfg, "headphone")
    assert sim.summary["causality"]["broadband_possible"] is False
    # Nothing predictable to cancel: the optimum itself is small, and the controller does not
    # make things much worse than no control.
    assert sim.summary["wiener_bound_db"] < 3.0
    # With the default step the misadjustment on unpredictable noise is small; the no-harm guard's
    # own test (a step large enough that it must act) is in test_safety_properties.py.
    assert sim.summary["attenuation_db"] > -0.5


def test_broadband_noise_in_the_causal_duct_is_cancelled(cfg, tmp_path):
    path = tmp_path / "white.wav"
    soundfile.write(str(path), generate_scene("white", 6.0, 48000, seed=2), 48000)
    # 256 taps: the length this figure is stated for. At `taps: auto` the duct gets a longer
    # filter whose optimum is higher (31 dB): see test_long_duct_filter_reaches_its_optimum_quickly.
    sim = simulate(path, cfg.replace("controller", taps=256), "duct")
    assert sim.summary["causality"]["broadband_possible"] is True
    assert sim.summary["wiener_bound_db"] > 15.0
    # 13.0 dB measured of an optimum of 20.7: by default the update adapts below 4 kHz only, where
    # an estimate 2 samples off cannot turn it the wrong way (controller.delay_tolerance_samples),
    # and white noise at 48 kHz has 5/6 of its power above that.
    assert sim.summary["attenuation_db"] > 10.0
    assert sim.summary["feedback_identification"]["quality_db"] < -20.0
    # Over the whole band, for a rig whose latency is known to the sample: 18.2 dB measured.
    full_band = simulate(path, cfg.replace("controller", taps=256, delay_tolerance_samples=0.0), "duct")
    assert full_band.summary["wiener_bound_db"] - full_band.summary["attenuation_db"] <= 6.0


@pytest.mark.xfail(strict=True, reason="measured: at taps auto the duct's controller reaches 13.8 dB of an optimum "
                   "of 31.2 dB after 6 s of white noise (over the full band, delay_tolerance_samples 0: 22.3 dB); "
                   "most of that optimum is above the 4 kHz the default update adapts in")
def test_long_duct_filter_reaches_its_optimum_quickly(cfg, tmp_path):
    path = tmp_path / "white.wav"
    soundfile.write(str(path), generate_scene("white", 6.0, 48000, seed=2), 48000)
    sim = simulate(path, cfg, "duct")
    assert sim.summary["wiener_bound_db"] - sim.summary["attenuation_db"] <= 6.0


def test_watchdog_catches_a_secondary_path_sign_flip_and_output_stays_under_the_ceiling(cfg, tonal_scene, headphone):
    flip_at = 6 * 48000
    # Without re-identification on the fly (tests/test_path_tracking.py has it on): the
    # watchdog's own back-off, then it gives up.
    cfg = cfg.replace("controller", reidentify=False)
    sim = simulate(tonal_scene, cfg, "headphone", secondary_path_changes=[(flip_at, -headphone.secondary_path)],
                   keep_signals=True)
    events = sim.summary["safety_events"]
    assert events, "the watchdog did not trip"
    assert events[0]["kind"] == "error_rise", events  # the error grows at once: the model is wrong
    assert all(event["time_s"] >= 6.0 for event in events)
    assert events[0]["time_s"] < 6.5  # caught within half a second
    assert events[-1]["kind"] == "stopped_reidentify"
    assert sim.summary["diverged"]
    ceiling = 10 ** (cfg.safety.output_ceiling_dbfs / 20)
    assert np.max(np.abs(sim.result.output)) <= ceiling * (1 + 1e-12)
    # After giving up it stays silent instead of pumping.
    assert not np.any(sim.result.output[-48000:])


def test_identification_recovers_the_secondary_path_with_latency(cfg, headphone):
    probe = make_probe(3 * 48000, -30.0, 960, seed=1)
    _, error = headphone.open_loop(probe, seed=0)
    result = identify_path(probe, error, 256)
    truth = headphone.full_secondary_path()[:256]
    misalignment = 10 * np.log10(np.sum((result.estimate - truth) ** 2) / np.sum(truth ** 2))
    assert misalignment < -30.0
    assert result.quality_db < -30.0
    assert abs(result.delay_samples - int(np.argmax(np.abs(truth)))) <= 1
    # The latency shows as leading zeros of the estimate.
    assert np.max(np.abs(result.estimate[:headphone.latency_samples - 2])) < 0.01 * np.max(np.abs(truth))


def test_covariance_normal_equations_match_the_data_matrix():
    rng = np.random.default_rng(0)
    x, d = rng.standard_normal(600), rng.standard_normal(600)
    taps, start, stop = 12, 5, 500
    X = np.array([[x[n - i] if n - i >= 0 else 0.0 for i in range(taps)] for n in range(start, stop)])
    R, p = normal_equations(x, d, taps, start, stop)
    np.testing.assert_allclose(R, X.T @ X, atol=1e-10)
    np.testing.assert_allclose(p, X.T @ d[start:stop], atol=1e-10)


def test_plant_rejects_latency_shorter_than_a_block(tmp_path):
    np.save(tmp_path / "p.npy", np.array([0.0, 1.0]))
    (tmp_path / "plant.yaml").write_text(
        "sample_rate: 48000\nlatency_samples: 16\nprimary_path: p.npy\nsecondary_path: p.npy\n")
    plant = Plant.load(tmp_path / "plant.yaml")
    with pytest.raises(UserError, match=r"latency_samples: 16 is less than one block \(32 samples\)"):
        plant.check_block_size(32)


@pytest.mark.parametrize("yaml_text, message", [
    ("sample_rate: 48000\nlatency_samples: 64\nprimary_path: p.npy\n", "secondary_path: missing key"),
    ("sample_rate: 48000\nlatency_samples: 64\nprimary_path: p.npy\nsecondary_path: nope.npy\n", "secondary_path: file nope.npy not found"),
    ("sample_rate: 48000\nlatency_samples: -1\nprimary_path: p.npy\nsecondary_path: p.npy\n", "latency_samples: expected a positive integer"),
    ("sample_rate: 48000\nlatency_samples: 64\nprimary_path: p.npy\nsecondary_path: z.npy\n", "all zeros"),
    ("sample_rate: 48000\nlatency_samples: 64\nprimary_path: p.npy\nsecondary_path: p.npy\nspeed: 3\n", "speed: unknown plant key"),
])
def test_plant_yaml_errors(tmp_path, yaml_text, message):
    np.save(tmp_path / "p.npy", np.array([0.0, 1.0]))
    np.save(tmp_path / "z.npy", np.zeros(4))
    (tmp_path / "plant.yaml").write_text(yaml_text)
    with pytest.raises(UserError, match=message):
        Plant.load(tmp_path / "plant.yaml")


def test_unknown_plant_name():
    with pytest.raises(UserError, match="plant not found"):
        Plant.load("submarine")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_scenes_of_every_sample_format_and_rate_are_read(tmp_path, subtype):
    rate = 22050
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(str(path), np.stack([x, -x], axis=1), rate, subtype=subtype)
    scene = load_scene(path, 48000)
    assert scene.channels == 2 and scene.source_rate == rate
    assert scene.samples.size == pytest.approx(48000, abs=2)
    assert np.max(np.abs(scene.samples)) == pytest.approx(0.3, rel=0.02)  # first channel, resampled


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage"), "not a readable audio file"),
    (lambda p: p.write_text("just some text, not audio\n" * 20), "not a readable audio file"),
    (lambda p: soundfile.write(str(p), np.full(48000, np.nan), 48000, subtype="FLOAT"), "48000 samples are NaN or infinite"),
    (lambda p: soundfile.write(str(p), np.ones(100) * 0.1, 48000), "at least 0.5 s is needed"),
    (lambda p: soundfile.write(str(p), np.zeros(48000), 48000), "digital silence"),
])
def test_bad_scenes_get_clear_errors(tmp_path, make, message):
    path = tmp_path / "scene.wav"
    make(path)
    with pytest.raises(UserError, match=message):
        load_scene(path, 48000)


def test_missing_scene_and_directory(tmp_path):
    with pytest.raises(UserError, match="scene file not found"):
        load_scene(tmp_path / "missing.wav", 48000)
    with pytest.raises(UserError, match="is a directory"):
        load_scene(tmp_path, 48000)


def test_scene_generators_are_deterministic_and_distinct():
    for kind in SCENE_TYPES:
        a = generate_scene(kind, 1.0, 16000, seed=5)
        b = generate_scene(kind, 1.0, 16000, seed=5)
        c = generate_scene(kind, 1.0, 16000, seed=6)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert 10 * np.log10(np.mean(a ** 2)) == pytest.approx(-20.0, abs=0.01)
        assert np.all(np.isfinite(a))


def test_bundled_scenes_are_readable():

    scenes = sorted((Path(__file__).resolve().parent.parent / "simulator" / "scenes").glob("*.wav"))
    assert len(scenes) >= 3
    for path in scenes:
        assert load_scene(path, 48000).duration_s >= 5.0
