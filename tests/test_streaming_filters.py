"""The worker's compiled streaming filters (device/core/dsp/streaming.py) against the NumPy
they replaced: the same samples and sums within float rounding, whatever the chunking."""

import numpy as np
import pytest

from device.core.dsp.streaming import polyphase_outputs, speaker_at_error


def _numpy_speaker_at_error(history, output, error, secondary):
    """What the worker computed before: a streaming FIR by concatenation, then five dot products."""
    extended = np.concatenate([history, output])
    speaker = np.convolve(extended, secondary, mode="valid")
    disturbance = error - speaker
    sums = [np.dot(error, error), np.dot(disturbance, disturbance), np.dot(output, output),
            np.dot(disturbance, speaker), np.dot(speaker, speaker)]
    return speaker, np.array(sums), extended[extended.size - history.size:]


@pytest.mark.parametrize("taps", [1, 2, 256])
@pytest.mark.parametrize("sizes", [[1024], [333, 1, 7, 500], [32]])
def test_speaker_at_error_equals_convolution_and_dot_products(taps, sizes):
    rng = np.random.default_rng(taps)
    secondary = rng.standard_normal(taps) * np.exp(-np.arange(taps) / 30.0)
    output = rng.standard_normal(4000) * 0.1
    error = rng.standard_normal(4000) * 0.05
    reference_history = np.zeros(taps - 1)
    extended = np.zeros(taps - 1 + max(sizes))
    sums = np.zeros(5)
    position, k = 0, 0
    while position < output.size:
        n = sizes[k % len(sizes)]
        y, e = output[position:position + n], error[position:position + n]
        speaker = np.empty(y.size)
        speaker_at_error(y, e, np.ascontiguousarray(secondary[::-1]), extended, speaker, sums)
        expected, expected_sums, reference_history = _numpy_speaker_at_error(reference_history, y, e, secondary)
        np.testing.assert_allclose(speaker, expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sums, expected_sums, rtol=1e-11, atol=1e-14)
        np.testing.assert_array_equal(extended[:taps - 1], reference_history)
        position, k = position + n, k + 1

def test_polyphase_outputs_equal_the_gather():
    """The decimator's inner loop against the indexed gather it replaced, for 48 -> 16 and 44.1 -> 16 kHz."""
    rng = np.random.default_rng(7)
    for up, down in ((1, 3), (160, 441)):
        phases = rng.standard_normal((up, 25))
        history = phases.shape[1] - 1
        buffer = rng.standard_normal(history + 900)
        first = 5 if up == 1 else 123
        count = (900 * up - first) // down
        times = first + down * np.arange(count)
        index = (times // up + history)[:, None] - np.arange(phases.shape[1])[None, :]
        expected = np.einsum("ij,ij->i", buffer[index], phases[times % up])
        out = np.empty(count)
        polyphase_outputs(buffer, phases, first, up, down, history, out)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)
