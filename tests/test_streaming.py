"""The streamed simulation joins up to the whole-signal computation, and its summary reads right."""

import numpy as np
import pytest
import scipy.signal
import soundfile

from device.core.summary import class_intervals
from simulator import report
from simulator.plant import StreamingFir
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
