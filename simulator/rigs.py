"""Seeded random plants: rigs the project has never seen, for tests and `bench/cancellation.py`.

`random_plant(seed, kind)` builds a `Plant` from the same physical blocks as the presets
(`simulator/presets/make_presets.py`: fractional-delay propagation, a loudspeaker as a
resonant high-pass plus a break-up low-pass, low-passed reflections), with every number
drawn from ranges a real rig falls in, deterministically from the seed:

* ``earcup``: a closed cup, driver 3-15 mm from the error mic, resonance 60-200 Hz, a few
  early reflections; paths 64-512 samples long; the reference mic 1-4 cm outside, so the
  primary path is a passive-isolation low-pass; little or no feedback.
* ``duct`` / ``room``: the speaker 0.1-1 m from the error mic, the reference mic 0.3-2.5 m
  upstream, a diffuse exponentially decaying tail (reverberation) that makes the secondary
  and primary paths 384-1536 samples long, and a speaker-to-reference feedback path -20 to
  -3 dB.

Latency is 64-160 samples (two blocks plus converters, USB or Bluetooth-class stacks). A
changed plant (`changed_secondary_path`) models a speaker or cup that moved: a different
delay, level and resonance, as `path_changes` in a plant YAML.

`write_plant(plant, directory)` stores a plant as the YAML and `.npy` files `Plant.load`
reads, so a random rig runs through exactly the path `anc-device --simulate --plant FILE` takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from simulator.plant import Plant
from simulator.presets.make_presets import SAMPLE_RATE, SPEED_OF_SOUND, fractional_delay, loudspeaker, lowpass

KINDS = ("earcup", "duct", "room")
MIN_PATH_SAMPLES = 64
MAX_PATH_SAMPLES = 1536
LATENCY_RANGE = (64, 160)


def _taper(h: np.ndarray, length: int) -> np.ndarray:
    """Cut to `length` with a short raised-cosine fade, so the path ends where it says."""
    h = np.asarray(h[:length], dtype=np.float64).copy()
    fade = min(32, length // 4)
    h[length - fade:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, fade + 1) / fade)
    return h


def _delay(distance_m: float, length: int, gain: float) -> np.ndarray:
    return fractional_delay(distance_m / SPEED_OF_SOUND * SAMPLE_RATE, length, gain)


def _reverb_tail(rng: np.random.Generator, length: int, start: int, decay_samples: float, level: float,
                 cutoff_hz: float) -> np.ndarray:
    """Diffuse reflections: low-passed noise with an exponential envelope from `start` on."""
    tail = np.zeros(length)
    count = length - start
    if count <= 0:
        return tail
    noise = lowpass(rng.standard_normal(count), cutoff_hz)
    tail[start:] = level * noise * np.exp(-np.arange(count) / decay_samples)
    return tail


def _decay_for(length: int) -> float:
    # 60 dB down at the end of the path: exp(-length / tau) = 1e-3.
    return length / np.log(1e3)


def random_plant(seed: int, kind: str | None = None, feedback: bool | None = None) -> Plant:
    """A physically plausible plant, the same for the same (seed, kind, feedback)."""
    rng = np.random.default_rng([seed, 7151])
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    latency = int(rng.integers(LATENCY_RANGE[0], LATENCY_RANGE[1] + 1))
    if kind == "earcup":
        feedback = bool(rng.random() < 0.3) if feedback is None else feedback
        secondary_length = int(rng.integers(MIN_PATH_SAMPLES, 513))
        primary_length = int(rng.integers(MIN_PATH_SAMPLES, 385))
        distance = rng.uniform(0.003, 0.015)
        direct = _delay(distance, secondary_length, rng.uniform(0.6, 1.0))
        for _ in range(int(rng.integers(1, 4))):  # ear, cup walls
            direct += lowpass(_delay(distance + rng.uniform(0.01, 0.05), secondary_length, rng.uniform(0.05, 0.25)),
                              rng.uniform(1500, 5000))
        direct += _reverb_tail(rng, secondary_length, 16, _decay_for(secondary_length) / 2, 0.02, 2000.0)
        secondary = loudspeaker(direct, rng.uniform(60, 200), rng.uniform(0.7, 1.5), rng.uniform(5000, 9000))
        primary = lowpass(_delay(rng.uniform(0.01, 0.04), primary_length, rng.uniform(0.5, 0.9)),
                          rng.uniform(200, 600), rng.uniform(0.8, 1.5))
        feedback_path = None
        if feedback:
            # A vented or open-back cup: the driver leaks to the outer mic, 20-30 dB down.
            feedback_path = loudspeaker(_delay(rng.uniform(0.02, 0.05), 128, rng.uniform(0.03, 0.1)),
                                        rng.uniform(60, 200), 1.0, 6000.0)
        sensor_noise = float(rng.uniform(-95, -85))
        description = f"random earcup (seed {seed}): driver {distance * 1000:.0f} mm from the error mic"
    else:
        feedback = bool(rng.random() < 0.7) if feedback is None else feedback
        long_tail = kind == "room"
        low, high = (768, MAX_PATH_SAMPLES) if long_tail else (384, 1024)
        secondary_length = int(rng.integers(low, high + 1))
        primary_length = int(rng.integers(low, high + 1))
        speaker_to_error = rng.uniform(0.1, 1.0)
        reference_to_error = speaker_to_error + rng.uniform(0.3, 1.5)
        resonance = rng.uniform(50, 120)
        breakup = rng.uniform(3000, 6000)
        direct = _delay(speaker_to_error, secondary_length, rng.uniform(0.5, 0.9))
        direct += _delay(speaker_to_error + rng.uniform(0.2, 0.6), secondary_length, rng.uniform(0.1, 0.3))
        tail_level = rng.uniform(0.03, 0.08) if long_tail else rng.uniform(0.01, 0.04)
        direct += _reverb_tail(rng, secondary_length, int(speaker_to_error / SPEED_OF_SOUND * SAMPLE_RATE) + 8,
                               _decay_for(secondary_length), tail_level, rng.uniform(1000, 3000))
        secondary = loudspeaker(direct, resonance, rng.uniform(0.7, 1.2), breakup)
        primary = lowpass(_delay(reference_to_error, primary_length, rng.uniform(0.6, 0.95)), rng.uniform(2500, 5000))
        primary += lowpass(_delay(reference_to_error + rng.uniform(0.5, 2.0), primary_length, rng.uniform(0.1, 0.3)),
                           rng.uniform(500, 1500))
        primary += _reverb_tail(rng, primary_length, int(reference_to_error / SPEED_OF_SOUND * SAMPLE_RATE) + 8,
                                _decay_for(primary_length), tail_level, rng.uniform(800, 2500))
        feedback_path = None
        if feedback:
            gain = 10 ** (rng.uniform(-20, -3) / 20)
            feedback_length = int(rng.integers(256, max(257, secondary_length // 2 + 1)))
            leak = _delay(reference_to_error - speaker_to_error, feedback_length, gain)
            leak += _reverb_tail(rng, feedback_length, 32, _decay_for(feedback_length), tail_level * gain, 1500.0)
            feedback_path = _taper(loudspeaker(leak, resonance, 1.0, breakup), feedback_length)
        sensor_noise = float(rng.uniform(-95, -80))
        description = (f"random {kind} (seed {seed}): speaker {speaker_to_error:.2f} m, reference mic "
                       f"{reference_to_error:.2f} m from the error mic")
    return Plant(
        name=f"{kind}-{seed}{'-fb' if feedback_path is not None else ''}",
        sample_rate=SAMPLE_RATE,
        latency_samples=latency,
        primary_path=_taper(primary, primary.size),
        secondary_path=_taper(secondary, secondary.size),
        reference_path=np.array([1.0]),
        feedback_path=feedback_path,
        sensor_noise_dbfs=sensor_noise,
        source=f"simulator.rigs.random_plant({seed}, {kind!r})",
        description=description,
    )


def changed_secondary_path(plant: Plant, seed: int) -> np.ndarray:
    """The secondary path after the speaker or cup moved: 2-12 samples more or less delay,
    -4..+2 dB, the resonance shifted, some new reflections. The same for the same seed."""
    rng = np.random.default_rng([seed, 9203])
    length = plant.secondary_path.size
    shift = int(rng.integers(2, 13)) * (1 if rng.random() < 0.5 else -1)
    moved = np.zeros(length)
    if shift >= 0:
        moved[shift:] = plant.secondary_path[:length - shift]
    else:
        # Moving closer: the onset comes earlier (never before sample 0).
        first = int(np.argmax(np.abs(plant.secondary_path) > 1e-3 * np.max(np.abs(plant.secondary_path))))
        shift = max(shift, -first)
        moved[:length + shift] = plant.secondary_path[-shift:]
    moved *= 10 ** (rng.uniform(-4, 2) / 20)
    moved = lowpass(moved, rng.uniform(2000, 8000), rng.uniform(0.6, 0.9))
    moved += 0.1 * np.max(np.abs(moved)) * _reverb_tail(rng, length, length // 8, _decay_for(length) / 2, 1.0, 2000.0)
    return _taper(moved, length)


def write_plant(plant: Plant, directory: str | Path, path_changes: list[dict] | None = None) -> Path:
    """Write `plant` as NAME.yaml plus .npy responses in `directory`; `path_changes` entries
    are {"at_s": float, "secondary_path": array, optionally "feedback_path": array}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec: dict = {"name": plant.name, "description": plant.description, "sample_rate": plant.sample_rate,
                  "latency_samples": plant.latency_samples}
    for key in ("primary_path", "secondary_path", "reference_path", "feedback_path"):
        value = getattr(plant, key)
        if value is not None:
            np.save(directory / f"{plant.name}_{key}.npy", value)
            spec[key] = f"{plant.name}_{key}.npy"
    if plant.sensor_noise_dbfs is not None:
        spec["sensor_noise_dbfs"] = plant.sensor_noise_dbfs
    if path_changes:
        spec["path_changes"] = []
        for index, change in enumerate(path_changes):
            entry = {"at_s": float(change["at_s"])}
            for key in ("secondary_path", "feedback_path"):
                if change.get(key) is not None:
                    name = f"{plant.name}_change{index}_{key}.npy"
                    np.save(directory / name, np.asarray(change[key], dtype=np.float64))
                    entry[key] = name
            spec["path_changes"].append(entry)
    path = directory / f"{plant.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
