"""Warning-sound detector: sirens, smoke and CO alarms, reversing beepers, car horns.

Runs on the worker thread on the reference microphone, never in the audio callback. Every
warning sound a wearer must hear is built to be heard over noise: a loud narrowband tone or a
harmonic complex that stands far above the spectrum around it, held or swept in a regular
way. The detector looks for exactly that, on short frames, with no trained model:

* the reference is decimated to 16 kHz (`StreamDecimator`) and cut into 32 ms Hann frames
  every 16 ms (512-point FFT, 31.25 Hz bins);
* per frame, the strongest spectral peak between 300 Hz and 4 kHz, its frequency (parabolic
  interpolation on the log spectrum), its **prominence** (peak power over the median power of
  the 24 bins around it, excluding the peak's own lobe, in dB) and its level (dBFS);
* a frame is *tonal* when its prominence reaches `alarms.prominence_db` and its level
  `alarms.min_level_dbfs`; a **track** is a run of tonal frames whose peak moves smoothly
  (at most 12% per frame) or jumps by a musical interval (ratio 1.15-1.7, a hi-lo siren);
* a track becomes a detection after `alarms.min_duration_ms` of it, and its kind is read from
  what it does: **frequency modulation** (range of the peak over the track above 4%: a
  wail or yelp siren, or a hi-lo jump) gives `siren`; a steady peak at 2.5-3.7 kHz gives
  `smoke_alarm` (ISO 8201 temporal-three near 3 kHz); a steady 480-570 Hz fundamental with
  odd harmonics only (a square wave) gives `low_frequency_alarm` (the 520 Hz variant for
  sleepers); a steady harmonic complex (four or more partials of one fundamental in
  300-650 Hz, and nothing half-way between them, which rules out engines and saws whose real
  fundamental is lower) gives `car_horn`; a steady pure tone at 850-1700 Hz gives
  `reversing_beeper`; a steady tone at 400-850 Hz is the first half-cycle of a hi-lo siren.
  Any other tone (below 400 Hz: hum and engine orders; or not in these bands) is not a
  warning sound;
* none of that counts without a **sudden onset**: the window's tone must stand
  `alarms.onset_rise_db` above what its frequency (or its own track, within a sweep step) held
  50-130 ms before the window (`alarms.steady_siren_rise_db` and `alarms.swept_siren_rise_db`
  for the two siren readings, which a saw's whine imitates best); a machine's whine was there
  before, or sweeps on from where it was;
* where the noise already holds partials at the alarm's pitch (babble, traffic) that rise is a
  few dB, so a slower **sustained-tone decision** (`alarms.sustained_ms`) asks for other
  evidence instead: a band-limited SNR held over the whole window (the tone's prominence over
  its neighbouring bins, not its broadband level), a straight line in frequency, a tone absent
  from its bins before and louder than the peaks that were there (`_sustained_kind`);
* a car horn and the 520 Hz alarm are also found by their **harmonic comb**, which does not
  rest on the strongest peak (twin horns trade it between their partials): the fundamental
  whose partials 1..6 (or odd partials 1, 3, 5) stand, averaged over the window, far above
  the spectrum around each, new and risen (`_comb_alarm`);
* a beeper's tone must have been absent before it, a fixed-pitch tone must not glide, and a
  tone that decays within its window is a struck resonance;
* a steady tone must hold its **level**: a warning tone is generated at a fixed amplitude, so
  its level moves only by the noise in its bin, whose spread follows from its band-limited SNR;
  a voice's partial swells and a machine's beats (`alarms.level_wobble_db`, `level_wobble_db`);
* the onset is the **track's** start: a window that slid a frame or two past it must show its
  rise over what was there before the track began too, not only before the window;
* the **cadence** raises the confidence after the fact: on/off pulses of 0.3-0.8 s (the T3
  pattern and beepers) or a frequency that keeps moving;
* the event ends (`end_s`, the last tonal frame) when the tone has been absent for
  `alarms.release_ms`, longer than the 1.5 s pause of the temporal-three pattern, so one
  alarm is one event.

Cost: one 512-point real FFT, a median over 24 bins, a running median over the 125 bins up
to 3.9 kHz and the comb's gather of 176 x 6 bins, and a few dozen comparisons per 16 ms frame,
plus the decimator: `python bench/alarms.py --cost` measures it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from device.core.features import SAMPLE_RATE, StreamDecimator

FRAME = 512
HOP = 256
BIN_HZ = SAMPLE_RATE / FRAME
SEARCH_HZ = (300.0, 4000.0)
FLOOR_HALF_WIDTH = 12       # bins each side of the peak whose median is the local floor
LOBE_HALF_WIDTH = 2         # bins each side of the peak that belong to its own window lobe
STEADY_TOLERANCE = 0.015   # a steady tone stays within 1.5% of its median frequency
SWEEP_STEP = 0.25           # largest frame-to-frame change of a swept tone (a fast yelp)
SWEEP_SMOOTHNESS = 0.6      # median |second difference| over median |step| of a swept tone
JUMP_RATIOS = (1.15, 1.7)   # frame-to-frame jump of a hi-lo siren
MODULATED_RANGE = 1.04      # max / min peak frequency over the track above which it is swept
# Fundamental of a car horn's harmonic complex: 300-500 Hz for the horns in use, with a margin
# above for twin horns; a voice or a saw's whine whose partials sit on a lower fundamental is not one.
HORN_F0_HZ = (300.0, 650.0)
# Median frequency of a swept siren (wail, yelp, hi-lo): they sweep within about 500-1800 Hz.
SIREN_HZ = (450.0, 2000.0)
HARMONIC_DB = 6.0           # a partial counts when it stands this far above the local floor
# Frames (48-128 ms) before a track's first frame whose power at the track's first frequency is
# its "before": a frame this close to the track's start may already hold the onset.
ONSET_LOOKBACK = (3, 8)
# A sustained tone's frequency, over the window, follows a straight line (steady, or the slow
# start of a wail's sweep) within this fraction in all but SUSTAINED_OUTLIERS frames (a babble
# peak that outshone it for a frame).
SUSTAINED_LINE_TOLERANCE = 0.02
SUSTAINED_OUTLIERS = 2
# A fixed-pitch kind (smoke alarm, beeper, horn, 520 Hz alarm) read by the sustained-tone
# decision drifts less than this over its window: a device holds its pitch; a chainsaw's
# overtone (1.6 kHz rising 3% in 220 ms while the saw revs) does not.
SUSTAINED_STEADY_DRIFT = 0.015
# A warning tone holds its level while it sounds; a struck resonance (cutlery, a glass) decays
# from its strike: the window's last frames may not lie this far below its loudest, nor its
# own frames span this much (a tone in noise at -5 dB moves by a few dB from frame to frame).
DECAY_DB = 10.0
# A tone's level over its window is read from its third frame on: the first two 32 ms frames of
# a gated tone may hold its onset.
LEVEL_SKIP_FRAMES = 2
SUSTAINED_LOUDER_DB = 3.0   # dB a sustained tone must stand above the strongest peaks just before it
SUSTAINED_LOOKBACK = 12     # frames (192 ms) before a sustained window in which its tone must be mostly absent
# A sustained siren tone: a hi-lo's tones and a wail's bottom sit at 440-1050 Hz.
SUSTAINED_SIREN_HZ = (400.0, 1100.0)
# The horn's harmonic comb: candidate fundamentals every 2 Hz over HORN_F0_HZ (a 6th partial
# 6 * 2 Hz off still falls within the +-1 bin read), and the partials 1..6 read at each (all
# under 3.9 kHz, inside the search band).
HORN_COMB_F0 = np.arange(HORN_F0_HZ[0], HORN_F0_HZ[1] + 1.0, 2.0)
HORN_COMB_PARTIALS = np.arange(1, 7)
HORN_COMB_BINS = np.rint(HORN_COMB_F0[:, None] * HORN_COMB_PARTIALS[None, :] / BIN_HZ).astype(int)
# Half-way between the partials: where an engine or saw whose fundamental is lower has its own.
HORN_COMB_BETWEEN = np.rint(HORN_COMB_F0[:, None] * (HORN_COMB_PARTIALS[None, :5] + 0.5) / BIN_HZ).astype(int)
# The candidates that may be the 520 Hz alarm's square wave (its fundamental within +-10%).
SQUARE_F0 = np.flatnonzero((HORN_COMB_F0 >= 480.0) & (HORN_COMB_F0 <= 570.0))
COMB_WHITENED_CEILING_DB = 30.0  # one loud partial must not make a comb of the rest
KINDS = ("siren", "smoke_alarm", "low_frequency_alarm", "reversing_beeper", "car_horn")


@dataclass
class AlarmEvent:
    kind: str
    start_s: float            # onset: the first tonal frame of the track
    detected_s: float         # when the detector decided (audio time)
    end_s: float | None = None
    confidence: float = 0.0   # 0..1
    level_dbfs: float = -200.0  # peak level of the tone at the reference mic
    frequency_hz: float = 0.0
    pulses: int = 1
    _frequencies: list = field(default_factory=list, repr=False)
    _comb_index: int | None = field(default=None, repr=False)  # the comb's fundamental, when found by it

    def to_dict(self) -> dict:
        return {"kind": self.kind, "start_s": round(self.start_s, 3), "detected_s": round(self.detected_s, 3),
                "end_s": None if self.end_s is None else round(self.end_s, 3),
                "confidence": round(self.confidence, 3), "level_dbfs": round(self.level_dbfs, 1),
                "frequency_hz": round(self.frequency_hz, 1)}


@dataclass(frozen=True)
class DetectorSettings:
    prominence_db: float = 10.0
    min_level_dbfs: float = -70.0
    min_duration_ms: float = 160.0
    release_ms: float = 1600.0
    onset_rise_db: float = 8.0
    steady_siren_rise_db: float = 11.0
    swept_siren_rise_db: float = 12.0
    sustained_ms: float = 224.0
    sustained_prominence_db: float = 16.0
    sustained_rise_db: float = 8.0
    sustained_before_db: float = 8.5
    sustained_horn_prominence_db: float = 12.0
    comb_db: float = 9.0
    comb_rise_db: float = 8.0
    comb_before_db: float = 6.0
    level_wobble_db: float = 1.2

    @classmethod
    def from_config(cls, section) -> "DetectorSettings":
        return cls(prominence_db=section.prominence_db, min_level_dbfs=section.min_level_dbfs,
                   min_duration_ms=section.min_duration_ms, release_ms=section.release_ms,
                   onset_rise_db=section.onset_rise_db, steady_siren_rise_db=section.steady_siren_rise_db,
                   swept_siren_rise_db=section.swept_siren_rise_db, sustained_ms=section.sustained_ms,
                   sustained_prominence_db=section.sustained_prominence_db,
                   sustained_rise_db=section.sustained_rise_db, sustained_before_db=section.sustained_before_db,
                   sustained_horn_prominence_db=section.sustained_horn_prominence_db,
                   comb_db=section.comb_db, comb_rise_db=section.comb_rise_db,
                   comb_before_db=section.comb_before_db, level_wobble_db=section.level_wobble_db)


@dataclass
class _Frame:
    index: int
    time_s: float
    frequency: float
    prominence: float
    level: float
    spectrum_db: np.ndarray
    floor_db: np.ndarray
    comb_partials_db: np.ndarray | None = None  # per HORN_COMB_F0 and partial 1..6: whitened level
    between_db: np.ndarray | None = None   # per HORN_COMB_F0: the same half-way between them
    comb_power: np.ndarray | None = None   # per HORN_COMB_F0 and partial 1..6: its power (linear)


def _peak(power_db: np.ndarray, low: int, high: int) -> tuple[int, float]:
    k = low + int(np.argmax(power_db[low:high]))
    a, b, c = power_db[k - 1], power_db[k], power_db[k + 1]
    denominator = a - 2 * b + c
    shift = 0.5 * (a - c) / denominator if denominator < 0 else 0.0
    return k, (k + shift) * BIN_HZ


def _local_floor(power_db: np.ndarray, k: int) -> float:
    left = power_db[max(0, k - FLOOR_HALF_WIDTH):max(0, k - LOBE_HALF_WIDTH)]
    right = power_db[k + LOBE_HALF_WIDTH + 1:k + FLOOR_HALF_WIDTH + 1]
    return float(np.median(np.concatenate([left, right])))


def _partial_db(frame: _Frame, frequency: float) -> float:
    """How far the strongest bin within +-1 bin of `frequency` stands above the local floor."""
    k = int(round(frequency / BIN_HZ))
    if k < 2 or k >= frame.spectrum_db.size - FLOOR_HALF_WIDTH - 1:
        return -100.0
    return float(frame.spectrum_db[k - 1:k + 2].max()) - _local_floor(frame.spectrum_db, k)


def _is_overtone(frame: _Frame) -> bool:
    """True when the peak is an overtone of a lower fundamental (a voice, an engine, a saw):
    partials stand at f (h - 1) / h and f (h + 1) / h for some h = 2..4. A warning tone has
    harmonics only above it, at whole multiples."""
    peak = frame.frequency
    for order in (2, 3, 4):
        if (_partial_db(frame, peak * (order - 1) / order) >= HARMONIC_DB
                and _partial_db(frame, peak * (order + 1) / order) >= HARMONIC_DB):
            return True
    return False


def _is_steady(track: list[_Frame], outliers: int = 0) -> bool:
    """The peak stays within STEADY_TOLERANCE of its median frequency over the track, but for
    `outliers` frames."""
    frequencies = np.maximum(np.array([f.frequency for f in track]), BIN_HZ)
    median = float(np.median(frequencies))
    return bool(np.count_nonzero(np.abs(frequencies - median) > STEADY_TOLERANCE * median) <= outliers)


def _decays(track: list[_Frame]) -> bool:
    """A struck resonance, not a warning tone: the last three frames lie DECAY_DB under the
    loudest frame of the window, or the tone's own frames (its peak within STEADY_TOLERANCE of
    the median, the first frame left out: it may hold the onset) span DECAY_DB in level (two
    strikes of a glass a few hertz apart, each decaying)."""
    levels = np.array([f.level for f in track])
    if levels.max() - 10.0 * np.log10(np.mean(10.0 ** (levels[-3:] / 10.0))) > DECAY_DB:
        return True
    frequencies = np.array([f.frequency for f in track[1:]])
    own = levels[1:][np.abs(frequencies - np.median(frequencies)) <= STEADY_TOLERANCE * np.median(frequencies)]
    return bool(own.size >= 2 and own.max() - own.min() > DECAY_DB)


def level_wobble_db(frames: list[_Frame]) -> float:
    """How much a tone's own level moves over `frames`, beyond what the noise in its bin explains.
    A warning tone is generated at a fixed amplitude: its measured level (the peak bin's power)
    moves only by the noise added to that bin. With a band-limited SNR rho (the tone's power over
    the noise's mean power in a bin; the prominence is over the median, which is ln 2 of the mean
    for noise power) that moves the level by a standard deviation of 10 / ln 10 * sqrt(2 / rho) dB.
    A voice's partial swells and a machine's partial beats: their level moves more. Returns the
    standard deviation of the levels with the noise's part removed (dB, 0 when the noise explains
    it all)."""
    levels = np.array([f.level for f in frames])
    if levels.size < 3:
        return 0.0
    rho = np.log(2.0) * 10.0 ** (float(np.median([f.prominence for f in frames])) / 10.0)
    noise_sd = 10.0 / np.log(10.0) * np.sqrt(2.0 / rho)
    return float(np.sqrt(max(0.0, float(np.var(levels)) - noise_sd ** 2)))


def _own_frames(window: list[_Frame], track: list[_Frame]) -> list[_Frame]:
    """The frames a steady tone's level is read from: those of its whole track (since it began,
    not only the window: a voice swells at its start) whose peak lies within STEADY_TOLERANCE of
    the window's median frequency (not a frame whose peak another sound took), from the third on
    (the first two may hold its onset)."""
    median = float(np.median([f.frequency for f in window]))
    own = [f for f in track if f.index <= window[-1].index and abs(f.frequency - median) <= STEADY_TOLERANCE * median]
    return own[LEVEL_SKIP_FRAMES:]


def classify_steady(frame: _Frame) -> str | None:
    """The kind of a steady (unmodulated) tone, from its frequency and harmonic structure."""
    peak = frame.frequency
    if 2500.0 <= peak <= 3700.0:
        return "smoke_alarm"
    # A harmonic complex: the peak is partial m of a fundamental f0 in HORN_F0_HZ.
    for order in (1, 2, 3, 4):
        f0 = peak / order
        if not HORN_F0_HZ[0] <= f0 <= HORN_F0_HZ[1]:
            continue
        present = [h for h in range(1, 9) if h * f0 < SEARCH_HZ[1] and _partial_db(frame, h * f0) >= HARMONIC_DB]
        between = [h for h in range(1, 6) if _partial_db(frame, (h + 0.5) * f0) >= HARMONIC_DB]
        if len(between) >= 2:
            continue  # partials half-way between: the real fundamental is lower (an engine, a saw)
        odd = [h for h in present if h % 2 == 1]
        even = [h for h in present if h % 2 == 0]
        # The square wave's fundamental is its strongest partial (its 3rd is 9.5 dB down).
        if order == 1 and 480.0 <= f0 <= 570.0 and 1 in present and len(odd) >= 2 and not even:
            return "low_frequency_alarm"
        if len(present) >= 4:
            return "car_horn"
    if _is_overtone(frame):
        return None
    if 850.0 <= peak <= 1700.0:
        return "reversing_beeper"
    if 400.0 <= peak < 850.0:
        return "siren"  # first tone of a hi-lo siren: it will jump
    return None


class AlarmDetector:
    """Streaming detector; `process` takes reference-mic samples at `sample_rate` and returns
    the events that were detected or ended during them."""

    def __init__(self, sample_rate: int, settings: DetectorSettings = DetectorSettings()):
        self.settings = settings
        self.sample_rate = sample_rate
        self._decimator = StreamDecimator(sample_rate, SAMPLE_RATE)
        self._buffer = np.zeros(FRAME)
        self._fill = 0
        self._since_hop = 0
        self._window = np.hanning(FRAME + 1)[:FRAME]
        # Full-scale sine -> 0 dBFS at the peak bin: Hann coherent gain FRAME / 2.
        self._scale = 2.0 / self._window.sum()
        self._low = int(SEARCH_HZ[0] / BIN_HZ)
        self._high = int(SEARCH_HZ[1] / BIN_HZ)
        self._comb_end = int(HORN_COMB_BINS.max()) + 3
        self._track: list[_Frame] = []
        self._frames_needed = max(2, int(round(settings.min_duration_ms / (1e3 * HOP / SAMPLE_RATE))))
        self._sustained_frames = max(self._frames_needed, int(round(settings.sustained_ms / (1e3 * HOP / SAMPLE_RATE))))
        self._release_s = settings.release_ms * 1e-3
        self._decimated_samples = 0
        self.active: AlarmEvent | None = None
        self._last_tonal_s = -1e9
        self._pulse_on = False
        self._missed = 0
        self.frames = 0
        self._history: deque[_Frame] = deque(
            maxlen=ONSET_LOOKBACK[1] + max(4 * self._frames_needed, self._sustained_frames) + 2)

    # -- frame analysis ----------------------------------------------------------------------
    def _analyse(self, frame: np.ndarray, time_s: float) -> _Frame:
        if not np.all(np.isfinite(frame)):
            frame = np.nan_to_num(frame, nan=0.0, posinf=0.0, neginf=0.0)  # a broken input is not a tone
        spectrum = np.fft.rfft(frame * self._window) * self._scale
        power_db = 10.0 * np.log10(spectrum.real ** 2 + spectrum.imag ** 2 + 1e-20)
        k, frequency = _peak(power_db, self._low, self._high)
        floor = _local_floor(power_db, k)
        result = _Frame(self.frames, time_s, frequency, float(power_db[k] - floor), float(power_db[k]), power_db, None)
        self._comb(result)
        return result

    def _comb(self, frame: _Frame) -> None:
        """The horn's evidence, which does not rest on the strongest peak (twin horns a third
        apart trade it between their partials): per candidate fundamental, how far its partials
        1..6 stand above the spectrum around each (the median of the 25 bins centred on it,
        clipped to 0..30 dB), the same half-way between them, and each partial's power."""
        power_db = frame.spectrum_db
        end = self._comb_end
        windows = np.lib.stride_tricks.sliding_window_view(power_db[:end + FLOOR_HALF_WIDTH + 1], 2 * FLOOR_HALF_WIDTH + 1)
        floor = np.full(end, np.inf)
        floor[FLOOR_HALF_WIDTH:end] = np.median(windows[:end - FLOOR_HALF_WIDTH], axis=1)
        floor[:FLOOR_HALF_WIDTH] = floor[FLOOR_HALF_WIDTH]
        whitened = np.clip(power_db[:end] - floor, 0.0, COMB_WHITENED_CEILING_DB)
        whitened3 = np.maximum(np.maximum(whitened[:-2], whitened[1:-1]), whitened[2:])   # +-1 bin, index k-1
        power3 = np.maximum(np.maximum(power_db[:end - 2], power_db[1:end - 1]), power_db[2:end])
        frame.comb_partials_db = whitened3[HORN_COMB_BINS - 1]
        frame.between_db = whitened3[HORN_COMB_BETWEEN - 1].mean(axis=1)
        frame.comb_power = 10.0 ** (power3[HORN_COMB_BINS - 1] / 10.0)

    def _tonal(self, frame: _Frame) -> bool:
        return frame.prominence >= self.settings.prominence_db and frame.level >= self.settings.min_level_dbfs

    def _onset_rise_db(self, window: list[_Frame]) -> float | None:
        """How far the window's tone stands above what was there just before the window began:
        per lookback frame, the power at the window's first frequency or, when that frame belongs
        to the track within a sweep step of it, the track's own peak (a whine that was already
        sounding nearby, sweeping or wandering); power mean over the lookback frames. None when the stream has no such past."""
        first = window[0]
        k = int(round(first.frequency / BIN_HZ))
        # Track frames near the window's frequency: the same tone, sweeping or wandering into it
        # (a voice tracked before an alarm at another pitch is not).
        same_tone = {f.index for f in self._track
                     if abs(np.log(max(f.frequency, BIN_HZ) / max(first.frequency, BIN_HZ))) <= np.log1p(SWEEP_STEP)}
        before = [max(float(f.spectrum_db[k - 1:k + 2].max()), f.level if f.index in same_tone else -200.0)
                  for f in self._history
                  if first.index - ONSET_LOOKBACK[1] <= f.index <= first.index - ONSET_LOOKBACK[0]]
        if len(before) < 3:
            return None
        level = float(np.mean([f.level for f in window]))
        rise = level - 10.0 * np.log10(np.mean(10.0 ** (np.array(before) / 10.0)))
        # A track that began a frame or two before the window: its onset is the track's start,
        # so the rise must hold over what was there before that too (a window that slides by a
        # frame or two must not slide its lookback off a tone that was already there).
        start = self._track[0].index if self._track and self._track[-1].index == window[-1].index else first.index
        if start < first.index:
            earlier = [float(f.spectrum_db[k - 1:k + 2].max()) for f in self._history
                       if start - ONSET_LOOKBACK[1] <= f.index <= start - ONSET_LOOKBACK[0]]
            if len(earlier) < 3:
                return None
            rise = min(rise, level - 10.0 * np.log10(np.mean(10.0 ** (np.array(earlier) / 10.0))))
        return rise

    def _kind(self, track: list[_Frame]) -> str | None:
        """What the last frames of a tonal track are, if a warning sound (see the module doc)."""
        frequencies = np.maximum(np.array([f.frequency for f in track]), BIN_HZ)
        median = float(np.median(frequencies))
        strictly_steady = _is_steady(track)
        if strictly_steady or _is_steady(track, outliers=1):
            kinds = [classify_steady(f) for f in track[-4:]]
            best = max(set(kinds), key=kinds.count)
            # A smoke alarm's 3 kHz and the 520 Hz alarm's odd-harmonic square wave say what they
            # are by themselves: one frame whose peak a babble partial pulled by a few hertz (2% at
            # 520 Hz is a tenth of a bin) does not make them unsteady. The other steady kinds rest
            # on steadiness more, and keep the strict test.
            if strictly_steady:
                return best if kinds.count(best) >= 3 else None
            if kinds.count(best) >= 3 and best in ("smoke_alarm", "low_frequency_alarm"):
                return best
        if not SIREN_HZ[0] <= median <= SIREN_HZ[1]:
            return None
        ratios = frequencies[1:] / frequencies[:-1]
        jumps = np.flatnonzero(np.abs(np.log(ratios)) > np.log(1.0 + SWEEP_STEP))
        if jumps.size == 1:
            # Hi-lo: two steady tones a musical interval apart.
            first, second = frequencies[:jumps[0] + 1], frequencies[jumps[0] + 1:]
            interval = max(first.mean(), second.mean()) / min(first.mean(), second.mean())
            steady = all(np.max(np.abs(part - part.mean())) <= STEADY_TOLERANCE * part.mean()
                         for part in (first, second))
            return "siren" if steady and JUMP_RATIOS[0] <= interval <= JUMP_RATIOS[1] else None
        if jumps.size > 1:
            return None
        # A sweep: the frequency moves far, and smoothly: its second differences are small
        # against its steps (a siren's sweep is a slow periodic function; a chain of noise
        # peaks is a random walk, whose second differences exceed its steps).
        steps = np.abs(np.diff(frequencies))
        curvature = np.abs(np.diff(frequencies, 2))
        swept = frequencies.max() / frequencies.min() > MODULATED_RANGE
        smooth = float(np.median(curvature)) <= SWEEP_SMOOTHNESS * float(np.median(steps)) + 0.003 * median
        return "siren" if swept and smooth and not _is_overtone(track[-1]) else None

    # -- streaming ------------------------------------------------------------------------------
    def process(self, samples: np.ndarray) -> list[AlarmEvent]:
        decimated = self._decimator.process(samples)
        changed: list[AlarmEvent] = []
        position = 0
        while position < decimated.size:
            take = min(decimated.size - position, HOP - self._since_hop)
            chunk = decimated[position:position + take]
            self._buffer[:-take] = self._buffer[take:]
            self._buffer[-take:] = chunk
            self._fill = min(FRAME, self._fill + take)
            self._since_hop += take
            self._decimated_samples += take
            position += take
            if self._since_hop == HOP and self._fill == FRAME:
                self._since_hop = 0
                event = self._step(self._decimated_samples / SAMPLE_RATE)
                if event is not None:
                    changed.append(event)
            elif self._since_hop == HOP:
                self._since_hop = 0
        return changed

    def _step(self, time_s: float) -> AlarmEvent | None:
        self.frames += 1
        frame = self._analyse(self._buffer, time_s)
        self._history.append(frame)
        tonal = self._tonal(frame)
        if tonal:
            self._track.append(frame)
            self._missed = 0
            if len(self._track) > max(4 * self._frames_needed, self._sustained_frames):
                del self._track[0]
        elif self._track:
            self._missed += 1
            if self._missed > 1:  # one missed frame is tolerated inside a track
                self._track = []
        active = self.active
        if active is not None:
            # Only a track that is itself a warning sound keeps the event alive; any other
            # tone (traffic, voices) does not.
            kind = self._kind(self._track[-self._frames_needed:]) if len(self._track) >= self._frames_needed else None
            if kind is None and len(self._track) >= self._sustained_frames:
                kind = self._sustained_kind(self._track[-self._sustained_frames:], onset=False)
            if active._comb_index is not None and self._comb_holds(active.kind, active._comb_index):
                tonal, kind = True, active.kind
            if tonal and kind is not None:
                if not self._pulse_on and time_s - self._last_tonal_s > 0.2:
                    active.pulses += 1
                self._pulse_on = True
                self._last_tonal_s = time_s
                active.level_dbfs = max(active.level_dbfs, frame.level)
                active._frequencies.append(frame.frequency)
                self._update_confidence(active)
            else:
                self._pulse_on = False
                if time_s - self._last_tonal_s >= self._release_s:
                    active.end_s = self._last_tonal_s
                    self.active = None
                    return active
            return None
        if len(self._track) >= self._frames_needed:
            track = self._track[-self._frames_needed:]
            kind = self._kind(track)
            if kind is not None and (_decays(track) or self._wobbles(track)):
                kind = None
            if kind == "car_horn" and float(np.median([f.frequency for f in track])) > 2 * HORN_F0_HZ[1]:
                kind = None  # a horn's strongest partial is one of its lowest; a saw's high partial is not one
            if kind is None or not self._sudden_onset(kind, track):
                track = self._track[-self._sustained_frames:]
                kind = self._sustained_kind(track) if len(track) == self._sustained_frames else None
                if kind is not None and (_decays(track)
                                         or level_wobble_db(track[LEVEL_SKIP_FRAMES:]) > self.settings.level_wobble_db):
                    kind = None
        else:
            kind = None
        comb_index = None
        if kind is None:
            track = list(self._history)[-self._frames_needed:]
            found = self._comb_alarm(track)
            if found is None:
                return None
            kind, comb_index = found
        # The onset is the start of the first frame of the track.
        start = max(0.0, track[0].time_s - FRAME / SAMPLE_RATE)
        event = AlarmEvent(kind=kind, start_s=start, detected_s=time_s,
                           level_dbfs=max(f.level for f in track),
                           frequency_hz=float(np.median([f.frequency for f in track])))
        event._frequencies.extend(f.frequency for f in track)
        if comb_index is not None:
            event._comb_index = comb_index
            event.frequency_hz = float(HORN_COMB_F0[comb_index])
        self._last_tonal_s = time_s
        self._pulse_on = True
        self._update_confidence(event)
        self.active = event
        return event

    def _wobbles(self, track: list[_Frame]) -> bool:
        """A steady tone whose own level moves more than `alarms.level_wobble_db` beyond what the
        noise in its bin explains (`level_wobble_db`): a voice's or a machine's partial, not a
        warning tone, which is generated at a fixed amplitude. A swept tone is not judged this
        way: crossing the bins, its peak's level moves by the window's scalloping (up to 1.4 dB)."""
        if not _is_steady(track, outliers=1):
            return False
        return level_wobble_db(_own_frames(track, self._track)) > self.settings.level_wobble_db

    def _comb_alarm(self, window: list[_Frame]) -> tuple[str, int] | None:
        """A car horn or the 520 Hz alarm by its harmonic comb rather than its strongest peak.
        A horn: the candidate fundamental (HORN_COMB_F0) whose partials 1..6 stand, averaged
        over the window, at least `alarms.comb_db` above the spectrum around them; the 520 Hz
        alarm (a square wave): a 480-570 Hz fundamental whose odd partials 1, 3, 5 do (each of
        them HARMONIC_DB at least: a voice's strong partial with a weak 3rd is not one), its even
        ones a third of that at most, and no partial an octave below stronger than its comb (a
        saw's lower fundamental). Either with no comb half-way between the partials (an engine
        or a saw on a lower fundamental), partials that rose, on average in dB,
        `alarms.comb_rise_db` over what the same bins held 50-130 ms before the window (it
        starts abruptly; a machine's partials were there), and a comb absent before (its median
        over the 192 ms before the window under `alarms.comb_before_db`: a brake squeal
        wandering about 620 Hz held one there). The comb must hold in 3 of the window's last 4
        frames on its own: voices wandering across its partials fill the mean but not each
        frame. The window's mean over frames is what makes
        twin horns one decision: each horn's comb holds, whichever partial is the strongest in
        a frame. (kind, comb index), or None."""
        if len(window) < self._frames_needed or window[-1].index - window[0].index != len(window) - 1:
            return None
        partials = np.mean([f.comb_partials_db for f in window], axis=0)   # candidates x partials
        odd, even = partials[:, 0::2].mean(axis=1), partials[:, 1::2].mean(axis=1)
        comb = partials.mean(axis=1)
        square = odd[SQUARE_F0] - (even[SQUARE_F0] * 3.0)
        candidates = []
        low = SQUARE_F0[int(np.argmax(square))]
        if (odd[low] >= self.settings.comb_db and even[low] * 3.0 <= odd[low]
                and partials[low, 0::2].min() >= HARMONIC_DB):  # every odd partial of a square wave stands
            candidates.append(("low_frequency_alarm", int(low), odd[low], [0, 2, 4]))
        best = int(np.argmax(comb))
        if comb[best] >= self.settings.comb_db and even[best] * 3.0 > odd[best]:
            candidates.append(("car_horn", best, comb[best], [0, 1, 2, 3, 4, 5]))
        first = window[0].index
        lookback = [f for f in self._history if first - ONSET_LOOKBACK[1] <= f.index <= first - ONSET_LOOKBACK[0]]
        earlier = [f for f in self._history if first - SUSTAINED_LOOKBACK <= f.index < first]
        if len(lookback) < 3 or len(earlier) < SUSTAINED_LOOKBACK:
            return None
        for kind, index, score, used in candidates:
            if float(np.mean([f.between_db[index] for f in window])) >= 0.5 * score:
                continue
            if (kind == "low_frequency_alarm"
                    and float(np.median([_partial_db(f, HORN_COMB_F0[index] / 2) for f in window])) >= score):
                continue  # a partial an octave below, stronger than the comb: a saw's or a voice's lower fundamental
            if sum(f.comb_partials_db[index, used].mean() >= self.settings.comb_db for f in window[-4:]) < 3:
                continue  # not sounding now: voices wandering across the comb's partials fill its mean
            if float(np.median([f.comb_partials_db[index, used].mean() for f in earlier])) >= self.settings.comb_before_db:
                continue  # the comb was there before: a squeal's or an engine's partials, not a new alarm
            now = np.mean([f.comb_power[index, used] for f in window], axis=0)
            if 10.0 * np.log10(float(now.max())) < self.settings.min_level_dbfs:
                continue
            # Each partial's own rise, averaged in dB: the noise's loudest bins (traffic below
            # 1 kHz) must not hide the rise of the partials above them.
            before = np.mean([f.comb_power[index, used] for f in lookback], axis=0)
            if float(np.mean(10.0 * np.log10(now / before))) >= self.settings.comb_rise_db:
                return kind, index
        return None

    def _comb_holds(self, kind: str, index: int) -> bool:
        """The alarm found by its comb still sounds: its comb holds in each of the last four
        frames (babble's partials lift it over the threshold for a frame or two, not four)."""
        used = [0, 2, 4] if kind == "low_frequency_alarm" else [0, 1, 2, 3, 4, 5]
        recent = list(self._history)[-4:]
        return all(f.comb_partials_db[index, used].mean() >= self.settings.comb_db for f in recent)

    def _sudden_onset(self, kind: str, track: list[_Frame]) -> bool:
        """A warning sound starts abruptly: just before the window its frequency (or its own track)
        held far less power than the tone now has. A machine's whine that the track picks up again
        after a gap, or that sweeps on, or a tone already there when the stream started, has no
        such onset. A steady tone named a siren (the first tone of a hi-lo, the bottom of a wail)
        has no sweep yet to show for it: it needs a larger rise, and must not be a partial of a
        tone an octave below (a voice, a saw). A swept tone needs a larger rise too: a chainsaw
        revving up sweeps like a wail's first 160 ms, and only the onset tells them apart there."""
        rise = self._onset_rise_db(track)
        if rise is None:
            return False
        if kind == "siren" and _is_steady(track):
            return (rise >= self.settings.steady_siren_rise_db
                    and float(np.median([_partial_db(f, f.frequency / 2) for f in track])) < HARMONIC_DB)
        if kind == "siren":
            return rise >= self.settings.swept_siren_rise_db
        if kind == "reversing_beeper" and not self._absent_before(track):
            return False
        return rise >= self.settings.onset_rise_db

    def _absent_before(self, window: list[_Frame]) -> bool:
        """Over the 192 ms before the window, the window's starting frequency held no partial
        most of the time (`alarms.sustained_before_db`): a beeper's tone is absent between its
        beeps and before the first; a chainsaw's overtone, which the peak picker trades with
        its other partials, was there."""
        first = window[0].index
        start_hz = float(np.median([f.frequency for f in window[:3]]))
        earlier = [_partial_db(f, start_hz) for f in self._history if first - SUSTAINED_LOOKBACK <= f.index < first]
        return len(earlier) >= SUSTAINED_LOOKBACK and float(np.median(earlier)) < self.settings.sustained_before_db

    def _sustained_kind(self, window: list[_Frame], onset: bool = True) -> str | None:
        """The slower path, for a tone in noise that has partials at its pitch already (babble,
        traffic), where the 160 ms decision's onset rise is not there to see: a narrowband tone
        that holds, for `alarms.sustained_ms`, a band-limited SNR (its prominence over the bins
        around it) of `alarms.sustained_prominence_db` while following a straight line in
        frequency (steady, or a wail's slow start), and that stands `alarms.sustained_rise_db`
        above the power its own bins held just before. A voice's partial does not hold that long
        and that far above its neighbours; a machine's whine was there before."""
        if window[-1].index - window[0].index != len(window) - 1:
            return None  # a gap inside the window: not one sustained tone
        prominence = float(np.median([f.prominence for f in window]))
        if prominence < min(self.settings.sustained_prominence_db, self.settings.sustained_horn_prominence_db):
            return None
        frequencies = np.array([f.frequency for f in window])
        median = float(np.median(frequencies))
        steps = np.arange(frequencies.size)
        line = np.polyfit(steps, frequencies, 1)
        deviation = np.abs(frequencies - np.polyval(line, steps))
        keep = np.argsort(deviation)[:frequencies.size - SUSTAINED_OUTLIERS]
        line = np.polyfit(steps[keep], frequencies[keep], 1)
        deviation = np.abs(frequencies - np.polyval(line, steps)) / median
        if np.count_nonzero(deviation > SUSTAINED_LINE_TOLERANCE) > SUSTAINED_OUTLIERS:
            return None
        kinds = [classify_steady(f) for f in window[-4:]]
        best = max(set(kinds), key=kinds.count)
        drift = abs(line[0]) * (frequencies.size - 1) / median
        if kinds.count(best) >= 3 and best is not None and best != "siren":
            if drift > SUSTAINED_STEADY_DRIFT:
                return None  # a fixed-pitch device does not glide
            if best == "car_horn" and median > 2 * HORN_F0_HZ[1]:
                return None  # a horn's strongest partial is one of its lowest; a saw's high partial is not one
            kind = best
            if kind != "car_horn" and prominence < self.settings.sustained_prominence_db:
                return None
        elif prominence < self.settings.sustained_prominence_db:
            return None
        elif (SUSTAINED_SIREN_HZ[0] <= median <= SUSTAINED_SIREN_HZ[1]
              # Not the overtone of an engine or a voice: no partial held an octave below, and
              # no partials beside it a fundamental apart, in most of the window (babble adds a
              # peak anywhere for a frame; an engine's partials hold).
              and float(np.median([_partial_db(f, f.frequency / 2) for f in window])) < HARMONIC_DB
              and sum(_is_overtone(f) for f in window) * 2 < len(window)):
            kind = "siren"
        else:
            return None
        if not onset:
            return kind
        first = window[0].index
        # The tone was not already there (a squeal or a saw's partial that grows, or that the
        # peak picker only now prefers, was).
        if not self._absent_before(window):
            return None
        k = int(round(median / BIN_HZ))
        before = [float(f.spectrum_db[k - 1:k + 2].max()) for f in self._history
                  if first - ONSET_LOOKBACK[1] <= f.index <= first - ONSET_LOOKBACK[0]]
        if len(before) < 3:
            return None
        level = float(np.mean([f.level for f in window]))
        rise = level - 10.0 * np.log10(np.mean(10.0 ** (np.array(before) / 10.0)))
        # The track may have begun before the window: its onset is the track's start, and the
        # rise must hold over what its bins held before that too.
        start = self._track[0].index if self._track and self._track[-1].index == window[-1].index else first
        if start < first:
            earlier = [float(f.spectrum_db[k - 1:k + 2].max()) for f in self._history
                       if start - ONSET_LOOKBACK[1] <= f.index <= start - ONSET_LOOKBACK[0]]
            if len(earlier) < 3:
                return None
            rise = min(rise, level - 10.0 * np.log10(np.mean(10.0 ** (np.array(earlier) / 10.0))))
        # And it is the loudest tone now: louder than the strongest peaks just before it (a
        # saw whose peak moves from one partial to another is not).
        peaks = [f.level for f in self._history if first - ONSET_LOOKBACK[1] <= f.index <= first - ONSET_LOOKBACK[0]]
        louder = level - 10.0 * np.log10(np.mean(10.0 ** (np.array(peaks) / 10.0)))
        return kind if rise >= self.settings.sustained_rise_db and louder >= SUSTAINED_LOUDER_DB else None

    def _update_confidence(self, event: AlarmEvent) -> None:
        """Evidence grows with the tone's prominence, its duration and its regularity: a second
        pulse of a pulsed alarm, or a siren that keeps sweeping."""
        prominence = np.mean([f.prominence for f in self._track]) if self._track else self.settings.prominence_db
        confidence = 0.5 + 0.02 * (prominence - self.settings.prominence_db)
        if event.pulses >= 2:
            confidence += 0.2
        if event.kind == "siren" and len(event._frequencies) > 30:
            spread = max(event._frequencies[-30:]) / max(min(event._frequencies[-30:]), 1.0)
            confidence += 0.2 if spread > MODULATED_RANGE else 0.0
        event.confidence = float(min(1.0, max(event.confidence, confidence)))

    def finish(self, time_s: float) -> AlarmEvent | None:
        """Close the event still open at the end of a stream (end = last tonal frame)."""
        if self.active is None:
            return None
        event, self.active = self.active, None
        event.end_s = self._last_tonal_s
        return event


def format_alarms(alarms: list[dict], modes: list[dict]) -> str:
    """The warning sounds let through and the speaker's mode timeline, for the summaries."""
    timeline = ", ".join(f"{m['t_s']:.2f} s {m['mode']}" for m in modes) or "-"
    if not alarms:
        return f"alarms       none heard; modes: {timeline}"
    heard = "; ".join(f"{a['kind']} {a['start_s']:.2f}-{a['end_s']:.2f} s (detected at {a['detected_s']:.2f} s)"
                      for a in alarms)
    return f"alarms       {len(alarms)}: {heard}; modes: {timeline}"
