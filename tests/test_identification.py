"""Identification that sizes itself, feedback detection, the controller length, the reachable
optimum, plant path changes and the seeded random rigs."""

import numpy as np
import pytest
import yaml

from device.contract.errors import UserError
from device.core.dsp.identification import (identify_sized, make_probe, recommended_controller_taps,
                                            resolved_controller_taps)
from simulator.closed_loop import run_closed_loop
from simulator.plant import Plant
from simulator.rigs import KINDS, changed_secondary_path, random_plant, write_plant
from simulator.run import identify_rig_of_plant

FS = 48000


def _long_path(length: int, latency: int, seed: int = 3) -> np.ndarray:
    """A reverberant path: latency, then noise decaying by only 25 dB over `length` samples,
    so its energy lasts to the end."""
    rng = np.random.default_rng(seed)
    tail = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / np.log(10 ** (25 / 20))))
    tail[0] = 3.0
    return np.concatenate([np.zeros(latency), 0.1 * tail])


def _recorded(path: np.ndarray, seconds: float = 3.0, noise_dbfs: float = -90.0) -> tuple[np.ndarray, np.ndarray]:
    probe = make_probe(int(seconds * FS), -30.0, 960, seed=1)
    rng = np.random.default_rng(2)
    recorded = np.convolve(probe, path)[:probe.size] + rng.standard_normal(probe.size) * 10 ** (noise_dbfs / 20)
    return probe, recorded


def test_a_self_sized_estimate_covers_a_1000_sample_path_and_its_latency():
    path = _long_path(1000, latency=120)
    probe, recorded = _recorded(path)
    result = identify_sized(probe, recorded, 2048, -40.0)
    assert result.estimate.size >= path.size - 16  # the whole path, latency included
    assert result.estimate.size <= 2048
    assert result.path_samples == result.estimate.size
    assert result.left_out_db <= -40.0 or result.left_out_db == float("-inf")
    truth = np.zeros(result.estimate.size)
    truth[:min(path.size, truth.size)] = path[:truth.size]
    error_db = 10 * np.log10(np.sum((result.estimate - truth) ** 2) / np.sum(path ** 2))
    assert error_db < -35.0
    # The fixed 256-tap estimate of old would have cut the path: the self-sized one is long
    # because the path is, not because the maximum is.
    assert result.measured_taps > result.estimate.size


def test_a_short_path_gets_a_short_estimate():
    path = np.zeros(80)
    path[72:78] = [0.3, 0.8, -0.5, 0.2, 0.1, -0.05]
    probe, recorded = _recorded(path)
    result = identify_sized(probe, recorded, 2048, -40.0)
    assert 78 <= result.estimate.size <= 128


def test_a_configured_maximum_too_short_for_the_path_is_one_line_saying_what_to_set():
    path = _long_path(1000, latency=120)
    probe, recorded = _recorded(path)
    with pytest.raises(UserError) as caught:
        identify_sized(probe, recorded, 512, -40.0)
    message = str(caught.value)
    assert "\n" not in message
    assert "controller.secondary_path_taps" in message and "is 512" in message
    needed = int(message.rsplit("at least ", 1)[1])
    assert needed >= path.size - 16 and needed % 64 == 0


def test_a_silent_speaker_is_refused_not_stored():
    probe = make_probe(3 * FS, -30.0, 960, seed=1)
    noise = np.random.default_rng(4).standard_normal(probe.size) * 1e-4
    with pytest.raises(UserError, match="does not rise above the noise"):
        identify_sized(probe, noise, 2048, -40.0)
    assert identify_sized(probe, noise, 2048, -40.0, allow_absent=True) is None


def test_feedback_is_detected_and_neutralization_turns_on_by_itself_on_a_leaking_plant(cfg):
    assert cfg.controller.feedback_neutralization is False  # the default: identification decides
    leaking = random_plant(13, "duct", feedback=True)
    rig = identify_rig_of_plant(cfg, leaking, seed=0)
    assert rig.feedback is not None and rig.neutralize_feedback
    assert rig.feedback_ratio_db >= cfg.identification.feedback_threshold_db
    # The feedback estimate covers latency plus the leak's path.
    assert rig.feedback.estimate.size >= leaking.latency_samples + leaking.feedback_path.size - 64
    duct = identify_rig_of_plant(cfg, Plant.load("duct"), seed=0)
    assert duct.neutralize_feedback


def test_no_feedback_is_found_on_the_headphone(cfg, headphone):
    rig = identify_rig_of_plant(cfg, headphone, seed=0)
    assert rig.feedback is None and not rig.neutralize_feedback and rig.feedback_ratio_db is None
    assert rig.secondary.estimate.size >= headphone.latency_samples + 64


def test_a_weak_leak_below_the_threshold_leaves_neutralization_off(cfg):
    plant = random_plant(13, "duct", feedback=True)
    plant.feedback_path = plant.feedback_path * 10 ** (-45 / 20)
    rig = identify_rig_of_plant(cfg, plant, seed=0)
    assert rig.feedback is None or rig.feedback_ratio_db < cfg.identification.feedback_threshold_db
    assert not rig.neutralize_feedback


def test_recommended_controller_taps_is_bounded_and_grows_with_the_paths():
    short = recommended_controller_taps(200, 80, 100, 1024)
    long = recommended_controller_taps(1500, 150, 1400, 1024)
    assert 128 <= short < long == 1024
    assert short % 64 == 0
    assert recommended_controller_taps(200, 80, None, 1024) >= 128
    assert recommended_controller_taps(4000, 100, 4000, 512) == 512
    assert recommended_controller_taps(100, 90, 10, 64) == 64

    class Section(dict):
        def __getattr__(self, name):
            return self[name]

    assert resolved_controller_taps(Section(taps="auto"), 768) == 768
    assert resolved_controller_taps(Section(taps=256), 768) == 256


def test_a_tonal_ambient_asks_for_a_controller_spanning_its_lowest_period(cfg, headphone):
    from device.core.dsp.identification import ambient_lowest_tone_period

    t = np.arange(4 * FS) / FS
    hum = sum(a * np.sin(2 * np.pi * 50 * (k + 1) * t) for k, a in enumerate([1.0, 0.3, 0.6, 0.15, 0.35]))
    hum = 0.05 * hum + 1e-4 * np.random.default_rng(1).standard_normal(t.size)
    period = ambient_lowest_tone_period(hum, FS)
    assert period is not None and abs(period - FS / 50) <= 10
    assert ambient_lowest_tone_period(np.random.default_rng(2).standard_normal(t.size), FS) is None
    rig = identify_rig_of_plant(cfg, headphone, seed=0, ambient=hum)
    assert rig.tone_period_samples == period
    assert rig.recommended_taps >= min(period, 1024)


def test_the_primary_span_is_measured_from_broadband_ambient_noise(cfg):
    plant = random_plant(16, "room", feedback=False)
    ambient = np.random.default_rng(8).standard_normal(3 * FS) * 0.05
    rig = identify_rig_of_plant(cfg, plant, seed=0, ambient=ambient)
    assert rig.primary_span_samples is not None
    assert rig.primary_span_samples >= plant.primary_path.size // 2
    tone = 0.05 * np.sin(2 * np.pi * 100 * np.arange(3 * FS) / FS)
    assert identify_rig_of_plant(cfg, plant, seed=0, ambient=tone).primary_span_samples is None


# -- the reachable optimum ---------------------------------------------------------------------

def test_the_reachable_optimum_respects_the_weight_bound_and_is_at_most_the_unconstrained_one(headphone):
    from simulator.optimum import causal_optima
    from simulator.scenes import generate_scene

    scene = generate_scene("engine_hum", 4.0, FS, seed=2)
    disturbance = np.convolve(scene, headphone.primary_path)[:scene.size]
    start, stop = 2 * FS, 4 * FS

    def attenuation(error):
        return 10 * np.log10(np.sum(disturbance[start:stop] ** 2) / np.sum(error[start:stop] ** 2))

    for bound in (1.0, 5.0, 1e6):
        optima = causal_optima(scene, disturbance, headphone.full_secondary_path(), 128, start, stop, bound)
        assert optima.reachable.weight_norm <= bound * (1 + 1e-6)
        assert attenuation(optima.reachable.error) <= attenuation(optima.unconstrained.error) + 1e-9
    tight = causal_optima(scene, disturbance, headphone.full_secondary_path(), 128, start, stop, 1.0)
    assert tight.reachable.loading > 0 and tight.unconstrained.weight_norm > 1.0
    assert tight.reachable.weight_norm == pytest.approx(1.0, rel=1e-4)  # the bound is active
    loose = causal_optima(scene, disturbance, headphone.full_secondary_path(), 128, start, stop, 1e6)
    assert loose.reachable is loose.unconstrained


# -- path changes in the plant YAML ------------------------------------------------------------

def _plant_yaml(tmp_path, headphone, changes, with_feedback=False):
    plant = headphone.with_secondary_path(headphone.secondary_path)
    plant.name = "cup"
    if with_feedback:
        plant.feedback_path = 0.1 * headphone.secondary_path
    path = write_plant(plant, tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["path_changes"] = changes
    path.write_text(yaml.safe_dump(spec))
    np.save(tmp_path / "new.npy", -0.5 * headphone.secondary_path)
    return path


@pytest.mark.parametrize("changes, message", [
    ("soon", "path_changes: expected a list"),
    ([{"at_s": -1.0, "secondary_path": "new.npy"}], r"path_changes\[0\].at_s: expected a time"),
    ([{"at_s": "8", "secondary_path": "new.npy"}], r"path_changes\[0\].at_s: expected a time"),
    ([{"at_s": 8.0}], r"path_changes\[0\].secondary_path: missing key"),
    ([{"at_s": 8.0, "secondary_path": "missing.npy"}], r"path_changes\[0\].secondary_path: file missing.npy not found"),
    ([{"at_s": 8.0, "secondary_path": "new.npy", "speaker": 1}], r"path_changes\[0\].speaker: unknown key"),
    ([{"at_s": 8.0, "secondary_path": "new.npy", "feedback_path": "new.npy"}],
     r"path_changes\[0\].feedback_path: the plant has no feedback_path"),
])
def test_path_changes_are_validated_with_one_line_naming_file_key_and_value(tmp_path, headphone, changes, message):
    path = _plant_yaml(tmp_path, headphone, changes)
    with pytest.raises(UserError, match=message) as caught:
        Plant.load(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_path_change_in_the_yaml_changes_the_plant_from_that_time(tmp_path, headphone):
    path = _plant_yaml(tmp_path, headphone, [{"at_s": 0.5, "secondary_path": "new.npy",
                                              "feedback_path": "new.npy"}], with_feedback=True)
    plant = Plant.load(path)
    assert [change.at_sample for change in plant.path_changes] == [FS // 2]
    rng = np.random.default_rng(0)
    played = rng.standard_normal(FS) * 0.01

    position = [0]

    def play(reference, error, out, meta):
        out[:] = played[position[0]:position[0] + out.size]
        position[0] += out.size

    result = run_closed_loop(np.zeros(FS), plant, play, 32, seed=0)
    new = np.load(tmp_path / "new.npy")
    # What is played from the change on (it arrives `latency` later) goes through the new path.
    delayed = np.concatenate([np.zeros(plant.latency_samples), played])[:FS]
    split = FS // 2 + plant.latency_samples
    old_part = np.concatenate([delayed[:split], np.zeros(FS - split)])
    new_part = np.concatenate([np.zeros(split), delayed[split:]])
    expected_error = np.convolve(old_part, plant.secondary_path)[:FS] + np.convolve(new_part, new)[:FS]
    expected_leak = np.convolve(old_part, plant.feedback_path)[:FS] + np.convolve(new_part, new)[:FS]
    assert np.allclose(result.error_on - result.error_off, expected_error, atol=1e-9)
    assert np.allclose(result.reference - result.disturbance_reference, expected_leak, atol=1e-9)
    assert not np.allclose(expected_error[split:], np.convolve(delayed, plant.secondary_path)[split:FS])
    assert np.array_equal(plant.secondary_path_at(FS), new) and np.array_equal(plant.secondary_path_at(0),
                                                                               plant.secondary_path)


# -- seeded random rigs --------------------------------------------------------------------------

def test_random_rigs_are_deterministic_and_within_the_stated_ranges():
    for seed in range(8):
        for kind in KINDS:
            plant = random_plant(seed, kind)
            again = random_plant(seed, kind)
            assert np.array_equal(plant.secondary_path, again.secondary_path)
            assert np.array_equal(plant.primary_path, again.primary_path)
            assert 64 <= plant.latency_samples <= 160
            assert 64 <= plant.secondary_path.size <= 1536 and 64 <= plant.primary_path.size <= 1536
            assert np.all(np.isfinite(plant.secondary_path)) and np.any(plant.secondary_path)
    assert random_plant(1, "room", feedback=True).feedback_path is not None
    assert random_plant(1, "room", feedback=False).feedback_path is None
    assert not np.array_equal(random_plant(1, "room").secondary_path, random_plant(2, "room").secondary_path)
    plant = random_plant(3, "earcup")
    moved = changed_secondary_path(plant, 21)
    assert moved.size == plant.secondary_path.size and not np.allclose(moved, plant.secondary_path)
    assert np.array_equal(moved, changed_secondary_path(plant, 21))


def test_a_written_random_rig_loads_as_the_same_plant(tmp_path):
    plant = random_plant(4, "room", feedback=True)
    loaded = Plant.load(write_plant(plant, tmp_path, [{"at_s": 2.0, "secondary_path": -plant.secondary_path}]))
    assert loaded.latency_samples == plant.latency_samples
    assert np.array_equal(loaded.secondary_path, plant.secondary_path)
    assert np.array_equal(loaded.feedback_path, plant.feedback_path)
    assert loaded.path_changes[0].at_sample == 2 * FS


def test_identify_measures_again_while_an_xrun_tore_the_capture(monkeypatch):
    """A capture that xran and fits poorly is taken again (up to three in all) and the best fit is
    kept; a capture without xruns, or with xruns but a good fit, ends the measurement."""
    from types import SimpleNamespace

    import device.commands.identify as identify

    def captures(*fits):
        queue = list(fits)

        def measure(sd, cfg, spec):
            xruns, quality_db = queue.pop(0)
            return {"rig": SimpleNamespace(secondary=SimpleNamespace(quality_db=quality_db)), "xruns": xruns}
        return measure

    cases = [
        ([(3033, -7.5), (54, -29.0), (0, -40.0)], 2, -29.0),   # torn, then good despite a few xruns
        ([(12, -8.0), (0, -6.0)], 2, -8.0),                    # clean but worse (a loud room): the better kept
        ([(0, -9.0)], 1, -9.0),                                # clean: kept whatever its fit
        ([(40, -5.0), (40, -12.0), (40, -8.0), (0, -30.0)], 3, -12.0),  # never clean: the best of three
    ]
    for fits, measurements, kept_db in cases:
        monkeypatch.setattr(identify, "measure", captures(*fits))
        result = identify.measure_until_clean(None, None, None)
        assert (result["measurements"], result["rig"].secondary.quality_db) == (measurements, kept_db), fits
