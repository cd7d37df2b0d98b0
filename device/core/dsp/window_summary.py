"""Compiled loops of the classifier's feature vector (`features.feature_vector`).

`windowed_frames` cuts the level-normalised window into Hann-windowed frames and
`power_and_mel` turns their spectra into power and mel bands, both into buffers the caller
keeps (`features.FeatureWorkspace`); a triangular mel band touches 2-23 of the 257 bins, so
summing only those is a thirty-third of the dense product's work. `modulation_summary` gives
the modulation spectrum and comodulation of the band envelopes.

After the spectra (the FFT, the log and the DCT stay NumPy), the feature
vector is about sixty small reductions over frames (means, standard deviations, percentiles,
per-frame maxima): in NumPy each cost more in call overhead than in arithmetic, together more
than the spectra. Here they are one pass of plain loops. Every value is the same formula as
the NumPy it replaced (two-pass standard deviation, linear-interpolation percentiles on the
sorted values, first index of a maximum); only the order of additions can differ, so the
float32 features agree to rounding (tests/test_features.py compares them with the NumPy).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np


# Values multiplied before one log is taken. Each value is a power spectrum bin of a window
# scaled to -20 dBFS plus 1e-10: between 1e-10 and about 1e6, so a product of 8 stays between
# 1e-80 and 1e48, far inside float64's range, and rounds no worse than the 8 additions of logs
# it replaces.
LOG_GROUP = 8


@nb.njit(cache=True, inline="always")
def _mean(values):
    total = 0.0
    for value in values:
        total += value
    return total / values.size


@nb.njit(cache=True, inline="always")
def _std(values):
    mean = _mean(values)
    total = 0.0
    for value in values:
        deviation = value - mean
        total += deviation * deviation
    return math.sqrt(total / values.size)


@nb.njit(cache=True)
def percentile(values, q):
    """np.percentile(values, q) of a 1-D array (linear method, the same arithmetic)."""
    ordered = np.sort(values)
    n = ordered.size
    position = q / 100.0 * (n - 1)
    low = int(math.floor(position))
    high = min(low + 1, n - 1)
    a, b, t = ordered[low], ordered[high], position - low
    difference = b - a
    return b - difference * (1.0 - t) if t >= 0.5 else a + difference * t


@nb.njit(cache=True, nogil=True)
def frame_summaries(power, log_mel, coeffs, band_lo, band_hi, amin, n_delta, hop_length, sample_rate,
                    onset_threshold_db, out, sound):
    """The MFCC statistics, flatness, level, flux (into `out`, from index 0) and the onsets and
    tonality (into `sound`, from index 0) of one window's frames; see `features` for the names.

    power (frames, bins), log_mel (frames, mels), coeffs (frames, n_mfcc); band_lo:band_hi the
    flatness band's bins; hop_length / sample_rate the frame period (s)."""
    n_frames, n_mfcc = coeffs.shape
    n_mels = log_mel.shape[1]
    column = np.empty(n_frames)
    deltas = np.empty(n_frames - 1)
    for c in range(n_mfcc):
        for f in range(n_frames):
            column[f] = coeffs[f, c]
        out[c] = _mean(column)
        out[n_mfcc + c] = _std(column)
        if c < n_delta:
            for f in range(n_frames - 1):
                deltas[f] = coeffs[f + 1, c] - coeffs[f, c]
            out[2 * n_mfcc + c] = _std(deltas)
    tail = 2 * n_mfcc + n_delta

    # Per frame: flatness and crest over the band (power + amin), the band's strongest bin,
    # the frame's level.
    width = band_hi - band_lo
    flatness = np.empty(n_frames)
    crest = np.empty(n_frames)
    level = np.empty(n_frames)
    strongest = np.empty(n_frames, dtype=np.int64)
    for f in range(n_frames):
        log_total = 0.0
        total = 0.0
        peak = -np.inf
        where = 0
        for start in range(0, width, LOG_GROUP):
            # The sum of the logs as the logs of products of LOG_GROUP values: a log costs
            # more than all the rest of the frame's arithmetic.
            product = 1.0
            for k in range(start, min(start + LOG_GROUP, width)):
                value = power[f, band_lo + k] + amin
                product *= value
                total += value
                if value > peak:
                    peak = value
                    where = k
            log_total += math.log(product)
        mean = total / width
        flatness[f] = 10.0 * (log_total / width - math.log(mean)) / math.log(10.0)
        crest[f] = 10.0 * math.log10(peak / mean)
        strongest[f] = where
        frame_total = 0.0
        for k in range(power.shape[1]):
            frame_total += power[f, k]
        level[f] = 10.0 * math.log10(frame_total + amin)
    out[tail] = _mean(flatness)
    out[tail + 1] = _std(flatness)
    out[tail + 2] = _std(level)
    out[tail + 3] = percentile(level, 95.0) - percentile(level, 5.0)

    # Frame-to-frame change of the log-mel spectrum: its RMS (flux) and mean rise (onsets).
    flux = np.empty(n_frames - 1)
    rise = np.empty(n_frames - 1)
    for f in range(n_frames - 1):
        squares = 0.0
        rising = 0.0
        for m in range(n_mels):
            change = log_mel[f + 1, m] - log_mel[f, m]
            squares += change * change
            rising += max(change, 0.0)
        flux[f] = math.sqrt(squares / n_mels)
        rise[f] = rising / n_mels
    out[tail + 4] = _mean(flux)
    out[tail + 5] = _std(flux)
    out[tail + 6] = percentile(flux, 90.0)

    base = percentile(rise, 50.0)
    onsets = 0
    strongest_rise = -np.inf
    for f in range(rise.size):
        strongest_rise = max(strongest_rise, rise[f])
        if 0 < f < rise.size - 1 and rise[f] > rise[f - 1] and rise[f] >= rise[f + 1] \
                and rise[f] > base + onset_threshold_db:
            onsets += 1
    sound[0] = onsets / (rise.size * hop_length / sample_rate)
    sound[1] = strongest_rise - base
    sound[2] = _mean(crest)
    sound[3] = _std(crest)
    # The most common strongest bin (the lowest of equally common ones) and how often the
    # strongest bin is within one bin of it.
    counts = np.zeros(width, dtype=np.int64)
    for f in range(n_frames):
        counts[strongest[f]] += 1
    mode = 0
    for k in range(width):
        if counts[k] > counts[mode]:
            mode = k
    near = 0
    for f in range(n_frames):
        if abs(strongest[f] - mode) <= 1:
            near += 1
    sound[4] = near / n_frames


@nb.njit(cache=True, nogil=True)
def comodulation(envelope):
    """Mean correlation between the columns of `envelope` (frames, bands), as
    (np.corrcoef(envelope.T).sum() - bands) / (bands * (bands - 1)); 0.0 when a column's
    standard deviation is 1e-6 or less (a band without movement has no correlation)."""
    n_frames, n_bands = envelope.shape
    centred = np.empty((n_bands, n_frames))
    for b in range(n_bands):
        column = envelope[:, b].copy()
        if not _std(column) > 1e-6:
            return 0.0
        mean = _mean(column)
        for f in range(n_frames):
            centred[b, f] = column[f] - mean
    covariance = np.empty((n_bands, n_bands))
    for a in range(n_bands):
        for b in range(n_bands):
            total = 0.0
            for f in range(n_frames):
                total += centred[a, f] * centred[b, f]
            covariance[a, b] = total / (n_frames - 1)
    total = 0.0
    for a in range(n_bands):
        for b in range(n_bands):
            correlation = covariance[a, b] / math.sqrt(covariance[a, a]) / math.sqrt(covariance[b, b])
            total += min(1.0, max(-1.0, correlation))
    return (total - n_bands) / (n_bands * (n_bands - 1))


@nb.njit(cache=True, nogil=True)
def windowed_frames(x, scale, window, hop_length, frames):
    """frames[f, k] = (x[f * hop_length + k] * scale) * window[k]: the scaled window's
    overlapping frames, each multiplied by the analysis window, in the order of operations of
    ``(x * scale)`` followed by ``frames * window`` (so the values are those NumPy gives)."""
    n_frames, length = frames.shape
    for f in range(n_frames):
        start = f * hop_length
        for k in range(length):
            frames[f, k] = (x[start + k] * scale) * window[k]


@nb.njit(cache=True, nogil=True)
def power_and_mel(spectrum, band_first, band_weights, band_width, power, mel_power):
    """power = |spectrum|^2 (frames, bins), and mel_power = power @ filterbank.T computed over
    each band's non-zero bins only: band m covers bins band_first[m] .. + band_width[m], with
    the weights band_weights[m, :band_width[m]] (a triangular filter touches a few bins of 257,
    497 weights against the dense product's 16,448)."""
    n_frames, n_bins = power.shape
    n_bands = band_first.size
    for f in range(n_frames):
        for k in range(n_bins):
            value = spectrum[f, k]
            power[f, k] = value.real * value.real + value.imag * value.imag
        for m in range(n_bands):
            first = band_first[m]
            total = 0.0
            for j in range(band_width[m]):
                total += power[f, first + j] * band_weights[m, j]
            mel_power[f, m] = total


@nb.njit(cache=True, nogil=True)
def modulation_summary(mel_power, band_first, band_count, amin, cos_table, sin_table, bin_lo, bin_hi,
                       envelope, out):
    """The modulation spectrum (into out[:bands * rates], acoustic band first) and the
    comodulation (out[bands * rates]) of one window's mel power (frames, mels).

    Acoustic band b sums the mel bands band_first[b] .. + band_count[b]; its dB envelope
    10*log10(sum + amin), mean removed, goes into `envelope` (frames, bands). Its power spectrum
    over the first min(frames, n_fft) frames zero-padded to n_fft is a direct DFT over the
    bins the modulation bands use (cos_table / sin_table: (bins, n_fft) rows of cos and sin of
    2 pi k n / n_fft), divided by the frames used; rate band r is the mean of bins
    bin_lo[r]:bin_hi[r], in dB: 10*log10(mean + 1e-6). Every value is a difference of dB values
    within a band, so the microphone's gain and a fixed EQ cancel out of it. A direct DFT of the
    bins used (62 of 65) costs less here than the NumPy FFT's calls did."""
    n_frames = mel_power.shape[0]
    n_bands = band_first.size
    n_rates = bin_lo.size
    n_fft = cos_table.shape[1]
    used = min(n_frames, n_fft)
    for b in range(n_bands):
        first = band_first[b]
        total = 0.0
        for f in range(n_frames):
            power = 0.0
            for m in range(first, first + band_count[b]):
                power += mel_power[f, m]
            value = 10.0 * math.log10(power + amin)
            envelope[f, b] = value
            total += value
        mean = total / n_frames
        for f in range(n_frames):
            envelope[f, b] -= mean
        for r in range(n_rates):
            depth = 0.0
            for k in range(bin_lo[r], bin_hi[r]):
                re = 0.0
                im = 0.0
                for f in range(used):
                    re += envelope[f, b] * cos_table[k, f]
                    im -= envelope[f, b] * sin_table[k, f]
                depth += (re * re + im * im) / used
            depth /= bin_hi[r] - bin_lo[r]
            out[b * n_rates + r] = 10.0 * math.log10(depth + 1e-6)
    out[n_bands * n_rates] = comodulation(envelope)
