"""The two weight updates (`controller.algorithm`: time, partitioned) side by side on the
cancellation matrix, fast: the engine alone in closed loop with the plant's true secondary
(and feedback) path, no identification, no worker, no optimum. It isolates the update from
identification and the runtime's guards; `bench/cancellation.py` is the product-level figure.

Per pair and variant: steady-state attenuation (last 3 s), time to 10 dB (first 1 s window
from the start attenuated by 10 dB or more, 100 ms hops), watchdog trips, then a summary per
variant: pairs better / worse than the first variant by more than 1 dB, and trips.

    python bench/algorithms.py [--seconds 8] [--jobs 2] [--only PLANT/SCENE ...]
                               [--variant '{"algorithm": "time"}' --variant '{"update_block": 128}' ...]

Variants are JSON objects of `controller` keys over the defaults (default: time, then
partitioned). Controller lengths are those `auto` chose in docs/cancellation.md's table.
Deterministic (seeded plants, scenes and simulator).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

import cancellation  # noqa: E402

SAMPLE_RATE = 48000
# The controller lengths `auto` chose per (plant, scene) in the 2026-12-01 table.
TAPS = {
    "headphone": {"engine_orders": 1024, "hum": 1024, "rumble300": 384, "pink": 1024, "traffic": 768, "cafe": 384,
                  "construction": 640},
    "duct": {"engine_orders": 1024, "hum": 1024, "rumble300": 256, "pink": 1024, "traffic": 768, "cafe": 256,
             "construction": 640},
    "earcup-11": {"engine_orders": 1024, "hum": 1024, "rumble300": 768, "pink": 1024, "traffic": 768, "cafe": 768,
                  "construction": 768},
    "earcup-12": {"engine_orders": 1024, "hum": 1024, "rumble300": 448, "pink": 1024, "traffic": 768, "cafe": 448,
                  "construction": 640},
    "duct-13": {"engine_orders": 1024, "hum": 1024, "rumble300": 896, "pink": 1024, "traffic": 896, "cafe": 896,
                "construction": 896},
    "duct-14": {"engine_orders": 1024, "hum": 1024, "rumble300": 768, "pink": 1024, "traffic": 768, "cafe": 768,
                "construction": 768},
    "room-15": {scene: 1024 for scene in ("engine_orders", "hum", "rumble300", "pink", "traffic", "cafe", "construction")},
    "room-16": {scene: 1024 for scene in ("engine_orders", "hum", "rumble300", "pink", "traffic", "cafe", "construction")},
}


def _plant(name: str):
    from simulator.plant import Plant
    from simulator.rigs import random_plant

    if name in ("headphone", "duct"):
        return Plant.load(name)
    kind, seed = name.split("-")
    feedback = {(k, s): f for k, s, f in cancellation.RANDOM_RIGS}[(kind, int(seed))]
    return random_plant(int(seed), kind, feedback)


def _scene(name: str, seconds: float) -> np.ndarray:
    if name in cancellation.SYNTHETIC:
        return cancellation.synthetic_scene(name, seconds)
    samples, rate = cancellation.recording_scene(name, seconds)
    if rate != SAMPLE_RATE:
        import scipy.signal

        samples = scipy.signal.resample_poly(samples, SAMPLE_RATE, rate)
    return samples


def _attenuation(off: np.ndarray, on: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(off ** 2) / max(np.mean(on ** 2), 1e-30)))


def run(job: tuple[str, str, str, float]) -> dict:
    from device.contract.config import load_config
    from device.core.engine import AncEngine
    from simulator.closed_loop import run_closed_loop

    pair, variant_json, seconds = job[0], job[1], job[2]
    plant_name, scene_name = pair.split("/")
    plant = _plant(plant_name)
    cfg = load_config().replace("controller", taps=TAPS[plant_name][scene_name], **json.loads(variant_json))
    path = plant.full_secondary_path()
    energy = np.cumsum(path ** 2) / np.sum(path ** 2)
    path = path[:int(np.searchsorted(energy, 1.0 - 1e-5)) + 1]
    feedback = None
    if plant.feedback_path is not None:
        feedback = plant.full_feedback_path()
        cfg = cfg.replace("controller", feedback_neutralization=True)
    engine = AncEngine.from_config(cfg, path, feedback)
    result = run_closed_loop(_scene(scene_name, seconds), plant, lambda r, e, o, m: engine.process(r, e, o), 32, seed=0)
    off, on, fs = result.error_off, result.error_on, SAMPLE_RATE
    hop = fs // 10
    t10 = next((k / 10 for k in range(0, (on.size - fs) // hop + 1)
                if _attenuation(off[k * hop:k * hop + fs], on[k * hop:k * hop + fs]) >= 10.0), None)
    return {"pair": pair, "variant": variant_json, "attenuation_db": round(_attenuation(off[-3 * fs:], on[-3 * fs:]), 1),
            "t10_s": t10, "trips": int(engine.snapshot()["watchdog_trips"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="PLANT/SCENE")
    parser.add_argument("--variant", action="append", metavar="JSON")
    args = parser.parse_args()
    variants = [json.dumps(json.loads(v), sort_keys=True) for v in (args.variant or ['{"algorithm": "time"}',
                                                                                     '{"algorithm": "partitioned"}'])]
    pairs = [f"{plant}/{scene}" for plant, scenes in TAPS.items() for scene in scenes]
    if args.only:
        pairs = [pair for pair in pairs if pair in args.only]
    jobs = [(pair, variant, args.seconds) for pair, variant in itertools.product(pairs, variants)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run, jobs))
    by_pair: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_pair.setdefault(row["pair"], {})[row["variant"]] = row
    print(f"{'pair':<28}" + "".join(f"{v:>34}" for v in variants))
    for pair, results in by_pair.items():
        cells = [f"{results[v]['attenuation_db']:6.1f} dB t10 {results[v]['t10_s'] if results[v]['t10_s'] is not None else '-':>4} "
                 f"trips {results[v]['trips']}" for v in variants]
        print(f"{pair:<28}" + "".join(f"{cell:>34}" for cell in cells))
    first = variants[0]
    for variant in variants:
        better = sum(r[variant]["attenuation_db"] > r[first]["attenuation_db"] + 1.0 for r in by_pair.values())
        worse = sum(r[variant]["attenuation_db"] < r[first]["attenuation_db"] - 1.0 for r in by_pair.values())
        trips = sum(r[variant]["trips"] for r in by_pair.values())
        median = np.median([r[variant]["attenuation_db"] for r in by_pair.values()])
        print(f"{variant}: median {median:.1f} dB; {better} pairs > 1 dB better and {worse} > 1 dB worse than "
              f"{first}; {trips} watchdog trips in {sum(r[variant]['trips'] > 0 for r in by_pair.values())} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
