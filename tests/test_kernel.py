"""The numba kernel against the NumPy reference, and the safety behaviour of the engine."""

import numpy as np
import pytest

from device.core.dsp import layout as L
from device.core.dsp.reference import ReferenceFxlms
from device.core.engine import AncEngine
from device.contract.errors import UserError
from simulator.closed_loop import run_closed_loop
from simulator.plant import Plant
from simulator.scenes import generate_scene


def _engine(cfg, path, feedback=None, **safety):
    cfg = cfg.replace("safety", **{"baseline_ms": 5.0, "fade_ms": 5.0, **safety})
    if feedback is not None:
        cfg = cfg.replace("controller", feedback_neutralization=True, feedback_path_taps=feedback.size)
    return AncEngine.from_config(cfg, path, feedback)


@pytest.mark.parametrize("algorithm, variable_step, delay_tolerance",
                         [("time", False, 2.0), ("time", True, 2.0), ("time", True, 0.0), ("partitioned", False, 2.0)],
                         ids=["time", "time-variable-step", "time-full-band", "partitioned"])
@pytest.mark.parametrize("plant_name", ["headphone", "duct"])
def test_numba_kernel_matches_numpy_reference_in_closed_loop(cfg, plant_name, algorithm, variable_step, delay_tolerance):
    plant = Plant.load(plant_name)
    path = plant.full_secondary_path()[:256]
    feedback = plant.full_feedback_path()[:256] if plant.feedback_path is not None else None
    # 320 taps: the last partition of the partitioned update is a partial one.
    engine = _engine(cfg.replace("controller", algorithm=algorithm, taps=320, variable_step=variable_step,
                                 delay_tolerance_samples=delay_tolerance), path, feedback)
    # The time-domain update is band-limited unless the tolerance is 0.
    assert (engine.params[L.P_BAND_B0] != 0.0) == (algorithm == "time" and delay_tolerance > 0.0)
    reference = ReferenceFxlms(engine.weights.size, path, feedback, engine.params.copy())
    outputs = []

    def both(ref, err, out, meta):
        engine.process(ref, err, out)
        outputs.append(reference.process(ref, err))

    scene = generate_scene("engine_hum", 0.4, 48000, seed=3)
    result = run_closed_loop(scene, plant, both, 32, seed=0)
    expected = np.concatenate(outputs)[:scene.size]
    assert np.max(np.abs(result.output)) > 1e-3  # the controller did act
    # The FFTs round differently from numpy's (about 1e-16 relative per update); the closed loop
    # carries that along, to ~1e-9 of an output of ~0.2 after 0.4 s.
    tolerance = 1e-9 if algorithm == "time" else 1e-8
    np.testing.assert_allclose(result.output, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(engine.weights, reference.weights, rtol=0, atol=tolerance)
    if variable_step:   # the step did move, or the variable step was not under test
        assert engine.status[L.S_VSS_FACTOR] < 1.0 and reference.step_factor == pytest.approx(engine.status[L.S_VSS_FACTOR])
        # and the speaker played the weights' average, not the weights
        taps = engine.weights.size
        played = engine.update_state[2 * taps:3 * taps]
        np.testing.assert_allclose(played, reference.played_weights, rtol=0, atol=tolerance)
        assert np.max(np.abs(played - engine.weights)) > 1e-6


def test_float32_blocks_give_the_float64_result(cfg, headphone):
    path = headphone.full_secondary_path()[:256]
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4800).astype(np.float32) * 0.1
    err = rng.standard_normal(4800).astype(np.float32) * 0.1
    outs = {}
    for dtype in (np.float32, np.float64):
        engine = _engine(cfg, path)
        out = np.zeros(32, dtype=dtype)
        collected = []
        for k in range(0, 4800, 32):
            engine.process(ref[k:k + 32].astype(dtype), err[k:k + 32].astype(dtype), out)
            collected.append(out.astype(np.float64))
        outs[dtype] = np.concatenate(collected)
    np.testing.assert_allclose(outs[np.float32], outs[np.float64], atol=1e-6)


def test_starts_muted_measures_baseline_then_fades_in(cfg, headphone):
    engine = AncEngine.from_config(cfg.replace("safety", baseline_ms=10.0, fade_ms=10.0), headphone.full_secondary_path()[:256])
    rng = np.random.default_rng(1)
    out = np.zeros(32)
    gains = []
    for _ in range(60):
        ref = rng.standard_normal(32) * 0.1
        engine.process(ref, ref * 0.5, out)
        gains.append((engine.mode, engine.status[L.S_SAFETY_GAIN], np.max(np.abs(out))))
    baseline_blocks = [g for g in gains if g[0] == "baseline"]
    assert len(baseline_blocks) >= 14  # 10 ms at 48 kHz is 15 blocks of 32
    assert all(peak == 0.0 for _, _, peak in baseline_blocks)
    assert gains[-1][0] == "run" and gains[-1][1] == 1.0
    assert engine.snapshot()["uncontrolled_ratio_db"] == pytest.approx(-6.02, abs=0.1)


def test_output_never_exceeds_the_ceiling_and_is_not_clipped(cfg, headphone):
    # The watchdog's limiting trip is held off: it would mute the output after 50 ms and the
    # checks below would look at silence.
    engine = _engine(cfg, headphone.full_secondary_path()[:256], output_ceiling_dbfs=-12.0, max_weight_norm=1e6,
                     watchdog_hold_ms=10000.0)
    engine.weights[:] = 0.0
    engine.weights[0] = 50.0  # absurd gain: the limiter must hold the ceiling
    engine.set_adaptation(False)
    ceiling = 10 ** (-12 / 20)
    rng = np.random.default_rng(2)
    out = np.zeros(32)
    peaks, waveforms = [], []
    for _ in range(400):
        ref = rng.standard_normal(32) * 0.3
        engine.process(ref, ref, out)
        peaks.append(np.max(np.abs(out)))
        waveforms.append(out.copy())
    assert engine.drain_events() == []
    assert max(peaks) <= ceiling * (1 + 1e-12)
    # A limiter rides the gain; it does not flatten the waveform at the ceiling. With instant
    # attack each new peak lands on the ceiling (14% of the samples here, 34 dB over it); a
    # clip would put nearly all of them there. The release-rate property is in
    # test_safety_properties.py.
    signal = np.concatenate(waveforms[100:])
    assert np.max(np.abs(signal)) >= ceiling * 0.999
    assert np.mean(np.abs(signal) >= ceiling * 0.999) < 0.3


def test_enable_and_intensity_ramp_without_clicks(cfg, headphone):
    fs = 48000
    engine = _engine(cfg, headphone.full_secondary_path()[:256])
    engine.set_adaptation(False)
    engine.weights[0] = 1.0
    tone = 0.1 * np.sin(2 * np.pi * 200 * np.arange(fs) / fs)
    out = np.zeros(32)
    outputs = []
    for k in range(0, fs, 32):
        if k == 19200:
            engine.set_enabled(False)
        if k == 28800:
            engine.set_enabled(True)
            engine.set_intensity(0.5)
        engine.process(tone[k:k + 32], tone[k:k + 32], out)
        outputs.append(out.copy())
    y = np.concatenate(outputs)
    envelope_step = np.max(np.abs(np.diff(np.abs(y))))
    # A 200 Hz tone at 0.1 changes by at most 0.0027 per sample; a click would jump by ~0.1.
    assert envelope_step < 0.005
    ramp = int(cfg.anc.ramp_ms * 1e-3 * fs)
    assert np.max(np.abs(y[19200 + ramp + 32:28800])) == 0.0
    assert np.max(np.abs(y[-4800:])) == pytest.approx(0.05, rel=0.02)


def test_fade_out_reaches_silence(cfg, headphone):
    engine = _engine(cfg, headphone.full_secondary_path()[:256])
    engine.weights[0] = 1.0
    engine.set_adaptation(False)
    out = np.zeros(32)
    ref = np.full(32, 0.1)
    for _ in range(20):
        engine.process(ref, ref, out)
    engine.fade_out()
    blocks = 0
    while not engine.is_silent:
        engine.process(ref, ref, out)
        blocks += 1
        assert blocks < 1000
    assert blocks * 32 >= 5e-3 * 48000 * 0.9  # took the fade time, not one step
    engine.process(ref, ref, out)
    assert not np.any(out)


def test_nan_and_inf_inputs_are_replaced_and_counted(cfg, headphone):
    engine = _engine(cfg, headphone.full_secondary_path()[:256])
    out = np.zeros(32)
    rng = np.random.default_rng(3)
    for k in range(100):
        ref = rng.standard_normal(32) * 0.1
        err = ref * 0.5
        if k == 50:
            ref[3] = np.nan
            err[7] = np.inf
        engine.process(ref, err, out)
        assert np.all(np.isfinite(out))
    assert engine.snapshot()["nonfinite_inputs"] == 2
    assert np.all(np.isfinite(engine.weights))


def test_tiny_weights_are_flushed_to_zero_not_left_denormal(cfg, headphone):
    engine = _engine(cfg, headphone.full_secondary_path()[:256])
    engine.weights[:] = 1e-310
    engine.process(np.zeros(32), np.zeros(32), np.zeros(32))
    assert not np.any(engine.weights)


def test_nonfinite_weights_reset_the_filter(cfg, headphone):
    engine = _engine(cfg, headphone.full_secondary_path()[:256])
    out = np.zeros(32)
    for _ in range(20):
        engine.process(np.full(32, 0.1), np.full(32, 0.1), out)
    engine.weights[5] = np.inf
    engine.process(np.full(32, 0.1), np.full(32, 0.1), out)
    events = engine.drain_events()
    assert [event.kind for event in events] == ["non_finite"]
    assert np.all(engine.weights == 0.0)
    assert np.all(np.isfinite(out))


def test_bad_secondary_path_estimates_are_refused(cfg):
    with pytest.raises(UserError, match="all zeros"):
        AncEngine.from_config(cfg, np.zeros(128))
    with pytest.raises(UserError, match="NaN"):
        AncEngine.from_config(cfg, np.array([0.0, np.nan, 1.0]))


def test_kernels_compile_into_numba_cache_dir(tmp_path):
    """The systemd unit points NUMBA_CACHE_DIR at /var/cache/anc-device: compiled kernels must land there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import numpy as np; from device.contract.config import load_config; from device.core.engine import AncEngine; "
            "e = AncEngine.from_config(load_config(), np.r_[0.0, 1.0, 0.5]); e.warm_up()")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)
    cached = list(tmp_path.rglob("*.nbi"))
    assert any("fxlms" in path.name for path in cached), cached
