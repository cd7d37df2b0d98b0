"""Seeded warning sounds for tests and the alarm benchmark: sirens (wail, yelp, hi-lo), smoke
alarms (ISO 8201 temporal-three near 3 kHz and its 520 Hz square-wave variant), reversing
beepers and car horns. Every parameter is drawn from a seeded generator within the ranges
real devices use, so a figure measured on them is reproducible by its seed.

`alarm(kind, seconds, rate, seed)` returns (samples at unit peak, on_intervals): the intervals
[(start_s, end_s)] during which the sound is on (the T3 pattern and the beeper are gated).
"""

from __future__ import annotations

import numpy as np

# variant -> the kind the detector should report
VARIANTS = {
    "siren_wail": "siren",
    "siren_yelp": "siren",
    "siren_hilo": "siren",
    "smoke_t3": "smoke_alarm",
    "smoke_t3_520hz": "low_frequency_alarm",
    "reversing_beeper": "reversing_beeper",
    "car_horn": "car_horn",
}
RAMP_S = 0.005


def _gate(n: int, rate: int, intervals: list[tuple[float, float]]) -> np.ndarray:
    gate = np.zeros(n)
    ramp = max(1, int(RAMP_S * rate))
    shape = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    for start, end in intervals:
        a, b = int(start * rate), min(n, int(end * rate))
        if b - a <= 2 * ramp:
            continue
        gate[a:b] = 1.0
        gate[a:a + ramp] = shape
        gate[b - ramp:b] = shape[::-1]
    return gate


def _tone(phase: np.ndarray, harmonics: list[tuple[int, float]]) -> np.ndarray:
    return sum(amplitude * np.sin(order * phase) for order, amplitude in harmonics)


def _temporal_three(seconds: float, on_s: float = 0.5, off_s: float = 0.5, pause_s: float = 1.5) -> list[tuple[float, float]]:
    """ISO 8201: three 0.5 s pulses 0.5 s apart, then 1.5 s of silence, repeated."""
    intervals, t = [], 0.0
    while t < seconds:
        for _ in range(3):
            intervals.append((t, min(t + on_s, seconds)))
            t += on_s + off_s
        t += pause_s - off_s
    return [(a, b) for a, b in intervals if a < seconds]


def alarm(variant: str, seconds: float, rate: int, seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown alarm variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    rng = np.random.default_rng([seed, list(VARIANTS).index(variant)])
    n = int(seconds * rate)
    t = np.arange(n) / rate
    on = [(0.0, seconds)]
    if variant in ("siren_wail", "siren_yelp"):
        low, high = rng.uniform(500, 800), rng.uniform(1200, 1700)
        period = rng.uniform(2.0, 6.0) if variant == "siren_wail" else rng.uniform(0.25, 0.4)
        # Starts at the bottom of the sweep, as electronic and motor sirens do.
        frequency = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * t / period))
        phase = 2 * np.pi * np.cumsum(frequency) / rate
        x = _tone(phase, [(1, 1.0), (2, 0.3), (3, 0.2)])
    elif variant == "siren_hilo":
        low = rng.uniform(440, 700)
        high = low * rng.uniform(1.25, 1.5)
        half = rng.uniform(0.4, 0.6)
        frequency = np.where((t // half) % 2 == 0, high, low)
        phase = 2 * np.pi * np.cumsum(frequency) / rate
        x = _tone(phase, [(1, 1.0), (3, 0.2)])
    elif variant == "smoke_t3":
        frequency = rng.uniform(2950, 3300)
        on = _temporal_three(seconds)
        x = _tone(2 * np.pi * frequency * t, [(1, 1.0), (2, 0.1)])
    elif variant == "smoke_t3_520hz":
        frequency = 520.0 * rng.uniform(0.97, 1.03)
        on = _temporal_three(seconds)
        x = _tone(2 * np.pi * frequency * t, [(k, 1.0 / k) for k in range(1, 16, 2)])  # square wave
    elif variant == "reversing_beeper":
        frequency = rng.uniform(1000, 1400)
        cadence = rng.uniform(0.4, 0.6)
        on = [(k * 2 * cadence, k * 2 * cadence + cadence) for k in range(int(seconds / (2 * cadence)) + 1)]
        on = [(a, min(b, seconds)) for a, b in on if a < seconds]
        x = _tone(2 * np.pi * frequency * t, [(1, 1.0), (3, 0.15)])
    else:  # car_horn: a brassy harmonic complex, often two horns a third apart
        f0 = rng.uniform(350, 500)
        partials = [(k, 1.0 / k ** 0.7) for k in range(1, 11)]
        x = _tone(2 * np.pi * f0 * t, partials)
        if rng.uniform() < 0.5:
            x = x + _tone(2 * np.pi * f0 * rng.uniform(1.2, 1.27) * t, partials)
        duration = min(seconds, rng.uniform(0.6, 2.0))
        on = [(0.0, duration)]
    x = x * _gate(n, rate, on)
    peak = np.max(np.abs(x))
    return (x / peak if peak > 0 else x), on


def mix_at_snr(noise: np.ndarray, sound: np.ndarray, on: list[tuple[float, float]], offset_s: float,
               snr_db: float, rate: int) -> np.ndarray:
    """`noise` with `sound` added from `offset_s`, scaled so that the sound's power while it is on
    is `snr_db` above the noise's power over the same samples."""
    out = np.array(noise, dtype=np.float64)
    start = int(offset_s * rate)
    length = min(sound.size, out.size - start)
    if length <= 0:
        return out
    mask = np.zeros(length, dtype=bool)
    for a, b in on:
        mask[int(a * rate):int(b * rate)] = True
    segment = sound[:length]
    noise_part = out[start:start + length][mask]
    sound_power = float(np.mean(segment[mask] ** 2))
    noise_power = float(np.mean(noise_part ** 2)) if noise_part.size else 0.0
    gain = np.sqrt(max(noise_power, 1e-12) / max(sound_power, 1e-30) * 10 ** (snr_db / 10))
    out[start:start + length] += gain * segment
    return out
