"""Warning-sound detector, measured: detection rate and latency per kind and SNR, and false
detections per hour on real recordings with no alarm in them.

    python bench/alarms.py [--trials 12] [--set all|tuning|held-out] [--markdown] [--cost]
                           [--snr -5 --snr 0] [--sound car_horn] [--generated-s 300 --seeds 3] [--mixtures-h 3] [--no-false]

Alarms come from `simulator.alarm_sounds` with seeded parameters (siren sweeps and rates,
alarm pitches and cadences, horn pitches), mixed 1.0 s into the real recordings of
../shared/data/noise and into the bundled scenes, at SNRs from -15 to +10 dB (the alarm's
power while it sounds over the noise's power over the same samples). The recordings are split
by file into a tuning half (even positions in each class, sorted by name) and a held-out half
(odd positions); the thresholds were chosen looking at the tuning half only. `--set` picks
which half the noise comes from; false detections are counted on every recording (and the
bundled scenes) played alone, and on seeded noise from the scene generator
(`simulator.scenes.generate_scene`: every class, `--seeds` seeds, `--generated-s` seconds
each), and with `--mixtures-h H` on H hours of seeded mixtures of two different real
recordings (`real_mixtures`: more hours of noise made only of recorded sound than the
recordings hold alone, though not of more sources). The false rate is given per hour with
the hours behind it and its one-sided 95% upper bound (Poisson: k events in T hours allow up
to chi2(0.95, 2k + 2) / 2T per hour; zero events give 3.0 / T).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from device.contract.config import load_config  # noqa: E402
from device.core.alarms import AlarmDetector, DetectorSettings  # noqa: E402
from simulator.scenes import SCENE_TYPES, generate_scene  # noqa: E402
from simulator.alarm_sounds import VARIANTS, alarm, mix_at_snr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The recordings sit beside the repository (../shared/data/noise); --noise-dir overrides.
NOISE_DIR = next((d for d in (os.path.join(ROOT, "..", "shared", "data", "noise"),
                              os.path.join(ROOT, "..", "..", "shared", "data", "noise")) if os.path.isdir(d)),
                 os.path.join(ROOT, "..", "shared", "data", "noise"))
SCENES = sorted(glob.glob(os.path.join(ROOT, "simulator", "scenes", "*.wav")))
SNRS_DB = (-15, -10, -5, 0, 5, 10)
ONSET_S = 1.0
ALARM_S = 2.5
TARGET_S = 0.3


def recordings(which: str) -> list[str]:
    files = []
    for folder in sorted(glob.glob(os.path.join(NOISE_DIR, "*"))):
        names = sorted(glob.glob(os.path.join(folder, "*.wav")))
        if which == "tuning":
            names = names[0::2]
        elif which == "held-out":
            names = names[1::2]
        files += names
    return files


def read(path: str) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(path, dtype="float64", always_2d=True)
    return samples[:, 0], rate


def detect(samples: np.ndarray, rate: int, settings: DetectorSettings, block: int = 512) -> list:
    detector = AlarmDetector(rate, settings)
    events = []
    for start in range(0, samples.size, block):
        for event in detector.process(samples[start:start + block]):
            if event not in events:
                events.append(event)
    detector.finish(samples.size / rate)
    return events


def poisson_upper_per_hour(events: int, hours: float, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a Poisson rate from `events` seen in `hours`."""
    from scipy.stats import chi2
    return float(chi2.ppf(confidence, 2 * events + 2) / 2.0 / hours)


def false_detections(settings: DetectorSettings, generated_s: float, seeds: int,
                     mixtures_h: float = 0.0) -> list[tuple[str, float, list]]:
    """(source, seconds, [(name, kind, start_s)]) per kind of noise with no alarm in it."""
    sources = []
    for label, paths in (("real recordings", recordings("all")), ("bundled scenes", SCENES)):
        seconds, events = 0.0, []
        for path in paths:
            samples, rate = read(path)
            seconds += samples.size / rate
            name = os.path.relpath(path, NOISE_DIR) if label == "real recordings" else os.path.basename(path)
            events += [(name, e.kind, e.start_s) for e in detect(samples, rate, settings)]
        sources.append((label, seconds, events))
    if generated_s > 0 and seeds > 0:
        seconds, events, rate = 0.0, [], 16000
        for kind in SCENE_TYPES:
            for seed in range(seeds):
                samples = generate_scene(kind, generated_s, rate, seed=100 + seed)
                seconds += samples.size / rate
                events += [(f"generated {kind} seed {100 + seed}", e.kind, e.start_s)
                           for e in detect(samples, rate, settings)]
        sources.append(("generated scenes", seconds, events))
    if mixtures_h > 0:
        seconds, events = 0.0, []
        for name, samples, rate in real_mixtures(mixtures_h):
            seconds += samples.size / rate
            events += [(name, e.kind, e.start_s) for e in detect(samples, rate, settings)]
        sources.append(("mixtures of two real recordings", seconds, events))
    return sources


def real_mixtures(hours: float, seed: int = 0):
    """Noise made of the real recordings only, for a false rate over more hours than they hold:
    seeded pairs of two different recordings (any classes), the second scaled to a power 0 to
    12 dB under the first's and added sample for sample over the shorter one's length (no
    looping: a loop point would be an onset no recording has). Each pair is used once. Yields
    (name, samples, rate)."""
    files = recordings("all")
    rng = np.random.default_rng(seed)
    used, seconds = set(), 0.0
    while seconds < hours * 3600 and len(used) < len(files) * (len(files) - 1):
        a, b = (int(i) for i in rng.choice(len(files), 2, replace=False))
        if (a, b) in used:
            continue
        used.add((a, b))
        first, rate = read(files[a])
        second, second_rate = read(files[b])
        if second_rate != rate:
            continue
        n = min(first.size, second.size)
        gain_db = -float(rng.uniform(0.0, 12.0))
        power = np.mean(first[:n] ** 2) / max(np.mean(second[:n] ** 2), 1e-20)
        mixed = first[:n] + second[:n] * np.sqrt(power * 10 ** (gain_db / 10))
        seconds += n / rate
        yield (f"{os.path.relpath(files[a], NOISE_DIR)} + {os.path.relpath(files[b], NOISE_DIR)} at {gain_db:.1f} dB",
               mixed, rate)


def main() -> int:
    global NOISE_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="mixtures per kind and SNR (default 12)")
    parser.add_argument("--set", default="all", choices=("all", "tuning", "held-out"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--cost", action="store_true", help="also time the detector per second of audio")
    parser.add_argument("--noise-dir", help="folder of class folders of WAV recordings (default ../shared/data/noise)")
    parser.add_argument("--config", help="YAML overriding config/default.yaml (the alarms section)")
    parser.add_argument("--snr", type=int, action="append", help="only this SNR in dB (repeatable; default all)")
    parser.add_argument("--sound", action="append", choices=list(VARIANTS), help="only this sound (repeatable)")
    parser.add_argument("--generated-s", type=float, default=300.0,
                        help="seconds of each generated noise class and seed for the false rate (default 300)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per generated noise class (default 3)")
    parser.add_argument("--no-false", action="store_true", help="skip the false-detection count")
    parser.add_argument("--mixtures-h", type=float, default=0.0,
                        help="hours of seeded mixtures of two real recordings for the false rate (default 0: none)")
    args = parser.parse_args()
    settings = DetectorSettings.from_config(load_config(args.config).alarms)
    if args.noise_dir:
        NOISE_DIR = os.path.abspath(args.noise_dir)
    all_noise = recordings("all")
    if not all_noise:
        print(f"no recordings under {NOISE_DIR}", file=sys.stderr)
        return 2

    sources = [] if args.no_false else false_detections(settings, args.generated_s, args.seeds, args.mixtures_h)

    noise = recordings(args.set) + SCENES
    rows = []
    for variant, kind in VARIANTS.items():
        if args.sound and variant not in args.sound:
            continue
        for snr in args.snr or SNRS_DB:
            latencies, right_kind, trials = [], 0, 0
            for trial in range(args.trials):
                rng = np.random.default_rng([trial, snr + 100, len(variant)])
                samples, rate = read(noise[int(rng.integers(len(noise)))])
                if samples.size < int((ONSET_S + ALARM_S) * rate):
                    samples = np.tile(samples, 2)
                sound, on = alarm(variant, ALARM_S, rate, seed=trial)
                mixed = mix_at_snr(samples, sound, on, ONSET_S, snr, rate)
                trials += 1
                hits = [e for e in detect(mixed, rate, settings)
                        if ONSET_S - 0.05 <= e.detected_s <= ONSET_S + ALARM_S]
                if hits:
                    latencies.append(hits[0].detected_s - ONSET_S)
                    right_kind += hits[0].kind == kind
            latency = np.array(latencies)
            rows.append((variant, snr, trials, latency.size, int(np.sum(latency <= TARGET_S)),
                         None if not latency.size else float(np.median(latency)),
                         None if not latency.size else float(np.max(latency)), right_kind))

    def ms(value):
        return "-" if value is None else f"{value * 1e3:.0f}"

    header = ("sound", "SNR dB", "detected", f"within {TARGET_S * 1e3:.0f} ms", "median latency ms",
              "max latency ms", "kind right")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("  ".join(f"{h:>16}" for h in header))
    for variant, snr, trials, detected, in_time, median, worst, right in rows:
        cells = (variant, f"{snr:+d}", f"{detected}/{trials}", f"{in_time}/{trials}", ms(median), ms(worst),
                 f"{right}/{detected}" if detected else "-")
        print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(f"{c:>16}" for c in cells))
    print(f"\nnoise for the mixtures: {args.set} recordings ({len(noise) - len(SCENES)} files) + {len(SCENES)} bundled scenes")
    if sources:
        total_s = sum(seconds for _, seconds, _ in sources)
        total = sum(len(events) for _, _, events in sources)
        for label, seconds, events in sources:
            print(f"false detections, {label}: {len(events)} in {seconds / 3600:.2f} h "
                  f"({len(events) / (seconds / 3600):.2f} per hour, 95% upper bound "
                  f"{poisson_upper_per_hour(len(events), seconds / 3600):.2f} per hour)")
            for name, kind, start in events:
                print(f"  {name}: {kind} at {start:.2f} s")
        print(f"false detections, all noise with no alarm: {total} in {total_s / 3600:.2f} h "
              f"({total / (total_s / 3600):.2f} per hour, 95% upper bound "
              f"{poisson_upper_per_hour(total, total_s / 3600):.2f} per hour)")
    if args.cost:
        samples, rate = read(all_noise[0])
        samples = np.tile(samples, max(1, int(60 * rate / samples.size)))
        best = 1e9
        for _ in range(3):
            started = time.perf_counter()
            detect(samples, rate, settings, block=rate // 100)
            best = min(best, time.perf_counter() - started)
        print(f"cost: {best / (samples.size / rate) * 1e3:.2f} ms of CPU per second of {rate} Hz audio "
              f"(best of 3 over {samples.size / rate:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
