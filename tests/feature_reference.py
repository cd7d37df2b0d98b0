"""The classifier's feature vector as NumPy computed it before its per-frame summaries were
compiled (device/core/dsp/window_summary.py) and before its spectra ran over reused buffers
(`features.FeatureWorkspace`): the oracle that the device's must equal to float rounding, since
the shipped model was trained on these values. The spectra (frames, power, dense mel product,
log-mel, DCT) are restated here as the NumPy expressions they were; only the filterbank and DCT
matrices, checked against librosa, are the module's."""

from __future__ import annotations

import numpy as np

from device.core.features import (AMIN, HOP_LENGTH, MIN_SAMPLES, N_DELTA, N_FEATURES, N_FFT, N_MFCC,
                                  ONSET_THRESHOLD_DB, SAMPLE_RATE, SILENCE_RMS, TARGET_RMS_DBFS, TOP_DB,
                                  WIN_LENGTH, _band_matrix, _check_rate, _dct_matrix, _flatness_bins,
                                  _modulation_bins, hann_periodic, mel_filterbank, MOD_ACOUSTIC_BANDS_HZ,
                                  MOD_BANDS_HZ, MOD_NFFT)


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(n_frames, N_FFT // 2 + 1) power spectra of Hann-windowed frames, no padding."""
    audio = np.ascontiguousarray(audio, dtype=np.float64)
    n_frames = 1 + (audio.size - WIN_LENGTH) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        audio, shape=(n_frames, WIN_LENGTH), strides=(audio.strides[0] * HOP_LENGTH, audio.strides[0]),
        writeable=False)
    spectrum = np.fft.rfft(frames * hann_periodic(WIN_LENGTH), n=N_FFT, axis=1)
    return spectrum.real ** 2 + spectrum.imag ** 2


def _log_mel(power: np.ndarray, mel_power: np.ndarray) -> np.ndarray:
    log_mel = 10.0 * np.log10(np.maximum(mel_power, AMIN))
    return np.maximum(log_mel, log_mel.max() - TOP_DB)


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """np.percentile(values, qs) (linear method, same arithmetic) of a 1-D array, without its overhead."""
    n = values.size
    idx = [q / 100.0 * (n - 1) for q in qs]
    kth = sorted({min(int(np.floor(i)) + k, n - 1) for i in idx for k in (0, 1)})
    part = np.partition(values, kth)
    out = []
    for i in idx:
        lo = int(np.floor(i))
        hi = min(lo + 1, n - 1)
        a, b, t = part[lo], part[hi], i - lo
        diff = b - a
        out.append(float(b - diff * (1.0 - t)) if t >= 0.5 else float(a + diff * t))
    return out


def numpy_feature_vector(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The (N_FEATURES,) float32 summary of one window of mono 16 kHz audio (see the module doc)."""
    _check_rate(sample_rate)
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size < MIN_SAMPLES:
        raise ValueError(f"a window needs at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz, got {x.size}")
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    rms = float(np.sqrt(np.mean(x * x)))
    if rms > SILENCE_RMS:
        x = x * (10.0 ** (TARGET_RMS_DBFS / 20.0) / rms)
    power = power_spectrogram(x)
    mel_power = power @ mel_filterbank().T
    log_mel = _log_mel(power, mel_power)
    coeffs = log_mel @ _dct_matrix()
    deltas = np.diff(coeffs, axis=0)
    flux = np.sqrt(np.mean(np.diff(log_mel, axis=0) ** 2, axis=1))

    band = power[:, _flatness_bins()] + AMIN
    log_band = np.log(band)
    flatness_db = 10.0 * (log_band.mean(axis=1) - np.log(band.mean(axis=1))) / np.log(10.0)
    level_db = 10.0 * np.log10(power.sum(axis=1) + AMIN)
    low, high = _percentiles(level_db, (5.0, 95.0))

    out = np.empty(N_FEATURES, dtype=np.float32)
    out[0:N_MFCC] = coeffs.mean(axis=0)
    out[N_MFCC:2 * N_MFCC] = coeffs.std(axis=0)
    out[2 * N_MFCC:2 * N_MFCC + N_DELTA] = deltas[:, :N_DELTA].std(axis=0)
    tail = 2 * N_MFCC + N_DELTA
    out[tail] = flatness_db.mean()
    out[tail + 1] = flatness_db.std()
    out[tail + 2] = level_db.std()
    out[tail + 3] = high - low
    out[tail + 4] = flux.mean()
    out[tail + 5] = flux.std()
    out[tail + 6] = _percentiles(flux, (90.0,))[0]
    _sound_features(power, mel_power, log_mel, out[tail + 7:])
    return out


def _sound_features(power: np.ndarray, mel_power: np.ndarray, log_mel: np.ndarray, out: np.ndarray) -> None:
    """Features of what the sound does over time, not of the microphone: every one is a
    difference of dB values within a band or a frame, so gain and a fixed EQ cancel out."""
    n_bands, n_mod = len(MOD_ACOUSTIC_BANDS_HZ), len(MOD_BANDS_HZ)
    # Modulation spectrum of each band's dB envelope (mean removed): how deep it swells at
    # each modulation rate, in dB re 1 dB^2.
    envelope = 10.0 * np.log10(mel_power @ _band_matrix() + AMIN)
    envelope = envelope - envelope.mean(axis=0)
    n_frames = min(envelope.shape[0], MOD_NFFT)
    spectrum = np.fft.rfft(envelope[:n_frames], n=MOD_NFFT, axis=0)
    mod_power = (spectrum.real ** 2 + spectrum.imag ** 2) / n_frames
    k = 0
    for b in range(n_bands):
        for bins in _modulation_bins():
            out[k] = 10.0 * np.log10(mod_power[bins, b].mean() + 1e-6)
            k += 1
    # Comodulation: mean correlation between the band envelopes (one source swelling or
    # striking across the spectrum vs. many independent talkers).
    sd = envelope.std(axis=0)
    if np.all(sd > 1e-6):
        corr = np.corrcoef(envelope.T)
        out[k] = (corr.sum() - n_bands) / (n_bands * (n_bands - 1))
    else:
        out[k] = 0.0
    k += 1
    # Onsets: frames whose positive spectral flux stands ONSET_THRESHOLD_DB above the median
    # and is a local maximum; their rate (per second) and how strong they are.
    rise = np.maximum(np.diff(log_mel, axis=0), 0.0).mean(axis=1)
    base = _percentiles(rise, (50.0,))[0]
    peaks = (rise[1:-1] > rise[:-2]) & (rise[1:-1] >= rise[2:]) & (rise[1:-1] > base + ONSET_THRESHOLD_DB)
    out[k] = np.count_nonzero(peaks) / (rise.size * HOP_LENGTH / SAMPLE_RATE)
    out[k + 1] = float(np.max(rise) - base)
    k += 2
    # Tonality: spectral crest (strongest bin over the frame's mean, dB) and how often the
    # strongest bin stays where it mostly is (a steady tone or hum: near 1; noise: near 0).
    band = power[:, _flatness_bins()] + AMIN
    crest_db = 10.0 * np.log10(band.max(axis=1) / band.mean(axis=1))
    out[k] = crest_db.mean()
    out[k + 1] = crest_db.std()
    strongest = band.argmax(axis=1)
    mode = np.bincount(strongest).argmax()
    out[k + 2] = np.count_nonzero(np.abs(strongest - mode) <= 1) / strongest.size
