"""Features of the noise classifier: MFCC against librosa, the window summary, the decimator."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from device.core import features as F

SR = F.SAMPLE_RATE
# Our MFCC is computed in float64 like librosa's; they agree to rounding. Values reach a few
# hundred, so 1e-3 is six orders of magnitude below the features' scale.
MFCC_TOLERANCE = 1e-3


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    white = rng.standard_normal(SR) * 0.1
    return {
        "white": white,
        "lowpassed": scipy.signal.lfilter([1.0], [1.0, -0.97], white),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * scipy.signal.chirp(t, 50, 1.0, 7000),
        "quiet": white * 1e-4,
        "odd_length": rng.standard_normal(12345) * 0.2,
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_mfcc_matches_librosa(name):
    librosa = pytest.importorskip("librosa")
    y = _signals()[name]
    ours = F.mfcc(y)
    ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=F.N_MFCC, n_fft=F.N_FFT, hop_length=F.HOP_LENGTH,
                               win_length=F.WIN_LENGTH, window="hann", center=False, n_mels=F.N_MELS,
                               fmin=F.FMIN, fmax=F.FMAX, htk=False, power=2.0, dct_type=2, norm="ortho").T
    assert F.TOP_DB == 80.0  # librosa.power_to_db's default, which librosa's mfcc uses
    assert ours.shape == ref.shape == (1 + (y.size - F.WIN_LENGTH) // F.HOP_LENGTH, 40)
    assert np.max(np.abs(ours - ref)) < MFCC_TOLERANCE


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=SR, n_fft=F.N_FFT, n_mels=F.N_MELS, fmin=F.FMIN, fmax=F.FMAX)
    np.testing.assert_allclose(F.mel_filterbank(), ref, rtol=1e-5, atol=1e-9)


def test_feature_vector_shape_and_level_invariance():
    rng = np.random.default_rng(1)
    x = scipy.signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(2 * SR)) * 0.05
    v = F.feature_vector(x)
    assert v.shape == (F.N_FEATURES,) and v.dtype == np.float32 and np.all(np.isfinite(v))
    assert len(F.FEATURE_NAMES) == F.N_FEATURES == F.feature_spec()["n_features"]
    # The window is scaled to a fixed RMS first: the microphone gain does not change the features.
    np.testing.assert_allclose(F.feature_vector(x * 1e-3), v, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(F.feature_vector(x * 10.0), v, rtol=1e-4, atol=1e-3)
    # Different noises give different vectors.
    assert np.max(np.abs(F.feature_vector(rng.standard_normal(2 * SR)) - v)) > 1.0


def test_spectral_flux_separates_impulsive_from_steady_noise():
    rng = np.random.default_rng(7)
    steady = rng.standard_normal(2 * SR) * 0.05
    clicks = steady * 0.05
    for start in rng.integers(0, 2 * SR - 400, 12):  # ~6 clicks a second, like clatter
        clicks[start:start + 400] += rng.standard_normal(400) * np.exp(-np.arange(400) / 60.0)
    flux = [F.FEATURE_NAMES.index(n) for n in ("flux_mean_db", "flux_std_db", "flux_p90_db")]
    flux_steady = F.feature_vector(steady)[flux]
    flux_clicks = F.feature_vector(clicks)[flux]
    # Stationary white noise: the log-mel frames differ only by estimation noise (~ a few dB).
    assert 0.5 < flux_steady[0] < 10.0
    assert np.all(flux_clicks > flux_steady)
    assert flux_clicks[2] > flux_steady[2] + 10.0
    assert flux_steady[2] >= flux_steady[0]


def test_percentiles_equal_numpy():
    from device.core.dsp.window_summary import percentile

    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 10, 123, 124, 125, 300):
        for _ in range(20):
            v = rng.standard_normal(n) * rng.uniform(0.1, 50.0)
            for q in (0.0, 5.0, 50.0, 90.0, 95.0, 100.0):
                assert percentile(v, q) == np.percentile(v, q)


def _windows_of_every_kind():
    """Windows unlike each other: the signals above, two-second noises, tones, clicks, silence,
    a window with NaN, and the bundled scenes at 16 kHz."""
    import soundfile

    rng = np.random.default_rng(12)
    t = np.arange(2 * SR) / SR
    white = rng.standard_normal(2 * SR) * 0.1
    clicks = white * 0.01
    clicks[::1600] = 0.9
    windows = dict(_signals())
    windows.update({
        "white_2s": white,
        "pink_2s": scipy.signal.lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                                        [1, -2.494956002, 2.017265875, -0.522189400], white),
        "swelling": white * (1.0 + 0.9 * np.sin(2 * np.pi * 4.0 * t)),
        "clicks": clicks,
        "hum": 0.2 * np.sin(2 * np.pi * 100 * t) + 0.1 * np.sin(2 * np.pi * 200 * t) + white * 1e-3,
        "silence": np.zeros(2 * SR),
        "nan": np.where(np.arange(2 * SR) % 777 == 0, np.nan, white),
        "shortest": white[:F.MIN_SAMPLES],
    })
    scenes = sorted((Path(__file__).resolve().parent.parent / "simulator" / "scenes").glob("*.wav"))
    assert scenes
    for path in scenes:
        audio, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
        audio = scipy.signal.resample_poly(audio[:, 0], SR, rate) if rate != SR else audio[:, 0]
        for start in range(0, audio.size - 2 * SR, 5 * SR):
            windows[f"{path.stem}_{start // SR}s"] = audio[start:start + 2 * SR]
    return windows


def test_feature_vector_equals_the_numpy_it_replaced():
    """The shipped model was trained on the NumPy features: the compiled summaries must give the
    same float32 values, to rounding (a differing order of additions moves the last bit)."""
    from feature_reference import numpy_feature_vector

    windows = _windows_of_every_kind()
    assert len(windows) > 20
    for name, window in windows.items():
        np.testing.assert_allclose(F.feature_vector(window), numpy_feature_vector(window), rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_reused_buffers_change_no_value():
    """Windows of different kinds and lengths through the same thread's buffers, interleaved and
    repeated, give exactly the vectors of a fresh buffer set each; `out` receives the vector."""
    windows = list(_windows_of_every_kind().values())
    fresh = []
    for window in windows:
        clean = np.empty(F.N_FEATURES, dtype=np.float32)
        F.FeatureWorkspace(window.size).compute(np.ascontiguousarray(window, dtype=np.float64), clean)
        fresh.append(clean)
    for _ in range(2):
        for window, expected in zip(windows, fresh):
            out = np.full(F.N_FEATURES, np.nan, dtype=np.float32)
            assert F.feature_vector(window, out=out) is out
            np.testing.assert_array_equal(out, expected)
    # A strided (non-contiguous) window is the same window.
    doubled = np.repeat(windows[0], 2)[::2]
    np.testing.assert_array_equal(F.feature_vector(doubled), fresh[0])


def test_feature_vector_in_threads_equals_serial():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(13)
    windows = [rng.standard_normal(2 * SR) * rng.uniform(0.01, 0.5) for _ in range(12)]
    serial = [F.feature_vector(w) for w in windows]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(F.feature_vector, windows * 3))
    for k, vector in enumerate(threaded):
        np.testing.assert_array_equal(vector, serial[k % len(windows)])


def test_feature_vector_allocates_nothing_window_sized():
    """After the first window of a length, the spectra reuse their buffers: what a window
    allocates is small temporaries, not the ~1.5 MB of frames and spectra it once did."""
    window = np.random.default_rng(14).standard_normal(2 * SR) * 0.1
    out = np.empty(F.N_FEATURES, dtype=np.float32)
    F.feature_vector(window, out=out)
    tracemalloc.start()
    try:
        for _ in range(5):
            F.feature_vector(window, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_feature_vector_edge_cases():
    assert np.all(np.isfinite(F.feature_vector(np.zeros(SR))))
    assert np.all(np.isfinite(F.feature_vector(np.full(SR, np.nan))))
    with pytest.raises(ValueError, match="at least"):
        F.feature_vector(np.zeros(F.MIN_SAMPLES - 1))
    with pytest.raises(ValueError, match="16000 Hz"):
        F.feature_vector(np.zeros(SR), sample_rate=48000)


def test_power_and_peak():
    t = np.arange(SR) / SR
    power, peak = F.power_and_peak(np.sin(2 * np.pi * 440.0 * t), SR)
    assert power == pytest.approx(-3.0103, abs=0.01)
    assert peak == pytest.approx(440.0, abs=3.0)
    power, peak = F.power_and_peak(0.01 * np.sin(2 * np.pi * 97.0 * t) + 1e-4 * np.random.default_rng(0).standard_normal(SR), SR)
    assert power == pytest.approx(-43.01, abs=0.05)
    assert peak == pytest.approx(97.0, abs=3.0)
    assert F.power_and_peak(np.zeros(SR), SR) == (-200.0, 0.0)
    assert F.power_and_peak(np.zeros(0), SR) == (-200.0, 0.0)


def _stream(decimator, x, sizes):
    out, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        out.append(decimator.process(x[i:i + n]))
        i, k = i + n, k + 1
    return np.concatenate(out)


def test_decimator_matches_resample_poly_in_32_sample_blocks():
    x = np.random.default_rng(2).standard_normal(48000 * 2)
    dec = F.StreamDecimator(48000, 16000)
    out = _stream(dec, x, [32])
    ref = scipy.signal.resample_poly(x, 1, 3)
    assert out.size == ref.size == x.size // 3
    d = dec.delay_out
    assert d == 10
    # Causal streaming output = resample_poly's zero-phase output delayed by the filter's half length.
    np.testing.assert_allclose(out[d:], ref[:-d], atol=1e-12)


def test_decimator_is_independent_of_block_size():
    x = np.random.default_rng(3).standard_normal(30000)
    one = F.StreamDecimator(48000).process(x)
    for sizes in ([1], [7, 32, 100, 1, 3], [4096]):
        np.testing.assert_allclose(_stream(F.StreamDecimator(48000), x, sizes), one, atol=1e-12)


def test_decimator_tone_passes_and_alias_is_rejected():
    t = np.arange(48000 * 2) / 48000
    dec = F.StreamDecimator(48000)
    tone = _stream(dec, 0.5 * np.sin(2 * np.pi * 1000 * t), [32])[200:]
    power, peak = F.power_and_peak(tone, 16000)
    assert peak == pytest.approx(1000.0, abs=3.0)
    assert power == pytest.approx(20 * np.log10(0.5) - 3.0103, abs=0.05)
    # 12 kHz is above the 8 kHz output Nyquist: it would alias to 4 kHz without the filter.
    alias = _stream(F.StreamDecimator(48000), 0.5 * np.sin(2 * np.pi * 12000 * t), [32])[200:]
    assert F.power_and_peak(alias, 16000)[0] < power - 40.0


def test_decimator_other_rates():
    t = np.arange(44100) / 44100
    out = _stream(F.StreamDecimator(44100, 16000), np.sin(2 * np.pi * 1000 * t), [32])
    assert abs(out.size - 16000) <= 1
    assert F.power_and_peak(out[1000:], 16000)[1] == pytest.approx(1000.0, abs=3.0)
    same = F.StreamDecimator(16000, 16000)
    block = np.arange(32.0)
    np.testing.assert_array_equal(same.process(block), block)


def test_decimator_does_not_grow():
    dec = F.StreamDecimator(48000)
    block = np.random.default_rng(4).standard_normal(32)
    for _ in range(100):
        dec.process(block)
    buffer = dec._buffer
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(20000):
            dec.process(block)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec._buffer is buffer
    assert end - start < 4096


def _named(v):
    return dict(zip(F.FEATURE_NAMES, v))


def test_sound_features_separate_modulation_onsets_and_tonality():
    rng = np.random.default_rng(4)
    n = 2 * SR
    t = np.arange(n) / SR
    steady = rng.standard_normal(n) * 0.1
    syllabic = steady * (1.0 + 0.9 * np.sin(2 * np.pi * 4.0 * t))   # babble-like 4 Hz swell
    clicks = steady * 0.02
    for start in np.arange(0.1, 2.0, 0.2):                           # 5 clicks per second
        k = int(start * SR)
        clicks[k:k + 80] += rng.standard_normal(80) * 0.5
    tone = 0.3 * np.sin(2 * np.pi * 700 * t) + steady * 0.01
    f_steady, f_syll, f_clicks, f_tone = (_named(F.feature_vector(x)) for x in (steady, syllabic, clicks, tone))
    # Modulation band 1 (2-6 Hz) of every acoustic band: the 4 Hz swell stands far above steady noise.
    for b in range(len(F.MOD_ACOUSTIC_BANDS_HZ)):
        assert f_syll[f"mod_b{b}_m1_db"] > f_steady[f"mod_b{b}_m1_db"] + 10.0
    assert f_syll["comodulation"] > 0.8 > f_steady["comodulation"]
    assert 3.5 <= f_clicks["onset_rate_hz"] <= 6.5 and f_steady["onset_rate_hz"] < 1.0
    assert f_tone["peak_persistence"] > 0.95 > 0.2 > f_steady["peak_persistence"]
    assert f_tone["crest_mean_db"] > f_steady["crest_mean_db"] + 10.0


def test_sound_features_ignore_gain_and_a_fixed_eq():
    rng = np.random.default_rng(5)
    t = np.arange(2 * SR) / SR
    x = rng.standard_normal(2 * SR) * 0.05 * (1.0 + 0.8 * np.sin(2 * np.pi * 1.3 * t))
    sound = [i for i, name in enumerate(F.FEATURE_NAMES) if name.startswith(("mod_", "onset_", "comodulation"))]
    base = F.feature_vector(x)[sound]
    np.testing.assert_allclose(F.feature_vector(x * 0.01)[sound], base, rtol=1e-3, atol=1e-3)
    # A microphone tilt (first-order low-pass at 2 kHz) moves the modulation depths by well under
    # the 10 dB that separate a swelling from a steady noise above.
    tilted = scipy.signal.sosfilt(scipy.signal.butter(1, 2000, fs=SR, output="sos"), x)
    assert np.max(np.abs(F.feature_vector(tilted)[sound] - base)) < 3.0
