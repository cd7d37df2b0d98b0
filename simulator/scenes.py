"""Noise scenes: reading WAV files strictly, and seeded generators for every noise type.

`load_scene` reads any WAV/FLAC/OGG soundfile understands (16/24/32-bit PCM or float, any
rate, any channel count), keeps the first channel, resamples to the plant rate and refuses
files that would make a meaningless simulation (empty, corrupt, NaN-laden, too short).

`generate_scene` makes deterministic examples of the six classes the device recognises plus
a tonal engine hum. They are plausible, not recordings: each is built from the mechanisms
that give the real noise its character (documented per function), so the controller and
the classifier can be exercised without shipping audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from device.contract.errors import UserError

# scipy.signal is imported inside the functions that use it: importing it costs seconds, and
# the command line imports this module for every command (the scene types are its choices).

MIN_SCENE_SECONDS = 0.5
MAX_STUFFED_UP = 4    # `resample_poly` zero-stuffs up to this factor, else scipy's polyphase filter
SCENE_TYPES = ("white", "pink", "traffic", "office", "construction", "cafe", "engine_hum")


@dataclass(frozen=True)
class Scene:
    samples: np.ndarray          # float64 mono at `sample_rate`
    sample_rate: int
    source: str
    source_rate: int
    channels: int                # channels in the file; only the first is used
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return x
    ratio = Fraction(to_rate, from_rate).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator)


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly(x, up, down) with its default Kaiser (beta 5) filter and zero
    padding: the same filter and alignment, by one FFT convolution of the zero-stuffed input
    (written here so that simulating a scene at another rate, such as the bundled 16 kHz ones
    at 48 kHz, does not import scipy.signal). Zero-stuffing costs `up` times the input in
    memory, so ratios with a larger `up` (44.1 -> 48 kHz is 160/147) are left to scipy's
    polyphase filter."""
    x = np.asarray(x, dtype=np.float64)
    common = math.gcd(up, down)
    up, down = up // common, down // common
    if up == down:
        return x.copy()
    if up > MAX_STUFFED_UP:
        import scipy.signal

        return scipy.signal.resample_poly(x, up, down)
    from device.core.dsp.lsfir import fft_convolve
    from device.core.features import kaiser_lowpass

    n_in = x.size
    n_out = -(-n_in * up // down)
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = kaiser_lowpass(2 * half_len + 1, 1.0 / max_rate, 5.0) * up
    # Leading zeros put the output samples on the filter's centre, as scipy's do.
    pre_pad = down - half_len % down
    h = np.concatenate([np.zeros(pre_pad), h])
    first = (half_len + pre_pad) // down
    stuffed = np.zeros(n_in * up)
    stuffed[::up] = x
    y = fft_convolve(stuffed, h)[::down]
    out = np.zeros(n_out)
    available = y[first:first + n_out]
    out[:available.size] = available
    return out


def check_audio_path(path: Path, what: str = "audio file") -> None:
    """UserError unless `path` is a non-empty file."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")


def read_mono(path: str | Path, what: str = "audio file"):
    """The first channel of an audio file as float64, its rate and its soundfile info; a
    UserError naming the file when it is missing, unreadable, empty or holds NaN/Inf."""
    import soundfile

    path = Path(path)
    check_audio_path(path, what)
    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as exc:
        reason = str(exc).split(":")[-1].strip() or exc.__class__.__name__
        raise UserError(f"{path}: not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: audio file has no samples")
    mono = data[:, 0]
    if not np.all(np.isfinite(mono)):
        bad = int(np.count_nonzero(~np.isfinite(mono)))
        raise UserError(f"{path}: {bad} samples are NaN or infinite")
    return mono, int(rate), info


def load_scene(path: str | Path, sample_rate: int) -> Scene:
    """Read a scene file as float64 mono at `sample_rate`, or raise UserError saying why not."""
    path = Path(path)
    mono, rate, info = read_mono(path, "scene file")
    if mono.size / rate < MIN_SCENE_SECONDS:
        raise UserError(f"{path}: scene is {mono.size / rate:.3f} s long; at least {MIN_SCENE_SECONDS} s is needed")
    if not np.any(mono):
        raise UserError(f"{path}: scene is digital silence; there is nothing to cancel")
    return Scene(
        samples=resample(mono, rate, sample_rate),
        sample_rate=sample_rate,
        source=str(path),
        source_rate=int(rate),
        channels=int(info.channels),
        subtype=str(info.subtype),
    )


class SceneStream:
    """A scene read in chunks: checked once in a streaming pass (readable, not empty, no NaN,
    long enough, not silence) when opened, then `chunks()` yields float64 mono at the plant
    rate any number of times, in pieces of a fixed length, without holding the file in memory.
    Resampling runs on overlapping segments, so the chunks join up to what `resample` gives
    on the whole file (the polyphase filter sees the same neighbours)."""

    READ_FRAMES = 1 << 16

    def __init__(self, path: str | Path, sample_rate: int, channel: int = 0):
        """`channel`: which channel of the file this stream reads (a two-ear plant reads one per ear)."""
        import soundfile

        path = Path(path)
        check_audio_path(path, "scene file")
        self.path = path
        self.sample_rate = sample_rate
        self.channel = 0
        try:
            info = soundfile.info(str(path))
            if not 0 <= channel < info.channels:
                raise UserError(f"{path}: has {info.channels} channels, channel {channel} was asked for")
            self.channel = channel
            frames = 0
            nonzero = False
            bad = 0
            for block in self._blocks():
                frames += block.size
                finite = np.isfinite(block)
                if not finite.all():
                    bad += int(np.count_nonzero(~finite))
                nonzero = nonzero or bool(np.any(block))
        except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as exc:
            reason = str(exc).split(":")[-1].strip() or exc.__class__.__name__
            raise UserError(f"{path}: not a readable audio file ({reason})") from None
        rate = int(info.samplerate)
        if frames == 0:
            raise UserError(f"{path}: audio file has no samples")
        if bad:
            raise UserError(f"{path}: {bad} samples are NaN or infinite")
        if frames / rate < MIN_SCENE_SECONDS:
            raise UserError(f"{path}: scene is {frames / rate:.3f} s long; at least {MIN_SCENE_SECONDS} s is needed")
        if not nonzero:
            raise UserError(f"{path}: scene is digital silence; there is nothing to cancel")
        self.source_rate = rate
        self.source_frames = frames
        self.channels = int(info.channels)
        self.subtype = str(info.subtype)
        ratio = Fraction(sample_rate, rate).limit_denominator(1000) if rate != sample_rate else Fraction(1)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.samples = -(-frames * self.up // self.down)  # what resample_poly returns for the whole file

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate

    def _blocks(self, frames: int | None = None):
        import soundfile

        with soundfile.SoundFile(str(self.path)) as handle:
            for block in handle.blocks(blocksize=frames or self.READ_FRAMES, dtype="float64", always_2d=True):
                yield block[:, self.channel].copy()

    def _resampled(self):
        """Plant-rate pieces of arbitrary length, in order."""
        if self.up == self.down:
            yield from self._blocks()
            return
        up, down = self.up, self.down
        # resample_poly's filter reaches 10*max(up, down) upsampled samples either side.
        pad = -(-(10 * max(up, down) // up + 2) // down) * down
        step = max(down, self.READ_FRAMES // down * down)
        history = np.zeros(pad)          # input before the segment (zeros before the start)
        pending = np.zeros(0)            # input not resampled yet
        produced = 0
        done_input = 0                   # input samples whose outputs have been emitted
        source = self._blocks(step)
        exhausted = False
        while True:
            while not exhausted and pending.size < step + pad:
                block = next(source, None)
                if block is None:
                    exhausted = True
                else:
                    pending = np.concatenate([pending, block])
            if exhausted:
                take = pending.size
                if take == 0:
                    break
                right = np.zeros(pad)
                body = pending
            else:
                take = step
                body = pending[:step]
                right = pending[step:step + pad]
            segment = np.concatenate([history, body, right])
            y = resample_poly(segment, up, down)
            first = pad * up // down
            if exhausted:
                count = self.samples - produced
            else:
                count = take * up // down
            yield y[first:first + count]
            produced += count
            done_input += take
            history = np.concatenate([history, body])[-pad:]
            pending = pending[take:]
            if exhausted:
                break

    def head(self, samples: int) -> np.ndarray:
        """The first `samples` samples at the plant rate (fewer if the scene is shorter)."""
        if samples <= 0:
            return np.zeros(0)
        parts, count = [], 0
        for piece in self._resampled():
            parts.append(piece[:samples - count])
            count += parts[-1].size
            if count >= samples:
                break
        return np.concatenate(parts)

    def chunks(self, length: int):
        """Plant-rate float64 mono in pieces of exactly `length` samples (the last may be shorter)."""
        buffer = np.empty(length)
        filled = 0
        for piece in self._resampled():
            while piece.size:
                take = min(length - filled, piece.size)
                buffer[filled:filled + take] = piece[:take]
                filled += take
                piece = piece[take:]
                if filled == length:
                    yield buffer.copy()
                    filled = 0
        if filled:
            yield buffer[:filled].copy()


# -- generators ------------------------------------------------------------------------------

def _normalize(x: np.ndarray, rms_dbfs: float) -> np.ndarray:
    return x * (10.0 ** (rms_dbfs / 20.0) / (np.sqrt(np.mean(x * x)) + 1e-30))


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f power spectrum by shaping white noise in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(f), n)


def _band(rng: np.random.Generator, n: int, fs: int, low: float, high: float, order: int = 4) -> np.ndarray:
    import scipy.signal
    sos = scipy.signal.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    return scipy.signal.sosfilt(sos, rng.standard_normal(n))


def _envelope(rng: np.random.Generator, n: int, fs: int, rate_hz: float, depth: float) -> np.ndarray:
    """Slow random amplitude modulation (syllables, passing vehicles)."""
    import scipy.signal
    sos = scipy.signal.butter(2, rate_hz, fs=fs, output="sos")
    env = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    env /= np.max(np.abs(env)) + 1e-12
    return np.clip(1.0 + depth * env, 0.0, None)


def _engine(n: int, fs: int, fundamental: float, harmonics: list[float], drift_hz: float, rng) -> np.ndarray:
    """Harmonic series with a slowly drifting fundamental (an engine or fan under load)."""
    import scipy.signal
    wander = np.cumsum(scipy.signal.sosfilt(scipy.signal.butter(1, 0.5, fs=fs, output="sos"), rng.standard_normal(n)))
    wander *= drift_hz / (np.max(np.abs(wander)) + 1e-12)
    phase = 2 * np.pi * np.cumsum(fundamental + wander) / fs
    return sum(a * np.sin((k + 1) * phase + rng.uniform(0, 2 * np.pi)) for k, a in enumerate(harmonics))


def _clicks(rng, n: int, fs: int, rate_hz: float, freq_range: tuple[float, float], decay_ms: float) -> np.ndarray:
    """Short decaying resonances at random times (keys, cutlery, tools)."""
    out = np.zeros(n)
    count = rng.poisson(rate_hz * n / fs)
    length = int(fs * decay_ms * 5e-3)
    t = np.arange(length) / fs
    for start in rng.integers(0, max(1, n - length), size=count):
        f = rng.uniform(*freq_range)
        out[start:start + length] += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t) * np.exp(-t / (decay_ms * 1e-3))
    return out


def generate_scene(kind: str, duration_s: float, sample_rate: int = 48000, seed: int = 0, level_dbfs: float = -20.0) -> np.ndarray:
    """A deterministic example of `kind` (see SCENE_TYPES), float64 mono at `level_dbfs` RMS."""
    import scipy.signal
    if kind not in SCENE_TYPES:
        raise UserError(f"scene type {kind!r}: expected one of {', '.join(SCENE_TYPES)}")
    rng = np.random.default_rng([seed, SCENE_TYPES.index(kind)])
    n = int(round(duration_s * sample_rate))
    fs = sample_rate
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _pink(rng, n)
    elif kind == "traffic":
        # Tyre and engine rumble below a few hundred Hz, swelling as vehicles pass, with
        # the engine orders of the nearest vehicle drifting in pitch.
        rumble = scipy.signal.sosfilt(scipy.signal.butter(2, 400, fs=fs, output="sos"), _pink(rng, n))
        passing = _envelope(rng, n, fs, 0.3, 0.8)
        engine = _engine(n, fs, 35.0, [1.0, 0.6, 0.4, 0.2], 8.0, rng)
        x = _normalize(rumble * passing, 0) + 0.3 * _normalize(engine * passing, 0) + 0.05 * _normalize(rng.standard_normal(n), 0)
    elif kind == "office":
        # Ventilation (fan blade tone + broadband air), keyboard clicks, distant voices.
        hvac = _normalize(_engine(n, fs, 120.0, [1.0, 0.3], 0.5, rng), 0) * 0.3 + _normalize(_band(rng, n, fs, 60, 2000), 0)
        voices = _normalize(_band(rng, n, fs, 200, 3000) * _envelope(rng, n, fs, 4.0, 1.0), 0)
        keys = _normalize(_clicks(rng, n, fs, 6.0, (2000, 5000), 4.0) + 1e-9, 0)
        x = hvac + 0.5 * voices + 0.3 * keys
    elif kind == "construction":
        # A diesel engine with strong orders, a jackhammer hitting ~12 times a second, and
        # grinding broadband noise.
        engine = _normalize(_engine(n, fs, 48.0, [1.0, 0.8, 0.6, 0.5, 0.3, 0.2], 2.0, rng), 0)
        t = np.arange(n) / fs
        hits = (np.sin(2 * np.pi * 12.0 * t) > 0.85).astype(float) * _band(rng, n, fs, 200, 6000)
        grind = _normalize(_band(rng, n, fs, 1000, 7000), 0) * _envelope(rng, n, fs, 1.0, 0.9)
        x = engine + 0.8 * _normalize(hits, 0) + 0.4 * grind
    elif kind == "cafe":
        # Many overlapping voices (babble), clinking crockery, a coffee machine hiss now and then.
        babble = sum(_band(rng, n, fs, 150, 4000) * _envelope(rng, n, fs, 4.0, 1.0) for _ in range(6))
        clinks = _clicks(rng, n, fs, 1.5, (2500, 6000), 40.0)
        hiss = _band(rng, n, fs, 2000, 7000) * (_envelope(rng, n, fs, 0.2, 1.0) > 1.5)
        x = _normalize(babble, 0) + 0.4 * _normalize(clinks + 1e-9, 0) + 0.2 * _normalize(hiss + 1e-9, 0)
    else:  # engine_hum
        # A tonal scene: a machine hum with four harmonics drifting by up to 0.3 Hz, over a faint
        # pink background 40 dB down.
        hum = _normalize(_engine(n, fs, 95.0, [1.0, 0.5, 0.35, 0.2], 0.3, rng), 0)
        x = hum + 0.01 * _normalize(_pink(rng, n), 0)
    # Microphones and their preamps roll off below ~20 Hz; so do recordings.
    x = scipy.signal.sosfilt(scipy.signal.butter(2, 20.0, btype="highpass", fs=fs, output="sos"), x)
    return _normalize(x, level_dbfs)


def write_scene(path: str | Path, samples: np.ndarray, sample_rate: int, format: str | None = None) -> None:
    """16-bit PCM, scaled down if it would clip; `format` ("WAV", "FLAC") or from the extension."""
    import soundfile

    peak = np.max(np.abs(samples))
    if peak >= 1.0:
        samples = samples / peak * 0.99
    soundfile.write(str(path), samples, sample_rate, subtype="PCM_16", format=format)
