"""Safety properties of the device, each one a behaviour a user or the speaker depends on.

Every test here is written so that it fails when one safety mechanism is switched off while
the others keep working (see docs/mutation.md): the limiter rides its gain instead of
clipping, each watchdog trip fires on its own symptom, the no-harm guard acts, the
configuration and the runtime refuse what they must, and the systemd watchdog hears nothing
from a stalled worker. They go through the public API (`AncEngine`, `simulate`, the config
loader, `RuntimeControl`, `Supervisor`), not the kernel's internals.
"""

import math
import socket
import threading
import time

import numpy as np
import pytest
import scipy.signal
import soundfile

from device.contract.config import load_config
from device.contract.errors import ConfigError
from device.core.engine import AncEngine, butterworth_highpass
from simulator.closed_loop import run_closed_loop
from simulator.scenes import generate_scene

FS = 48000
BLOCK = 32


def _engine(cfg, path, **safety):
    # A fixed 256-tap controller: the figures these properties are stated with (norms, levels)
    # are for that length, whatever `controller.taps: auto` would choose.
    cfg = cfg.replace("safety", **{"baseline_ms": 5.0, "fade_ms": 5.0, **safety}).replace("controller", taps=256)
    return AncEngine.from_config(cfg, path)


def _fixed_filter(engine, gain):
    """A frozen filter y = gain * (high-passed reference): what the limiter and the watchdog see."""
    engine.set_adaptation(False)
    engine.weights[:] = 0.0
    engine.weights[0] = gain


def _run(engine, reference, error):
    out = np.zeros(reference.size)
    block = np.zeros(BLOCK)
    for k in range(0, reference.size - BLOCK + 1, BLOCK):
        engine.process(reference[k:k + BLOCK], error[k:k + BLOCK], block)
        out[k:k + BLOCK] = block
    return out


# -- limiter -------------------------------------------------------------------------------------
def test_limiter_rides_the_gain_never_hard_clips(cfg, headphone):
    """A tone 12 dB over the ceiling comes out as the same tone at the ceiling: the limiter
    scales the signal (residual after a sine fit ~-36 dB); a hard clip would square it off
    (residual -9.5 dB). The watchdog's limiting trip is held off so the limiter is alone."""
    ceiling = 10 ** (-12 / 20)
    engine = _engine(cfg, headphone.full_secondary_path()[:256], output_ceiling_dbfs=-12.0,
                     max_weight_norm=1e6, watchdog_hold_ms=10000.0)
    _fixed_filter(engine, 10.0)
    t = np.arange(FS // 2) / FS
    out = _run(engine, 0.1 * np.sin(2 * np.pi * 500 * t), np.full(t.size, 0.01))
    assert engine.drain_events() == []
    tail, t_tail = out[-9600:], t[-9600:]
    assert np.max(np.abs(out)) <= ceiling * (1 + 1e-12)
    assert np.max(np.abs(tail)) >= 0.95 * ceiling  # limited to the ceiling, not muted
    basis = np.stack([np.sin(2 * np.pi * 500 * t_tail), np.cos(2 * np.pi * 500 * t_tail)], axis=1)
    fit, *_ = np.linalg.lstsq(basis, tail, rcond=None)
    residual_db = 10 * np.log10(np.sum((tail - basis @ fit) ** 2) / np.sum(tail ** 2))
    assert residual_db < -25.0, f"waveform distorted: {residual_db:.1f} dB of the output is not the tone"


def test_limiter_gain_recovers_no_faster_than_its_release(cfg, headphone):
    """On noise 36 dB over the ceiling the applied gain (output / unlimited output) never
    rises faster than the release time constant allows; clipping would let small samples
    through at full gain right after a peak."""
    ceiling = 10 ** (-12 / 20)
    engine = _engine(cfg, headphone.full_secondary_path()[:256], output_ceiling_dbfs=-12.0,
                     max_weight_norm=1e6, watchdog_hold_ms=10000.0)
    _fixed_filter(engine, 50.0)
    reference = np.random.default_rng(2).standard_normal(400 * BLOCK) * 0.3
    out = _run(engine, reference, reference)
    assert engine.drain_events() == []
    assert np.max(np.abs(out)) <= ceiling * (1 + 1e-12)
    b, a = butterworth_highpass(cfg.controller.highpass_hz, FS)
    unlimited = 50.0 * scipy.signal.lfilter(b, a, reference)
    steady = slice(100 * BLOCK, None)  # after the baseline and the fade-in
    gain = out[steady] / unlimited[steady]
    valid = np.abs(unlimited[steady]) > 0.05
    pairs = valid[1:] & valid[:-1]
    release = 1.0 - math.exp(-1.0 / (cfg.safety.limiter_release_ms * 1e-3 * FS))
    rise = (gain[1:] - gain[:-1])[pairs]
    allowed = (release * (1.0 - gain[:-1]))[pairs]
    assert np.all(gain[valid] > 0.0) and np.all(gain[valid] <= 1.0 + 1e-12)
    assert np.max(rise - allowed) < 1e-6, "the limiter gain jumped up faster than its release"


# -- watchdog, one symptom at a time -------------------------------------------------------------
def _noise(seed, n, level):
    return np.random.default_rng(seed).standard_normal(n) * level


def _error_rise_run(cfg, headphone, rise_factor, rise_s, total_s=0.5, rise_at_s=0.1):
    engine = _engine(cfg, headphone.full_secondary_path()[:256], baseline_ms=20.0)
    engine.set_adaptation(False)  # nothing played, nothing adapted: only the error level moves
    n = int(total_s * FS)
    reference = _noise(1, n, 0.1)
    error = _noise(2, n, 0.05)
    start, stop = int(rise_at_s * FS), int((rise_at_s + rise_s) * FS)
    error[start:stop] *= rise_factor
    _run(engine, reference, error)
    return engine.drain_events(), start


def test_watchdog_trips_on_error_rise_alone(cfg, headphone):
    """Error power 20 dB over the uncontrolled level (the baseline's error/reference ratio at
    the current reference level), with no weights and no limiting: an error_rise trip once
    the rise has lasted `watchdog_hold_ms`."""
    events, start = _error_rise_run(cfg, headphone, rise_factor=10.0, rise_s=0.3)
    assert events, "the watchdog did not trip on a 20 dB error rise"
    assert events[0].kind == "error_rise", events
    delay_ms = (events[0].sample_index - start) / FS * 1e3
    hold_ms = cfg.safety.watchdog_hold_ms
    assert hold_ms <= delay_ms <= hold_ms + 30.0, delay_ms
    assert events[0].value >= cfg.safety.watchdog_rise_db


def test_watchdog_ignores_a_rise_below_its_threshold_or_shorter_than_its_hold(cfg, headphone):
    events, _ = _error_rise_run(cfg, headphone, rise_factor=10 ** (5 / 20), rise_s=0.3)  # +5 dB for 300 ms
    assert events == []
    # +20 dB for 5 ms: the 20 ms power tracker stays over the threshold for ~20 ms, under the 50 ms hold.
    events, _ = _error_rise_run(cfg, headphone, rise_factor=10.0, rise_s=0.005)
    assert events == []


def test_watchdog_trips_on_weight_norm_alone(cfg, headphone):
    """A filter that cancels well but whose weights grow past `max_weight_norm` (its norm
    reaches 0.34 in 0.6 s on this scene with the fixed step; the variable step, lower near the
    optimum, stays under 0.3) is reset for its norm, not for any other symptom."""
    cfg = cfg.replace("controller", variable_step=False)
    engine = _engine(cfg, headphone.full_secondary_path()[:256], baseline_ms=20.0, max_weight_norm=0.3)
    norms = []

    def process(reference, error, out, meta):
        engine.process(reference, error, out)
        norms.append(engine.snapshot()["weight_norm"])

    result = run_closed_loop(generate_scene("engine_hum", 1.0, FS, seed=3), headphone, process, BLOCK, seed=0)
    events = engine.drain_events()
    assert events, f"no trip although the weight norm reached {max(norms):.3f} > 0.3"
    assert events[0].kind == "weight_norm", events
    assert events[0].value > 0.3
    assert max(norms) <= 0.3 + 0.05  # reset within a block of crossing the limit
    # It was a norm trip and nothing else: the output was well under the ceiling.
    assert np.max(np.abs(result.output)) < 10 ** (cfg.safety.output_ceiling_dbfs / 20)


def test_watchdog_trips_on_sustained_heavy_limiting_alone(cfg, headphone):
    """A filter whose output the limiter must hold 12 dB down for longer than the hold time is
    reset for sustained limiting, while the error level and the weight norm are normal."""
    engine = _engine(cfg, headphone.full_secondary_path()[:256], baseline_ms=20.0)
    _fixed_filter(engine, 20.0)  # norm 20 < max_weight_norm 50
    t = np.arange(FS // 4) / FS
    out = _run(engine, 0.1 * np.sin(2 * np.pi * 500 * t), _noise(2, t.size, 0.05))
    events = engine.drain_events()
    assert events, "no trip although the limiter held the gain 12 dB down"
    assert events[0].kind == "sustained_limiting", events
    assert events[0].value < -6.0
    assert events[0].time_s < 0.02 + 0.005 + cfg.safety.watchdog_hold_ms * 1e-3 + 0.02  # baseline, fade, hold
    assert np.max(np.abs(out)) <= 10 ** (cfg.safety.output_ceiling_dbfs / 20) * (1 + 1e-12)


def test_watchdog_gives_up_and_stays_silent_when_it_trips_again_at_the_minimum_step(cfg, headphone):
    """A rise that comes back after every reset means the model no longer fits the plant: once
    the step is backed off to its floor, the next trip stops the engine for good."""
    cfg = cfg.replace("safety", min_step_size=cfg.controller.step_size * cfg.safety.step_backoff)
    engine = _engine(cfg, headphone.full_secondary_path()[:256], baseline_ms=20.0)
    _fixed_filter(engine, 0.5)
    n = FS
    reference = 0.1 * np.sin(2 * np.pi * 500 * np.arange(n) / FS)
    error = _noise(2, n, 0.05)
    error[int(0.1 * FS):] *= 10.0  # +20 dB from 100 ms on, for good
    out = _run(engine, reference, error)
    kinds = [event.kind for event in engine.drain_events()]
    assert kinds == ["error_rise", "error_rise", "stopped_reidentify"], kinds
    assert engine.mode == "stop" and engine.is_silent
    assert not np.any(out[-FS // 4:])


# -- bad input samples ---------------------------------------------------------------------------
def test_a_nan_or_inf_microphone_sample_is_a_zero_and_control_carries_on(cfg, headphone):
    """One NaN on the reference and one Inf on the error mic (a glitching converter): they are
    counted and replaced, nothing trips, and the output goes on as if the samples were zero,
    instead of the NaN settling in the filter states."""
    t = np.arange(FS // 4) / FS
    reference = 0.1 * np.sin(2 * np.pi * 500 * t)
    error = _noise(2, t.size, 0.05)
    outputs = {}
    for glitch in (False, True):
        engine = _engine(cfg, headphone.full_secondary_path()[:256])
        _fixed_filter(engine, 0.5)
        r, e = reference.copy(), error.copy()
        if glitch:
            r[2403], e[2407] = np.nan, np.inf
        else:
            r[2403], e[2407] = 0.0, 0.0
        outputs[glitch] = _run(engine, r, e)
        assert engine.drain_events() == []
        assert engine.snapshot()["nonfinite_inputs"] == (2 if glitch else 0)
    assert np.any(outputs[True][-FS // 10:])
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=0, atol=1e-12)


# -- normalization -------------------------------------------------------------------------------
def test_adaptation_does_not_depend_on_the_noise_level(cfg, headphone):
    """The step is normalized by the filtered-reference power: the same scene 30x quieter or
    louder converges the same way (7.04 dB after 1.5 s at all three levels, measured)."""
    scene = generate_scene("engine_hum", 1.5, FS, seed=3)
    attenuation = {}
    for scale in (0.1, 1.0, 3.0):
        engine = _engine(cfg, headphone.full_secondary_path()[:256], baseline_ms=20.0)
        result = run_closed_loop(scene * scale, headphone, lambda r, e, out, meta: engine.process(r, e, out),
                                 BLOCK, seed=0)
        tail = slice(-FS // 2, None)
        attenuation[scale] = 10 * np.log10(np.mean(result.error_off[tail] ** 2) / np.mean(result.error_on[tail] ** 2))
        assert engine.drain_events() == [], scale
    assert attenuation[1.0] > 3.0, attenuation
    assert max(attenuation.values()) - min(attenuation.values()) < 0.5, attenuation


# -- the no-harm guard ---------------------------------------------------------------------------
def test_no_harm_guard_keeps_a_large_step_from_amplifying_unpredictable_noise(cfg, tmp_path):
    """White noise on the headphone rig is not causal (nothing to cancel). With the step at 0.5
    the filter's misadjustment alone makes the error mic 4 dB louder; the guard sees the
    device's own estimate go negative and halves the step until it does no harm."""
    from simulator.run import simulate

    path = tmp_path / "white.wav"
    soundfile.write(str(path), generate_scene("white", 4.0, FS, seed=2), FS)
    large_step = cfg.replace("controller", step_size=0.5).replace("classifier", enabled=False)
    sim = simulate(path, large_step, "headphone")
    steps = [m.step_size for m in sim.session.worker.report.metrics]
    # Either the step guard lowers the step or the no-harm output scale turns the anti-noise down.
    scale = sim.session.worker.engine.output_scale
    assert min(steps) <= 0.5 / 4 or scale < 0.5, f"neither the step ({steps}) nor the output scale ({scale}) fell"
    assert sim.summary["attenuation_db"] > -1.0, sim.summary["attenuation_db"]


# -- configuration -------------------------------------------------------------------------------
def test_min_step_above_the_step_size_is_refused_naming_both_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("controller:\n  step_size: 0.01\nsafety:\n  min_step_size: 0.02\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: safety\.min_step_size: 0\.02 is above controller\.step_size \(0\.01\)"):
        load_config(path)
    path.write_text("controller:\n  step_size: 0.02\nsafety:\n  min_step_size: 0.02\n")
    assert load_config(path).safety.min_step_size == 0.02  # equal is allowed


# -- the runtime's control channel ---------------------------------------------------------------
@pytest.fixture
def runtime_worker(cfg, headphone_estimate):
    from device.core.ringbuffer import BlockRing
    from device.core.worker import Worker

    engine = AncEngine.from_config(cfg, headphone_estimate)
    return Worker(cfg, BlockRing(8, cfg.audio.block_size), engine)


@pytest.mark.parametrize("bad", [-0.5, 1.5, float("nan"), "loud", True])
def test_runtime_refuses_an_out_of_range_intensity_reports_it_and_keeps_running(runtime_worker, tmp_path, bad):
    """A desired.json written by hand (or by a broken agent) with an intensity outside 0..1:
    nothing is applied, the poll does not raise, and reported.json says why."""
    import json

    from device.contract.control_channel import read_reported
    from device.rig.control import RuntimeControl

    control = RuntimeControl(tmp_path, runtime_worker)
    control.poll()
    before = runtime_worker.engine.intensity
    (tmp_path / "desired.json").write_text(json.dumps({"version": 1, "settings": {"anc_enabled": False,
                                                                                 "anc_intensity": bad}}))
    control.poll()
    assert runtime_worker.engine.intensity == before and runtime_worker.engine.enabled is True
    reported = read_reported(tmp_path)
    assert reported["desired_error"] and "anc_intensity" in reported["desired_error"], reported
    assert reported["anc_intensity"] == before


# -- the systemd watchdog ------------------------------------------------------------------------
class _FakeStream:
    """Stands in for the PortAudio stream: a thread delivers noise blocks to the session."""

    class _Spec:
        block_size = BLOCK
        sample_rate = FS
        identity = {"device": "fake"}

        def describe(self):
            return "fake stream"

    def __init__(self, session):
        self.session = session
        self.spec = self._Spec()
        self.active = False
        self.finished = threading.Event()
        self.blocks = self.xruns = self.callback_errors = 0
        self.last_callback_error = None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.active = True
        self._thread = threading.Thread(target=self._deliver, daemon=True)
        self._thread.start()

    def _deliver(self):
        rng = np.random.default_rng(0)
        out, meta = np.zeros(BLOCK), np.zeros(4)
        while not self._stop.is_set():
            reference = rng.standard_normal(BLOCK) * 0.05
            self.session.process_block(reference, reference * 0.5, out, meta)
            self.blocks += 1
            time.sleep(0.002)

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.active = False


def test_systemd_watchdog_is_not_pinged_while_the_worker_is_stalled(cfg, headphone_estimate, tmp_path, monkeypatch):
    """WATCHDOG=1 means the service is alive: pings arrive while the worker drains blocks, and
    stop while it is stuck (systemd then restarts the service), although audio keeps flowing."""
    from device.core.session import Session
    from device.rig.supervisor import Supervisor

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def pings():
        count = 0
        while True:
            try:
                count += receiver.recv(4096).split(b"\n").count(b"WATCHDOG=1")
            except BlockingIOError:
                return count

    run_cfg = cfg.replace("runtime", state_dir=str(tmp_path / "state")).replace("classifier", enabled=False)
    session = Session(run_cfg, AncEngine.from_config(run_cfg, headphone_estimate))
    stalled, blocked, release = threading.Event(), threading.Event(), threading.Event()
    poll = session.worker.poll

    def worker_poll():
        if stalled.is_set():
            blocked.set()
            release.wait(30)
        return poll()

    monkeypatch.setattr(session.worker, "poll", worker_poll)
    supervisor = Supervisor(run_cfg, None, session, _FakeStream(session), quiet=True)
    counts = {"healthy": 0, "stalled": 0, "recovered": 0}

    def wait_for_pings(name, at_least, limit_s=30.0):
        deadline = time.monotonic() + limit_s  # generous: start-up on a loaded machine is slow
        while counts[name] < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
            counts[name] += pings()

    def scenario():
        try:
            wait_for_pings("healthy", 3)
            stalled.set()
            assert blocked.wait(30)
            time.sleep(0.2)  # a ping for the pass that finished just before may still come
            pings()
            time.sleep(1.0)  # 20 ping periods
            counts["stalled"] = pings()
            release.set()
            wait_for_pings("recovered", 1)
        finally:
            release.set()
            supervisor.request_stop()

    helper = threading.Thread(target=scenario)
    helper.start()
    try:
        supervisor.run(duration_s=120.0)  # signal handlers need the main thread; the helper stops it
    finally:
        release.set()
        helper.join(60)
        receiver.close()
    assert counts["healthy"] >= 3, counts
    assert counts["stalled"] == 0, f"the watchdog was pinged while the worker was stuck: {counts}"
    assert counts["recovered"] >= 1, counts
