"""The streamed simulation joins up to the whole-signal computation, and its summary reads right."""

import numpy as np
import pytest
import scipy.signal
import soundfile

from device.core.summary import class_intervals
from simulator import report
from simulator.closed_loop import StreamingFir
from simulator.run import gap_in_words
from simulator.scenes import SceneStream, generate_scene, resample


def test_streaming_fir_chunks_join_up_to_the_full_convolution():
    rng = np.random.default_rng(0)
    x, taps = rng.standard_normal(10_000), rng.standard_normal(700)
    fir = StreamingFir(taps)
    pieces = [fir(x[a:a + size]) for a, size in ((0, 3000), (3000, 100), (3100, 6900))]
    np.testing.assert_allclose(np.concatenate(pieces), scipy.signal.fftconvolve(x, taps)[:x.size], atol=1e-10)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_scene_stream_chunks_equal_resampling_the_whole_file(tmp_path, rate, monkeypatch):
    path = tmp_path / "scene.wav"
    soundfile.write(str(path), generate_scene("traffic", 3.3, rate, seed=5), rate, subtype="FLOAT")
    monkeypatch.setattr(SceneStream, "READ_FRAMES", 4096)  # many segments, joins included
    stream = SceneStream(path, 48000)
    chunks = list(stream.chunks(4800))
    assert all(chunk.size == 4800 for chunk in chunks[:-1])
    whole = resample(soundfile.read(str(path), dtype="float64")[0], rate, 48000)
    joined = np.concatenate(chunks)
    assert joined.size == whole.size == stream.samples
    np.testing.assert_allclose(joined, whole, atol=1e-9)


def test_a_late_dip_does_not_move_the_convergence_time():
    times = np.arange(1, 601) * 0.1                 # 60 s of 100 ms frames
    attenuation = np.full(600, 30.0)
    attenuation[:90] = 5.0       # settles at 9 s (frames are indexed: 9.0-9.1 s is frame 90) ...
    attenuation[350:450] = 10.0  # ... and dips from 35 to 45 s
    settled = report.convergence(times, attenuation, 30.0)
    assert settled.time_s == pytest.approx(9.0)
    assert settled.dips == [{"start_s": 35.0, "end_s": 45.0, "min_db": 10.0}]
    assert report.convergence(times, attenuation, 2.0).meaningful is False


def test_convergence_needs_two_seconds_inside_the_band():
    times = np.arange(1, 101) * 0.1
    attenuation = np.full(100, 30.0)
    attenuation[::15] = 0.0  # never 2 s in a row until the last stretch
    settled = report.convergence(times, attenuation, 30.0)
    assert settled.time_s == pytest.approx(9.1)  # the run from 9.1 s reaches the end of the scene


def test_gap_and_class_timeline_in_words():
    assert gap_in_words(2.14) == "2.1 dB short of it"
    assert gap_in_words(-0.3).startswith("0.3 dB better than it")
    assert gap_in_words(0.01) == "level with it"
    classes = [{"time_s": 2.0, "noise_type": "pink"}, {"time_s": 10.0, "noise_type": "construction"}]
    assert class_intervals(classes, 20.0) == "2.0-10.0 s pink, 10.0-20.0 s construction"


TIMING_FIELDS = {"callback_p50_ms", "callback_p99_ms", "callback_max_ms", "jitter_p99_ms", "cpu_utilization"}


def test_the_chunked_closed_loop_gives_the_same_run_as_the_per_block_loop(cfg):
    """The simulator runs the engine's kernel from numba 32 blocks at a time and hands the ring
    to the worker in chunks; a per-block `Session.process_block` polling every 32 blocks is what
    a device does. Same samples, same worker records (timings aside), on a plant with feedback
    neutralization, a path change the watchdog must catch, chunks that are not whole polls, and
    a classifier that switches presets."""
    from device.core.session import compose_session, load_classifier
    from simulator.closed_loop import ClosedLoop, EngineClosedLoop
    from simulator.plant import Plant
    from simulator.run import POLL_EVERY_BLOCKS, identify_rig_of_plant

    fs, block = 48000, cfg.audio.block_size
    plant = Plant.load("duct")
    scene = generate_scene("pink", 5.0, fs, seed=4)
    rig = identify_rig_of_plant(cfg, plant, seed=0, ambient=scene[:fs // 2])
    run_cfg = cfg.replace("controller", feedback_neutralization=rig.neutralize_feedback, taps=rig.recommended_taps)
    change = [(3 * fs + 17, -plant.secondary_path)]  # not on a block boundary
    classifier = load_classifier(run_cfg, required=True)

    def session():
        return compose_session(run_cfg, rig.secondary.estimate, rig.feedback.estimate, sample_rate=fs,
                               block_size=block, classifier=classifier)

    per_block_session, chunked_session = session(), session()
    count = [0]

    def per_block(reference, error, out, meta):
        per_block_session.process_block(reference, error, out, meta)
        count[0] += 1
        if count[0] % POLL_EVERY_BLOCKS == 0:
            per_block_session.poll()

    def on_blocks(reference, error, out, meta):
        chunked_session.push_blocks(reference, error, out, meta)
        if chunked.blocks % POLL_EVERY_BLOCKS == 0:
            chunked_session.poll()

    reference = ClosedLoop(plant, per_block, block, seed=3, secondary_path_changes=change)
    chunked = EngineClosedLoop(plant, chunked_session.engine.kernel_state, on_blocks, block, seed=3,
                               blocks_per_call=POLL_EVERY_BLOCKS, secondary_path_changes=change)
    step = 1000 * block + 7  # chunks that split polls, the last one short
    parts = [(reference.run(scene[a:a + step]), chunked.run(scene[a:a + step])) for a in range(0, scene.size, step)]
    for name in ("reference", "error_on", "output", "error_off", "disturbance_reference"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p, _ in parts]),
                                      np.concatenate([getattr(c, name) for _, c in parts]), err_msg=name)
    a, b = per_block_session.stop(), chunked_session.stop()
    wall_clock = {"start_time", "end_time"}
    assert {k: v for k, v in a.items() if k not in wall_clock} == {k: v for k, v in b.items() if k not in wall_clock}
    first, second = per_block_session.worker.report, chunked_session.worker.report
    assert first.safety_events and first.safety_events == second.safety_events
    assert first.class_changes and first.class_changes == second.class_changes
    assert first.detections == second.detections
    assert [{k: v for k, v in m.to_dict().items() if k not in TIMING_FIELDS} for m in first.metrics] == \
        [{k: v for k, v in m.to_dict().items() if k not in TIMING_FIELDS} for m in second.metrics]
    assert per_block_session.ring.dropped == chunked_session.ring.dropped == 0
    assert chunked.engine_time_s > 0 and all(m.callback_max_ms > 0 for m in second.metrics)


def test_band_attenuation_gives_the_figures_of_the_scipy_spectra():
    import warnings

    import scipy.signal

    rng = np.random.default_rng(2)
    for size in (100, 1000, 4321, 48000, 144000):
        off, on = rng.standard_normal(size), 0.1 * rng.standard_normal(size)
        nperseg = report._segment_length(size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # scipy shortens a segment longer than the signal
            f, p_off = scipy.signal.welch(off, 48000, nperseg=nperseg)
            _, p_on = scipy.signal.welch(on, 48000, nperseg=nperseg)
        band = (f >= report.BAND_HZ[0]) & (f <= report.BAND_HZ[1])
        expected = 10 * np.log10(p_off[band].sum() / p_on[band].sum())
        assert report.band_attenuation_db(off, on, 48000) == pytest.approx(expected, abs=1e-9)
