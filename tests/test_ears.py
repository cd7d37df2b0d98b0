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


def test_one_ear_engine_matches_the_engine_in_closed_loop(cfg, headphone):
    from simulator.plant import run_closed_loop
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
