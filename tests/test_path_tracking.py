"""Re-identification of the secondary path on the fly (device/core/tracking.py,
device/core/dsp/tracking.py): a path that changes mid-run is detected, measured again with the
anti-noise faded out, and the controller recovers; an unchanged path keeps its estimate."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from device.core.dsp import layout as L
from device.core.dsp import tracking as T
from device.core.session import compose_session
from device.core.tracking import EVENT_KIND
from simulator.closed_loop import ClosedLoop
from simulator.plant import PRESET_DIR, Plant
from simulator.run import identify_plant, simulate
from simulator.scenes import generate_scene

FS = 48000
CHANGE_AT_S = 3.0
SCENE_S = 10.0


@pytest.fixture(scope="module")
def hum_scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "engine_hum.wav"
    soundfile.write(str(path), generate_scene("engine_hum", SCENE_S, FS, seed=11), FS, subtype="FLOAT")
    return path


def _plant_yaml(directory: Path, name: str, secondary: np.ndarray, change: np.ndarray | None = None) -> Path:
    """The headphone preset with its secondary path replaced by `secondary`, and changed to
    `change` at CHANGE_AT_S when given."""
    spec = yaml.safe_load((PRESET_DIR / "headphone.yaml").read_text())
    spec["name"] = name
    spec["primary_path"] = str(PRESET_DIR / spec["primary_path"])
    np.save(directory / f"{name}_secondary.npy", secondary)
    spec["secondary_path"] = f"{name}_secondary.npy"
    if change is not None:
        np.save(directory / f"{name}_changed.npy", change)
        spec["path_changes"] = [{"at_s": CHANGE_AT_S, "secondary_path": f"{name}_changed.npy"}]
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _per_second_db(result) -> np.ndarray:
    seconds = result.error_on.size // FS
    off = result.error_off[:seconds * FS].reshape(seconds, FS)
    on = result.error_on[:seconds * FS].reshape(seconds, FS)
    return 10 * np.log10(np.sum(off * off, axis=1) / np.sum(on * on, axis=1))


def test_a_changed_secondary_path_is_reidentified_and_cancellation_recovers(cfg, hum_scene, tmp_path):
    """A reversed speaker (the path's sign flipped at 3 s) diverges, trips the watchdog and is
    re-identified on the fly."""
    original = Plant.load("headphone").secondary_path
    new = -original
    changed = simulate(hum_scene, cfg, _plant_yaml(tmp_path, "moved", original, new), keep_signals=True)
    from_start = simulate(hum_scene, cfg, _plant_yaml(tmp_path, "new", new))

    checks = [e for e in changed.summary["safety_events"] if e["kind"] == EVENT_KIND]
    assert len(checks) == 1, changed.summary["safety_events"]
    check = checks[0]
    assert CHANGE_AT_S < check["time_s"] < CHANGE_AT_S + 2.0, check
    assert check["replaced"] and check["change_db"] > cfg.controller.reidentify_change_db
    assert check["probe_s"] == pytest.approx(cfg.controller.reidentify_probe_s)
    # The estimate in use is the new path's (latency included), not the old one's.
    truth = changed.plant.full_secondary_path(int(CHANGE_AT_S * FS) + 1)[:changed.identification.estimate.size]
    assert T.path_change_db(truth, changed.session.engine.secondary_path) < -30.0
    # Recovered: the steady state within 3 dB of a run that had the new path from the start,
    # and after the check no second louder than control off.
    assert changed.summary["attenuation_db"] >= from_start.summary["attenuation_db"] - 3.0, \
        (changed.summary["attenuation_db"], from_start.summary["attenuation_db"])
    after = _per_second_db(changed.result)[int(np.ceil(check["time_s"])) + 1:]
    assert after.size >= 4 and np.all(after > 0.0), after
    # The check's event reaches the device's metric records (the spool's) and the summary text.
    from simulator.run import format_summary

    assert "re-identified" in format_summary(changed.summary)


def test_a_path_three_times_stronger_is_absorbed_without_a_louder_second(cfg, hum_scene, tmp_path):
    """The secondary path three times stronger at 3 s. The modified-FxLMS error then carries
    twice the played anti-noise through the real path, at which the full step is unstable:
    with the fixed step the second after the change was 9.4 dB louder than off, a trip and a
    re-identification followed. The variable step is at its tenth there, and its growth is
    limited (twofold per 40 ms): the filter re-adapts without a trip, no second from the change
    on is louder than off, and the steady state is within 3 dB of a run that had the new path
    from the start (docs/cancellation.md, "The lower bound with the variable step")."""
    original = Plant.load("headphone").secondary_path
    changed = simulate(hum_scene, cfg, _plant_yaml(tmp_path, "moved", original, 3.0 * original), keep_signals=True)
    from_start = simulate(hum_scene, cfg, _plant_yaml(tmp_path, "new", 3.0 * original))
    assert changed.summary["watchdog_trips"] == 0, changed.summary["safety_events"]
    from_change = _per_second_db(changed.result)[int(CHANGE_AT_S):]
    assert np.all(from_change > 0.0), from_change
    assert changed.summary["attenuation_db"] >= from_start.summary["attenuation_db"] - 3.0, \
        (changed.summary["attenuation_db"], from_start.summary["attenuation_db"])


def test_the_same_path_after_a_forced_trip_keeps_its_estimate(cfg, hum_scene):
    plant = Plant.load("headphone")
    secondary, _ = identify_plant(cfg, plant, seed=0)
    # The fixed step: what is under test is the estimate kept and control resumed, and the last
    # 2 s of the 7 s after the trip reach 10 dB with it (measured 14.7 dB with the 5 Hz reference
    # high-pass, 23 dB with 20 Hz); the variable step, which lowers the step to its tenth
    # within a second here, reached 12 dB in the same time with the 20 Hz high-pass.
    cfg = cfg.replace("controller", taps=256, variable_step=False)
    session = compose_session(cfg, secondary.estimate, None, sample_rate=FS, block_size=cfg.audio.block_size,
                              classifier=(None, "off in this test"))
    engine = session.engine
    in_use = engine.secondary_path.copy()
    blocks = 0
    trip_block = int(CHANGE_AT_S * FS) // cfg.audio.block_size

    def callback(reference, error, out, meta):
        nonlocal blocks
        if blocks == trip_block:
            engine.weights *= 1e3     # a weight norm far over the limit: the watchdog trips
        session.process_block(reference, error, out, meta)
        blocks += 1
        if blocks % 32 == 0:
            session.poll()

    loop = ClosedLoop(plant, callback, cfg.audio.block_size, seed=0)
    scene, _ = soundfile.read(str(hum_scene))
    result = loop.run(scene)
    session.stop()
    kinds = [e.kind for e in session.worker.report.safety_events]
    assert kinds[0] == "weight_norm", kinds
    check = next(e for e in session.worker.report.safety_events if e.kind == EVENT_KIND)
    assert not check.details["replaced"] and check.details["change_db"] < cfg.controller.reidentify_change_db
    np.testing.assert_array_equal(engine.secondary_path, in_use)
    # The probe was played (the anti-noise off meanwhile), then control resumed and cancels again.
    start = engine.probe_start_sample
    assert start is None  # cleared at the resume
    per_second = 10 * np.log10(np.sum(result.error_off[-2 * FS:] ** 2) / np.sum(result.error_on[-2 * FS:] ** 2))
    assert per_second > 10.0, per_second
    assert engine.mode == "stop" or engine.status[L.S_MODE] == L.MODE_RUN


def test_reidentify_false_leaves_the_watchdog_to_give_up(cfg, hum_scene, tmp_path):
    original = Plant.load("headphone").secondary_path
    off = cfg.replace("controller", reidentify=False)
    sim = simulate(hum_scene, off, _plant_yaml(tmp_path, "moved", original, -original))
    kinds = [e["kind"] for e in sim.summary["safety_events"]]
    assert EVENT_KIND not in kinds and kinds[-1] == "stopped_reidentify", kinds


def test_the_callback_allocates_nothing_through_a_whole_check(cfg, headphone):
    from numba.core.runtime import _nrt_python, rtsys

    secondary, _ = identify_plant(cfg, headphone, seed=0)
    session = compose_session(cfg.replace("controller", taps=256), secondary.estimate, None, sample_rate=FS,
                              block_size=cfg.audio.block_size, classifier=(None, "off in this test"))
    engine = session.engine
    block = cfg.audio.block_size
    rng = np.random.default_rng(3)
    reference = rng.standard_normal(block) * 0.01
    error = rng.standard_normal(block) * 0.01
    out = np.zeros(block)
    new = np.ascontiguousarray(-engine.secondary_path)

    import tracemalloc

    def run(count: int) -> tuple[tuple[float, int], int]:
        """(NRT allocations per call, Python bytes kept) over `count` callback blocks. Passing
        arrays from Python into a numba call wraps each in a memory-info record, freed when the
        call returns; the kernel's own work must add nothing to that."""
        was_enabled = _nrt_python.memsys_stats_enabled()
        _nrt_python.memsys_enable_stats()
        try:
            before = rtsys.get_allocation_stats()
            start, _ = tracemalloc.get_traced_memory()
            for _ in range(count):
                engine.process(reference, error, out)
            end, _ = tracemalloc.get_traced_memory()
            after = rtsys.get_allocation_stats()
        finally:
            if not was_enabled:
                _nrt_python.memsys_disable_stats()
        per_call = ((after.alloc - before.alloc) / count, (after.alloc - after.free) - (before.alloc - before.free))
        return per_call, end - start

    tracemalloc.start()
    try:
        _check_cycle(engine, run, block, cfg, new)
    finally:
        tracemalloc.stop()


def _check_cycle(engine, run, block, cfg, new):
    ordinary, _ = run(3000)   # the first thousand calls or so after the tracer starts keep what they allocate
    assert ordinary[1] == 0, ordinary
    engine.request_probe()
    probe_blocks = -(-engine.probe.size // block) + int(cfg.safety.fade_ms * 1e-3 * FS) // block + 4
    checking, kept = run(probe_blocks)
    assert engine.probe_state == T.STATE_PLAYED
    engine.resume(new, 0.0, 1.0)           # prepared off the callback
    resuming, kept_more = run(200)
    assert engine.probe_state == T.STATE_IDLE and engine.mode == "run"
    np.testing.assert_array_equal(engine.secondary_path, new)
    assert checking == ordinary and resuming == ordinary, (ordinary, checking, resuming)
    assert kept < 4096 and kept_more < 4096


def _stereo_headphone(left_path: str):
    """The bundled two-ear headphone; the left cup's secondary path as it is ("same"),
    reversed from the start ("reversed") or reversed at CHANGE_AT_S ("moved")."""
    from simulator.ears import EarsPlant
    from simulator.plant import PathChange

    plant = EarsPlant.load("headphone-stereo")
    left = plant.ears["left"]
    original = left.secondary_path.copy()
    if left_path == "reversed":
        left.secondary_path = -original
    elif left_path == "moved":
        left.path_changes = [PathChange(int(CHANGE_AT_S * FS), -original)]
    return plant


def test_each_ear_is_reidentified_on_its_own_and_the_other_keeps_cancelling(cfg, hum_scene):
    """Two ears, the left cup's path reversed at 3 s: the left ear is checked and takes the new
    estimate, and recovers to within 3 dB of a run with the reversed path from the start; the
    right ear is never probed and cancels within 1 dB of the run without the change."""
    from simulator.ears import simulate_ears

    moved = simulate_ears(hum_scene, cfg, _stereo_headphone("moved"))
    from_start = simulate_ears(hum_scene, cfg, _stereo_headphone("reversed")).summary["ears"]
    unchanged = simulate_ears(hum_scene, cfg, _stereo_headphone("same")).summary["ears"]
    ears = moved.summary["ears"]

    checks = [e for e in ears["left"]["safety_events"] if e["kind"] == EVENT_KIND]
    assert len(checks) == 1, ears["left"]["safety_events"]
    check = checks[0]
    assert check["ear"] == "left" and check["replaced"], check
    assert CHANGE_AT_S < check["time_s"] < CHANGE_AT_S + 2.0, check
    left_engine = moved.engine.ear("left")
    truth = moved.plant.ears["left"].full_secondary_path(int(CHANGE_AT_S * FS) + 1)[:left_engine.secondary_path.size]
    assert T.path_change_db(truth, left_engine.secondary_path) < -30.0
    assert ears["left"]["attenuation_db"] >= from_start["left"]["attenuation_db"] - 3.0, \
        (ears["left"]["attenuation_db"], from_start["left"]["attenuation_db"])

    right = moved.sessions["right"]
    assert right.tracker.enabled and right.tracker.checks == []
    assert not any(e["kind"] == EVENT_KIND for e in ears["right"]["safety_events"]), ears["right"]["safety_events"]
    assert not ears["right"]["diverged"]
    assert abs(ears["right"]["attenuation_db"] - unchanged["right"]["attenuation_db"]) <= 1.0, \
        (ears["right"]["attenuation_db"], unchanged["right"]["attenuation_db"])
    # Neither run without the change checks anything.
    for summary in (from_start, unchanged):
        assert not any(e["kind"] == EVENT_KIND for ear in summary.values() for e in ear["safety_events"])


def test_level_history_gives_the_median_of_the_entries_before_a_sample_as_numpy_does():
    """The detector's running history (compacted and grown in place) against a plain list."""
    from device.core.tracking import LevelHistory

    rng = np.random.default_rng(3)
    history, reference = LevelHistory(capacity=8), []
    sample = 0
    for step in range(3000):
        sample += int(rng.integers(1, 2000))
        level = float(rng.normal())
        history.append(sample, level)
        reference.append((sample, level))
        window = int(rng.integers(5_000, 200_000))
        history.drop_before(sample - window)
        reference = [(s, v) for s, v in reference if s >= sample - window]
        assert len(history) == len(reference) and history.oldest() == reference[0][0]
        cut = sample - int(rng.integers(0, 30_000))
        past = [v for s, v in reference if s < cut]
        median = history.median_before(cut)
        assert (median is None) if not past else median == float(np.median(past))
        if step == 1500:
            history.clear()
            reference = []
            assert len(history) == 0
