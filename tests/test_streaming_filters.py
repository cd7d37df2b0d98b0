"""The worker's compiled streaming filters (device/core/dsp/streaming.py) against the NumPy
they replaced: the same samples and sums within float rounding, whatever the chunking."""

import numpy as np
import pytest

from device.core.dsp.streaming import level_weighted_sums, polyphase_outputs, speaker_at_error


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
    sums = np.zeros(7)
    level, level_coef = np.zeros(1), 1e-3
    whole_level, whole_sums = np.zeros(1), np.zeros(7)
    position, k = 0, 0
    while position < output.size:
        n = sizes[k % len(sizes)]
        y, e = output[position:position + n], error[position:position + n]
        speaker = np.empty(y.size)
        speaker_at_error(y, e, np.ascontiguousarray(secondary[::-1]), extended, speaker, sums, level, level_coef)
        expected, expected_sums, reference_history = _numpy_speaker_at_error(reference_history, y, e, secondary)
        np.testing.assert_allclose(speaker, expected, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sums[:5], expected_sums, rtol=1e-11, atol=1e-14)
        np.testing.assert_array_equal(extended[:taps - 1], reference_history)
        # The level-weighted sums are level_weighted_sums' on the same d and z.
        check_level, check_sums = whole_level.copy(), np.zeros(7)
        level_weighted_sums(e - speaker, speaker, check_level, level_coef, check_sums)
        np.testing.assert_allclose(sums[5:], check_sums[5:], rtol=1e-11, atol=1e-14)
        whole_level[0] = check_level[0]
        whole_sums[5:] += sums[5:]
        position, k = position + n, k + 1
    # However the audio is chunked, the level-weighted sums are those of one pass over it all.
    full_speaker = np.convolve(output, secondary)[:output.size]
    one_pass = np.zeros(7)
    level_weighted_sums(error - full_speaker, full_speaker, np.zeros(1), level_coef, one_pass)
    np.testing.assert_allclose(whole_sums[5:], one_pass[5:], rtol=1e-9)

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


class _RecordingClassifier:
    """Stands in for the ONNX classifier: keeps a copy of every window it is given."""

    def __init__(self):
        self.windows = []

    def classify(self, window, rule=None):
        from device.core.classifier import Detection

        self.windows.append(window.copy())
        return Detection("pink", 0.9, {"pink": 0.9})


def test_the_worker_classifies_the_last_window_of_the_decimated_stream():
    """The classifier's window is kept circularly: at every hop it must be exactly the last
    window_s of the 16 kHz stream, whatever the poll sizes."""
    from device.contract.config import load_config
    from device.core.features import SAMPLE_RATE, StreamDecimator
    from device.core.session import compose_session

    cfg = load_config()
    classifier = _RecordingClassifier()
    session = compose_session(cfg, np.array([0.0, 0.5, 0.25]), None, sample_rate=48000, block_size=32,
                              classifier=(classifier, None))
    rng = np.random.default_rng(9)
    reference = rng.standard_normal(48000 * 4) * 0.1
    error = rng.standard_normal(reference.size) * 0.01
    output = np.zeros(reference.size)
    position, polls = 0, [32, 7, 50, 1, 64]
    k = 0
    while position < reference.size:
        blocks = min(polls[k % len(polls)], (reference.size - position) // 32)
        stop = position + blocks * 32
        session.push_blocks(reference[position:stop], error[position:stop], output[position:stop], np.zeros((blocks, 4)))
        session.poll()
        position, k = stop, k + 1
    stream = StreamDecimator(48000, SAMPLE_RATE).process(reference)
    size = int(round(cfg.classifier.window_s * SAMPLE_RATE))
    hop = int(round(cfg.classifier.hop_s * SAMPLE_RATE))
    assert len(classifier.windows) >= 4
    ends = []
    for window in classifier.windows:
        # Where the window's last sample sits in the whole stream (random samples: one place).
        candidates = np.nonzero(stream == window[-1])[0] + 1
        matches = [end for end in candidates if end >= size and np.array_equal(stream[end - size:end], window)]
        assert len(matches) == 1
        ends.append(matches[0])
    assert all(b - a >= hop for a, b in zip(ends, ends[1:]))
