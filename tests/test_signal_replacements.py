"""The pieces of scipy.signal the device and the simulator write out themselves (importing
scipy.signal costs about a second of start-up here), checked against scipy.signal."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.signal

from device.core.dsp.identification import local_maxima, prominent_peaks
from device.core.dsp.lsfir import apply_fir, fft_convolve
from simulator.report import spectrum


@pytest.mark.parametrize("sizes", [(1, 1), (5, 3), (64, 64), (65, 65), (1000, 7), (48000, 512), (3001, 2048)])
def test_fft_convolve_is_the_full_convolution(sizes):
    rng = np.random.default_rng(sizes)
    a, b = rng.standard_normal(sizes[0]), rng.standard_normal(sizes[1])
    expected = scipy.signal.fftconvolve(a, b)
    got = fft_convolve(a, b)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(fft_convolve(b, a), got, atol=1e-10 * np.abs(expected).max())


def test_apply_fir_is_lfilter_and_empty_inputs_give_empty_output():
    rng = np.random.default_rng(1)
    h, x = rng.standard_normal(300), rng.standard_normal(5000)
    np.testing.assert_allclose(apply_fir(h, x), scipy.signal.lfilter(h, [1.0], x), atol=1e-9)
    np.testing.assert_allclose(apply_fir(h, x[:100]), scipy.signal.lfilter(h, [1.0], x[:100]), atol=1e-9)
    assert fft_convolve(np.zeros(0), h).size == 0


def _cases():
    rng = np.random.default_rng(7)
    yield rng.standard_normal(2000)
    yield np.round(rng.standard_normal(2000), 1)                       # many flat tops
    yield np.array([0.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0, 1.0, 3.0, 3.0])  # plateaus, one at the end
    yield np.array([1.0, 1.0, 1.0])
    yield np.array([0.0, 5.0, 0.0, 4.0, 4.5, 4.0, 9.0, -1.0])
    freqs = np.linspace(0, 1, 8193)
    yield 10 * np.log10(1e-4 + np.exp(-((freqs - 0.1) / 0.002) ** 2) + 0.3 * np.exp(-((freqs - 0.3) / 0.001) ** 2)
                        + 0.01 * rng.random(freqs.size))


@pytest.mark.parametrize("index", range(6))
def test_peaks_and_prominence_select_what_find_peaks_selects(index):
    x = list(_cases())[index]
    expected, _ = scipy.signal.find_peaks(x)
    np.testing.assert_array_equal(local_maxima(x), expected)
    for prominence in (0.0, 0.5, 1.0, 3.0, 10.0):
        expected, _ = scipy.signal.find_peaks(x, prominence=prominence)
        np.testing.assert_array_equal(prominent_peaks(x, prominence), expected)


@pytest.mark.parametrize("length", [100, 256, 1000, 48000, 100_000])
def test_report_spectrum_is_scipy_welch_for_one_and_two_rows(length):
    rng = np.random.default_rng(length)
    x = rng.standard_normal((2, length))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # scipy shortens a segment longer than the signal
        nperseg = min(8192, max(256, 2 ** int(np.log2(max(length // 4, 256)))))
        f_ref, p_ref = scipy.signal.welch(x, 16000, nperseg=nperseg)
    f, p = spectrum(x, 16000)
    np.testing.assert_allclose(f, f_ref)
    np.testing.assert_allclose(p, p_ref, rtol=1e-9, atol=1e-15)
    f1, p1 = spectrum(x[0], 16000)
    np.testing.assert_allclose(p1, p_ref[0], rtol=1e-9, atol=1e-15)


def test_the_simulator_and_identification_do_not_import_scipy_signal():
    """Not on import, nor to read the bundled 16 kHz scene at 48 kHz."""
    from pathlib import Path

    scene = Path(__file__).resolve().parent.parent / "simulator" / "scenes" / "engine_hum.wav"
    code = ("import sys, simulator.run, simulator.ears, device.core.dsp.identification, device.core.session; "
            "from simulator.scenes import SceneStream; "
            f"assert SceneStream({str(scene)!r}, 48000).head(96000).size == 96000; "
            "print('scipy.signal' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("up, down, size", [(3, 1, 1000), (1, 3, 999), (160, 147, 4410), (147, 160, 4800),
                                            (2, 1, 1), (3, 2, 7), (6, 2, 500), (5, 5, 10)])
def test_scene_resampler_is_resample_poly(up, down, size):
    from simulator.scenes import resample_poly

    x = np.random.default_rng(size).standard_normal(size)
    expected = scipy.signal.resample_poly(x, up, down)
    got = resample_poly(x, up, down)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-12)
