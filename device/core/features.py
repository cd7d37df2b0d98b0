"""Audio features of the noise classifier: ONE implementation for training and the device.

`models/train.py` computes its training vectors with `feature_vector`, and the device's
worker calls the same function on the last window of the reference microphone, so training
and serving cannot drift apart. One `np.fft.rfft` of all frames, the log and the DCT in NumPy;
the framing, the mel bands (over each band's non-zero bins) and the window's sixty small
per-frame reductions compiled (`device.core.dsp.window_summary`); every intermediate array in
buffers kept per thread and window length (`FeatureWorkspace`), so a window allocates nothing
large. No librosa or scipy.signal at run time (the test suite compares `mfcc` with librosa's to a
stated tolerance, and `feature_vector` with the NumPy it replaced, `tests/feature_reference.py`).

Frame analysis (all at ``SAMPLE_RATE`` = 16 kHz; the 48 kHz stream is decimated first with
`StreamDecimator`):

=====================  ==================================================================
window                 Hann (periodic), 512 samples = 32 ms
FFT size (n_fft)       512 (31.25 Hz bins)
hop                    256 samples = 16 ms; frames are not centred/padded (61 per 1 s)
power spectrum         |rfft|^2
mel filterbank         64 triangular bands, Slaney mel scale and area normalisation
                       (librosa's defaults), fmin = 20 Hz, fmax = 8000 Hz
log                    10*log10(max(S, 1e-10)), floored at (max over the window - 80 dB)
MFCC                   DCT-II (orthonormal) of the log-mel frames, first 40 coefficients
=====================  ==================================================================

Window summary (`feature_vector`, ``N_FEATURES`` = 149 values, in this order):

* before the analysis the window is scaled to -20 dBFS RMS, so the features describe the
  *kind* of noise and not how loud the microphone or its gain happens to be (the level is
  reported separately by `power_and_peak`); digital silence is left as it is;
* ``mfcc_mean[0:40]``   mean over the frames of each coefficient;
* ``mfcc_std[0:40]``    standard deviation over the frames (how the spectrum moves);
* ``delta_std[0:40]``   standard deviation of the frame-to-frame difference of each
                        coefficient (fast changes: speech syllables, clicks, engine load);
* ``flatness_mean``, ``flatness_std``  spectral flatness (geometric / arithmetic mean of the
                        power spectrum, 50 Hz-7.5 kHz), in dB;
* ``level_std_db``      standard deviation of the frame level in dB (stationarity);
* ``level_range_db``    95th minus 5th percentile of the frame level in dB (impulsiveness);
* ``flux_mean_db``, ``flux_std_db``, ``flux_p90_db``  spectral flux: the RMS over the 64 mel
                        bands of the frame-to-frame change of the log-mel spectrum (dB), its
                        mean, standard deviation and 90th percentile over the window (onsets,
                        clatter and speech change the spectrum fast; machinery and traffic
                        swells slowly);
* ``mod_b{b}_m{m}_db``  (version 3) modulation spectrum: the dB envelope of each of four
                        acoustic bands (20-300, 300-1000, 1000-3000, 3000-8000 Hz), mean
                        removed, and its power in four modulation bands (0.5-2 Hz: traffic
                        swells; 2-6 Hz: syllables of speech babble; 6-12 Hz: tool strokes;
                        12-31 Hz: clicks), in dB re 1 dB^2;
* ``comodulation``      mean correlation between the four band envelopes (one source swelling
                        or striking across the spectrum vs. many independent talkers);
* ``onset_rate_hz``, ``onset_strength_db``  frames whose positive spectral flux is a local
                        maximum ``ONSET_THRESHOLD_DB`` above the window's median, per second
                        (keyboard clicks, footsteps, hammer blows), and the strongest rise;
* ``crest_mean_db``, ``crest_std_db``, ``peak_persistence``  tonality: the strongest bin over
                        the frame's mean power (50 Hz-7.5 kHz, dB), and the fraction of frames
                        whose strongest bin is within one bin of its most common place.

The version-3 groups are differences of dB values within a band or a frame, so the
microphone's gain and a fixed EQ cancel out of them; the MFCC means (the lowest above all)
carry the recording's EQ, which is why `models/train.py` may train without them (the card's
``training.feature_set``) while the device still computes every feature.

`power_and_peak` gives the level and the dominant frequency of a window for the
noise-detection record. `StreamDecimator` turns the 48 kHz microphone stream into the
16 kHz stream the classifier works on, block by block.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from functools import lru_cache

import numpy as np

from device.contract.model_card import FEATURE_VERSION, N_FEATURES
from device.core.dsp.window_summary import frame_summaries, modulation_summary, power_and_mel, windowed_frames

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 512
HOP_LENGTH = 256
N_MELS = 64
N_MFCC = 40
FMIN = 20.0
FMAX = 8000.0
AMIN = 1e-10            # power floor before the log (librosa's amin)
TOP_DB = 80.0           # dynamic range kept below the loudest log-mel value of the window
TARGET_RMS_DBFS = -20.0  # level every window is scaled to before the analysis
SILENCE_RMS = 1e-7       # below this RMS (-140 dBFS) a window is left unscaled
FLATNESS_BAND_HZ = (50.0, 7500.0)
N_DELTA = N_MFCC
# Acoustic bands (Hz) whose dB envelopes give the modulation features, and the modulation
# bands (Hz, of the envelope): slow swells (passing vehicles), syllabic rate (speech babble,
# ~4 Hz), fast (tool strokes, footsteps), very fast (clicks, impulses). The frame rate is
# 62.5 Hz, so the last band ends near its Nyquist.
MOD_ACOUSTIC_BANDS_HZ = ((20.0, 300.0), (300.0, 1000.0), (1000.0, 3000.0), (3000.0, 8000.0))
MOD_BANDS_HZ = ((0.5, 2.0), (2.0, 6.0), (6.0, 12.0), (12.0, 31.0))
MOD_NFFT = 128           # frames of the envelope FFT (2 s = 123 frames, zero-padded)
ONSET_THRESHOLD_DB = 3.0  # positive spectral flux this far above the window's median is an onset

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"mfcc_mean_{i}" for i in range(N_MFCC))
    + tuple(f"mfcc_std_{i}" for i in range(N_MFCC))
    + tuple(f"delta_std_{i}" for i in range(N_DELTA))
    + ("flatness_mean_db", "flatness_std_db", "level_std_db", "level_range_db")
    + ("flux_mean_db", "flux_std_db", "flux_p90_db")
    + tuple(f"mod_b{b}_m{m}_db" for b in range(len(MOD_ACOUSTIC_BANDS_HZ)) for m in range(len(MOD_BANDS_HZ)))
    + ("comodulation",)
    + ("onset_rate_hz", "onset_strength_db")
    + ("crest_mean_db", "crest_std_db", "peak_persistence")
)
if len(FEATURE_NAMES) != N_FEATURES:  # the model card's contract (device.contract.model_card)
    raise ImportError(f"features compute {len(FEATURE_NAMES)} values, the model contract says {N_FEATURES}")
MIN_SAMPLES = WIN_LENGTH + HOP_LENGTH  # at least two frames, so deltas exist


def feature_spec() -> dict:
    """Everything that defines the features, for the model card (and to check a model against)."""
    return {
        "version": FEATURE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "win_length": WIN_LENGTH,
        "hop_length": HOP_LENGTH,
        "window": "hann (periodic)",
        "center": False,
        "n_mels": N_MELS,
        "mel_scale": "slaney",
        "mel_norm": "slaney",
        "fmin": FMIN,
        "fmax": FMAX,
        "power": 2.0,
        "log": f"10*log10(max(S, {AMIN:g})), floored at max - {TOP_DB:g} dB",
        "dct": "type 2, orthonormal",
        "n_mfcc": N_MFCC,
        "level_normalisation_dbfs": TARGET_RMS_DBFS,
        "flatness_band_hz": list(FLATNESS_BAND_HZ),
        "modulation_acoustic_bands_hz": [list(b) for b in MOD_ACOUSTIC_BANDS_HZ],
        "modulation_bands_hz": [list(b) for b in MOD_BANDS_HZ],
        "modulation_nfft": MOD_NFFT,
        "onset_threshold_db": ONSET_THRESHOLD_DB,
        "n_features": N_FEATURES,
        "names": list(FEATURE_NAMES),
    }


# -- mel filterbank (Slaney, as librosa.filters.mel with htk=False, norm="slaney") -------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


@lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney-normalised (constant area per band)."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=4)
def _dct_matrix(n_in: int = N_MELS, n_out: int = N_MFCC) -> np.ndarray:
    """(n_in, n_out) orthonormal DCT-II, so that log_mel_frames @ D == scipy.fft.dct(..., norm='ortho')."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    d = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    d[:, 0] /= np.sqrt(2.0)
    d.setflags(write=False)
    return d


# The device imports no scipy.signal (seconds of start-up and tens of MB on a Pi): the three
# pieces of it used here are written out below; tests check them against scipy.signal.

def hann_periodic(length: int) -> np.ndarray:
    """scipy.signal.get_window("hann", length, fftbins=True): the DFT-even Hann window."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def kaiser_lowpass(numtaps: int, cutoff: float, beta: float) -> np.ndarray:
    """scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta)): windowed-sinc low-pass,
    `cutoff` relative to Nyquist, scaled to unit gain at DC."""
    m = np.arange(numtaps) - (numtaps - 1) / 2.0
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return h / h.sum()


def welch_psd(x: np.ndarray, sample_rate: float, nperseg: int,
              buffers: "_WelchBuffers | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """scipy.signal.welch(x, fs, window="hann", nperseg=nperseg, detrend="constant"): mean of
    the one-sided power spectral densities of half-overlapping Hann-windowed segments.

    With `buffers` (of this segment count and length) the segments and their spectra are
    computed in them, the same values without window-sized temporaries."""
    step = nperseg - nperseg // 2
    count = 1 + (x.size - nperseg) // step
    segments = np.lib.stride_tricks.sliding_window_view(x, nperseg)[::step][:count]
    window = _window(nperseg)
    if buffers is None:
        buffers = _WelchBuffers(count, nperseg)
    centred, spectra, power, squares = buffers.centred, buffers.spectra, buffers.power, buffers.squares
    np.subtract(segments, segments.mean(axis=1, keepdims=True), out=centred)
    centred *= window
    np.fft.rfft(centred, axis=1, out=spectra)
    np.multiply(spectra.real, spectra.real, out=power)
    np.multiply(spectra.imag, spectra.imag, out=squares)
    power += squares
    psd = power.mean(axis=0) / (sample_rate * _window_energy(nperseg))
    psd[1:-1 if nperseg % 2 == 0 else None] *= 2.0
    return np.fft.rfftfreq(nperseg, 1.0 / sample_rate), psd


class _WelchBuffers:
    """The segments and spectra of one `welch_psd` shape."""

    def __init__(self, count: int, nperseg: int):
        self.centred = np.empty((count, nperseg))
        self.spectra = np.empty((count, nperseg // 2 + 1), dtype=np.complex128)
        self.power = np.empty((count, nperseg // 2 + 1))
        self.squares = np.empty((count, nperseg // 2 + 1))


@lru_cache(maxsize=8)
def _window(length: int = WIN_LENGTH) -> np.ndarray:
    w = hann_periodic(length)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def _window_energy(length: int) -> float:
    window = _window(length)
    return float(np.dot(window, window))


@lru_cache(maxsize=4)
def _flatness_bins(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> slice:
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, hi = np.searchsorted(freqs, FLATNESS_BAND_HZ)
    return slice(int(lo), int(hi))


@lru_cache(maxsize=4)
def _band_matrix() -> np.ndarray:
    """(n_mels, n_bands) 0/1 matrix summing mel bands into the modulation's acoustic bands
    (a mel band belongs to the acoustic band holding its centre)."""
    centres = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))[1:-1]
    m = np.zeros((N_MELS, len(MOD_ACOUSTIC_BANDS_HZ)))
    for b, (lo, hi) in enumerate(MOD_ACOUSTIC_BANDS_HZ):
        m[(centres >= lo) & (centres < hi), b] = 1.0
    m.setflags(write=False)
    return m


@lru_cache(maxsize=4)
def _modulation_bins() -> tuple[slice, ...]:
    freqs = np.fft.rfftfreq(MOD_NFFT, HOP_LENGTH / SAMPLE_RATE)
    return tuple(slice(int(np.searchsorted(freqs, lo)), int(np.searchsorted(freqs, hi))) for lo, hi in MOD_BANDS_HZ)


def _frames(audio: np.ndarray) -> np.ndarray:
    """(n_frames, WIN_LENGTH) view of consecutive frames, hop HOP_LENGTH, no padding."""
    n_frames = 1 + (audio.size - WIN_LENGTH) // HOP_LENGTH
    return np.lib.stride_tricks.as_strided(
        audio, shape=(n_frames, WIN_LENGTH), strides=(audio.strides[0] * HOP_LENGTH, audio.strides[0]),
        writeable=False)


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(n_frames, N_FFT // 2 + 1) power spectra of Hann-windowed frames of 16 kHz audio."""
    audio = np.ascontiguousarray(audio, dtype=np.float64)
    if audio.ndim != 1 or audio.size < WIN_LENGTH:
        raise ValueError(f"expected mono audio of at least {WIN_LENGTH} samples, got shape {audio.shape}")
    spectrum = np.fft.rfft(_frames(audio) * _window(), n=N_FFT, axis=1)
    return spectrum.real ** 2 + spectrum.imag ** 2


def _log_mel(power: np.ndarray, mel_power: np.ndarray | None = None) -> np.ndarray:
    if mel_power is None:
        mel_power = power @ mel_filterbank().T
    log_mel = 10.0 * np.log10(np.maximum(mel_power, AMIN))
    return np.maximum(log_mel, log_mel.max() - TOP_DB)


def mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_frames, 40) MFCC of mono 16 kHz audio, as librosa.feature.mfcc with the parameters above.

    Same as ``librosa.feature.mfcc(y=audio, sr=16000, n_mfcc=40, n_fft=512, hop_length=256,
    center=False, n_mels=64, fmin=20, fmax=8000).T`` (librosa returns (40, n_frames)).
    """
    _check_rate(sample_rate)
    return _log_mel(power_spectrogram(audio)) @ _dct_matrix()


def _check_rate(sample_rate: int) -> None:
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError(f"features are defined at {SAMPLE_RATE} Hz, got {sample_rate} Hz: decimate/resample first")


def feature_vector(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, out: np.ndarray | None = None) -> np.ndarray:
    """The (N_FEATURES,) float32 summary of one window of mono 16 kHz audio (see the module doc).

    Written into `out` (float32, N_FEATURES values) when given, else into a new array. The
    intermediate spectra live in a buffer set of this thread kept for the window's length
    (`FeatureWorkspace`), so a stream of equal windows allocates nothing large."""
    _check_rate(sample_rate)
    x = np.ascontiguousarray(np.asarray(audio, dtype=np.float64).reshape(-1))
    if x.size < MIN_SAMPLES:
        raise ValueError(f"a window needs at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz, got {x.size}")
    if out is None:
        out = np.empty(N_FEATURES, dtype=np.float32)
    _workspace(x.size).compute(x, out)
    return out


class FeatureWorkspace:
    """The buffers of `feature_vector` for windows of one length, allocated once.

    Per window: the frames are scaled, cut and windowed into one array by a compiled loop, one
    `np.fft.rfft` transforms all of them into a preallocated spectrum, a compiled loop takes the
    power and the mel bands over each band's non-zero bins (`_mel_bands`), the log and the DCT
    run in place, then the compiled summaries and modulation features. The values are those of
    the NumPy expressions in `power_spectrogram`, `_log_mel` and `mfcc` up to the order of
    additions in the mel bands, and of the modulation FFT up to that of its direct DFT
    (tests/test_features.py compares the vector with the NumPy it replaced). Not thread-safe:
    `feature_vector` keeps one per thread."""

    def __init__(self, n_samples: int):
        if n_samples < MIN_SAMPLES:
            raise ValueError(f"a window needs at least {MIN_SAMPLES} samples at {SAMPLE_RATE} Hz, got {n_samples}")
        self.n_samples = int(n_samples)
        n_frames = 1 + (self.n_samples - WIN_LENGTH) // HOP_LENGTH
        n_bins = N_FFT // 2 + 1
        self.n_frames = n_frames
        self._squares = np.empty(self.n_samples)
        self._clean = np.empty(self.n_samples)
        self._frames = np.empty((n_frames, N_FFT))
        self._spectrum = np.empty((n_frames, n_bins), dtype=np.complex128)
        self._power = np.empty((n_frames, n_bins))
        self._mel_power = np.empty((n_frames, N_MELS))
        self._log_mel = np.empty((n_frames, N_MELS))
        self._coeffs = np.empty((n_frames, N_MFCC))
        self._envelope = np.empty((n_frames, len(MOD_ACOUSTIC_BANDS_HZ)))
        self._band_first, self._band_weights, self._band_width = _mel_bands()
        self._dct = _dct_matrix()
        self._window = _window()
        bins = _flatness_bins()
        self._flatness_lo, self._flatness_hi = bins.start, bins.stop

    # The stages of `compute`, in order (bench/classifier.py times each).
    STAGES = ("frames", "fft", "mel", "log_mel_dct", "summaries", "modulation")

    def compute(self, x: np.ndarray, out: np.ndarray) -> None:
        """The feature vector of `x` (float64, `n_samples` values) into `out` (float32, N_FEATURES)."""
        if x.size != self.n_samples or out.shape != (N_FEATURES,) or out.dtype != np.float32:
            raise ValueError(f"expected {self.n_samples} samples and a float32 ({N_FEATURES},) output")
        self.frames(x)
        self.fft()
        self.mel()
        self.log_mel_dct()
        self.summaries(out)
        self.modulation(out)

    def frames(self, x: np.ndarray) -> None:
        """Scale the window to TARGET_RMS_DBFS (NaN and infinities as 0) and cut it into windowed frames."""
        squares = self._squares
        np.multiply(x, x, out=squares)
        mean_square = float(squares.mean())
        if not np.isfinite(mean_square) and not np.all(np.isfinite(x)):
            np.copyto(self._clean, x)
            x = self._clean
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            np.multiply(x, x, out=squares)
            mean_square = float(squares.mean())
        rms = float(np.sqrt(mean_square))
        scale = 10.0 ** (TARGET_RMS_DBFS / 20.0) / rms if rms > SILENCE_RMS else 1.0
        windowed_frames(x, scale, self._window, HOP_LENGTH, self._frames)

    def fft(self) -> None:
        np.fft.rfft(self._frames, n=N_FFT, axis=1, out=self._spectrum)

    def mel(self) -> None:
        power_and_mel(self._spectrum, self._band_first, self._band_weights, self._band_width,
                      self._power, self._mel_power)

    def log_mel_dct(self) -> None:
        """10*log10(max(S, amin)) floored at the window's maximum - TOP_DB (as `_log_mel`), then the DCT."""
        log_mel = self._log_mel
        np.maximum(self._mel_power, AMIN, out=log_mel)
        np.log10(log_mel, out=log_mel)
        log_mel *= 10.0
        np.maximum(log_mel, log_mel.max() - TOP_DB, out=log_mel)
        np.matmul(log_mel, self._dct, out=self._coeffs)

    def summaries(self, out: np.ndarray) -> None:
        """The MFCC statistics, flatness, level and flux, and (after the modulation features) the
        onsets and tonality: sixty small reductions over frames, compiled into one pass."""
        tail = 2 * N_MFCC + N_DELTA
        frame_summaries(self._power, self._log_mel, self._coeffs, self._flatness_lo, self._flatness_hi, AMIN,
                        N_DELTA, HOP_LENGTH, SAMPLE_RATE, ONSET_THRESHOLD_DB, out[:tail + 7],
                        out[tail + 7 + N_MODULATION + 1:])

    def modulation(self, out: np.ndarray) -> None:
        tail = 2 * N_MFCC + N_DELTA
        first, count, cos_table, sin_table, bin_lo, bin_hi = _modulation_tables()
        modulation_summary(self._mel_power, first, count, AMIN, cos_table, sin_table, bin_lo, bin_hi,
                           self._envelope, out[tail + 7:tail + 7 + N_MODULATION + 1])


_workspaces = threading.local()
_WORKSPACES_KEPT = 4  # window lengths whose buffers a thread keeps (the device uses one)


def _workspace(n_samples: int) -> FeatureWorkspace:
    kept = getattr(_workspaces, "by_length", None)
    if kept is None:
        kept = _workspaces.by_length = {}
    workspace = kept.pop(n_samples, None)
    if workspace is None:
        workspace = FeatureWorkspace(n_samples)
        while len(kept) >= _WORKSPACES_KEPT:
            kept.pop(next(iter(kept)))
    kept[n_samples] = workspace  # most recently used last
    return workspace


@lru_cache(maxsize=4)
def _mel_bands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mel filterbank as (first bin, weights, width) per band: each band's non-zero span."""
    weights = mel_filterbank()
    n_bands = weights.shape[0]
    first = np.zeros(n_bands, dtype=np.int64)
    width = np.zeros(n_bands, dtype=np.int64)
    for m in range(n_bands):
        nonzero = np.flatnonzero(weights[m])
        if nonzero.size:
            first[m], width[m] = nonzero[0], nonzero[-1] - nonzero[0] + 1
    span = np.zeros((n_bands, max(1, int(width.max()))))
    for m in range(n_bands):
        span[m, :width[m]] = weights[m, first[m]:first[m] + width[m]]
    for array in (first, width, span):
        array.setflags(write=False)
    return first, span, width


N_MODULATION = len(MOD_ACOUSTIC_BANDS_HZ) * len(MOD_BANDS_HZ)


@lru_cache(maxsize=1)
def _modulation_tables() -> tuple[np.ndarray, ...]:
    """`_band_matrix` as (first mel band, count) per acoustic band, and the cos/sin rows of the
    envelope's MOD_NFFT-point DFT for the bins `_modulation_bins` uses (as index bounds)."""
    members = _band_matrix()
    first = np.array([int(np.flatnonzero(members[:, b])[0]) for b in range(members.shape[1])])
    count = members.sum(axis=0).astype(np.int64)
    if not all(np.array_equal(np.flatnonzero(members[:, b]), np.arange(first[b], first[b] + count[b]))
               for b in range(members.shape[1])):
        raise ImportError("an acoustic band is not a contiguous run of mel bands")
    bins = _modulation_bins()
    bin_lo = np.array([b.start for b in bins], dtype=np.int64)
    bin_hi = np.array([b.stop for b in bins], dtype=np.int64)
    angle = 2.0 * np.pi * np.outer(np.arange(int(bin_hi.max())), np.arange(MOD_NFFT)) / MOD_NFFT
    tables = (first.astype(np.int64), count, np.cos(angle), np.sin(angle), bin_lo, bin_hi)
    for table in tables:
        table.setflags(write=False)
    return tables


def warm_up() -> None:
    """Compile the worker's feature and streaming-filter loops (or load them from numba's cache)
    now, before the stream opens. The runtime hands numba's start-up-only pages back just before
    it does (device/rig/memory.py); a loop first called after that, on the first classification
    window seconds later, would page LLVM in again and keep it resident."""
    from device.core.dsp.streaming import warm_up as warm_up_streaming

    warm_up_streaming()
    feature_vector(1e-3 * np.sin(np.arange(MIN_SAMPLES) * 0.3))


def power_and_peak(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(avg_power_db, peak_frequency_hz) of a window, for the noise-detection record.

    avg_power_db is the mean square in dB relative to full scale (a ±1 square wave is 0 dBFS,
    a full-scale sine -3 dBFS), floored at -200 dBFS for digital silence. peak_frequency_hz is
    the centre of the strongest bin of the Welch power spectrum (Hann, 1024-sample segments at
    16 kHz: 15.6 Hz resolution, refined by parabolic interpolation), DC excluded; 0.0 for
    silence.
    """
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return -200.0, 0.0
    nperseg = min(x.size, max(256, int(2 ** round(np.log2(sample_rate / 16)))))
    # The worker asks this of every window, all of one length: its buffers are kept (per thread).
    buffers = _peak_buffers(x.size, nperseg)
    np.multiply(x, x, out=buffers.samples)
    mean_square = float(buffers.samples.mean())
    power_db = 10.0 * np.log10(max(mean_square, 1e-20))
    if mean_square <= 1e-20 or x.size < 4:
        return power_db, 0.0
    freqs, psd = welch_psd(x, sample_rate, nperseg, buffers.welch)
    psd[0] = 0.0
    k = int(np.argmax(psd))
    peak = float(freqs[k])
    if 0 < k < psd.size - 1:
        a, b, c = np.log(psd[k - 1: k + 2] + 1e-30)
        denom = a - 2 * b + c
        if denom < 0:
            peak += float(0.5 * (a - c) / denom) * float(freqs[1] - freqs[0])
    return power_db, peak


class _PeakBuffers:
    def __init__(self, n_samples: int, nperseg: int):
        self.samples = np.empty(n_samples)
        step = nperseg - nperseg // 2
        self.welch = _WelchBuffers(1 + (n_samples - nperseg) // step, nperseg) if n_samples >= 4 else None


def _peak_buffers(n_samples: int, nperseg: int) -> _PeakBuffers:
    kept = getattr(_workspaces, "peak", None)
    if kept is None or kept[0] != (n_samples, nperseg):
        kept = _workspaces.peak = ((n_samples, nperseg), _PeakBuffers(n_samples, nperseg))
    return kept[1]


class StreamDecimator:
    """Stateful anti-aliased sample-rate conversion of a block stream (48 kHz -> 16 kHz).

    Polyphase FIR with the same filter as ``scipy.signal.resample_poly(x, up, down)``
    (Kaiser-windowed sinc, beta 5, 10 zero crossings each side) but causal and streaming:
    blocks of any size (the runtime feeds 32-sample blocks, which are not a multiple of the
    factor 3) give exactly the output a single call on the whole stream would, delayed by the
    filter's half length (10 output samples = 0.625 ms at 48 -> 16 kHz). The history buffer is
    allocated once and grows only if a block longer than any before it arrives.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        ratio = Fraction(int(out_rate), int(in_rate))
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        if self.up == self.down:
            self._taps = None
            return
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = kaiser_lowpass(2 * half_len + 1, 1.0 / max_rate, 5.0) * self.up
        # Polyphase split: phase p holds h[p], h[p + up], ...; taps per phase J.
        self._n_per_phase = -(-h.size // self.up)
        padded = np.zeros(self._n_per_phase * self.up)
        padded[:h.size] = h
        self._phases = np.ascontiguousarray(padded.reshape(self._n_per_phase, self.up).T)  # (up, J)
        self._taps = h
        self.delay_out = half_len // self.down  # output samples of group delay when half_len % down == 0
        self._hist = self._n_per_phase - 1
        # Compiled (dsp/streaming.py), imported here so that training and `classify`, which
        # never decimate a stream, do not load numba.
        from device.core.dsp.streaming import polyphase_outputs

        self._outputs = polyphase_outputs
        self._buffer = np.zeros(self._hist + 1024)
        self._t = 0  # upsampled-time index of the next output relative to the first buffered new sample

    def reset(self) -> None:
        if self._taps is not None:
            self._buffer[:] = 0.0
            self._t = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed the next block of input samples; returns the output samples it completes (float64)."""
        x = np.asarray(block, dtype=np.float64).reshape(-1)
        if self._taps is None:
            return x.copy()
        n = x.size
        hist = self._hist
        if hist + n > self._buffer.size:
            grown = np.zeros(hist + n)
            grown[:hist] = self._buffer[:hist]
            self._buffer = grown
        buf = self._buffer
        buf[hist:hist + n] = x
        # Outputs at upsampled times t = self._t + k*down while t // up < n (input index in this block).
        t_end = n * self.up
        if self._t >= t_end:
            count = 0
        else:
            count = -(-(t_end - self._t) // self.down)
        out = np.empty(count)
        if count:
            self._outputs(buf, self._phases, self._t, self.up, self.down, hist, out)
        self._t += count * self.down - t_end
        # Keep the last `hist` input samples for the next block.
        if hist:
            buf[:hist] = buf[n:n + hist]
        return out
