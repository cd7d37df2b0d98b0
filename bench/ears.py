"""Two ears against each ear alone: does a second cup (and its crosstalk) cost cancellation?

    python bench/ears.py [--scene simulator/scenes/engine_hum.wav] [--plant headphone-stereo]
    python bench/ears.py --callback [--seconds 10] [--taps 512]

Runs the whole two-ear simulation (`simulator.ears.simulate_ears`) on the plant with crosstalk,
without it, and on each ear alone (the other cup taken off), and prints each ear's steady-state
attenuation and its difference to the ear alone. Deterministic: the figures do not move with
the machine's load (the speed column does).

`--callback`: the cost of the rig's whole audio callback (`DuplexStream`: the copies out of
the card's interleaved buffer, the kernel call, the ring pushes, with two ears the reference
mix for the classifier, the copies back) for one ear and for two, on the cups' identified
paths, with the classifier on. Each callback is timed alone; the workers drain the rings
between timed callbacks, as their thread does on the device. Prints p50/p99/max in us and the
share of the 32-sample block period. These figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def callback_cost(seconds: float, taps: int, rounds: int = 3) -> None:
    import gc
    import time

    import numpy as np

    from device.contract.config import EarChannels, load_config
    from device.core.ears import compose_ears_session
    from device.core.session import compose_session
    from device.rig.audio import DuplexStream, StreamSpec
    from simulator.ears import EarsPlant
    from simulator.run import identify_rig_of_plant

    cfg = load_config().replace("controller", taps=taps)
    plant = EarsPlant.load("headphone-stereo")
    estimates = {name: identify_rig_of_plant(cfg, plant.ears[name], seed=k).secondary.estimate
                 for k, name in enumerate(plant.names)}
    fs, block = cfg.audio.sample_rate, cfg.audio.block_size
    period_us = 1e6 * block / fs
    one = compose_session(cfg, estimates["left"], None, sample_rate=fs, block_size=block)
    two = compose_ears_session({name: cfg for name in plant.names}, list(estimates.values()), [None, None],
                               sample_rate=fs, block_size=block)
    ears = (EarChannels("left", 0, 1, 0), EarChannels("right", 2, 3, 1))
    streams = {
        1: (one, DuplexStream(None, StreamSpec(0, 0, "bench", "bench", "none", fs, block, 2, 1, 0, 1, 0), one), 2, 1),
        2: (two, DuplexStream(None, StreamSpec(0, 0, "bench", "bench", "none", fs, block, 4, 2, 0, 1, 0, ears=ears),
                              two), 4, 2),
    }
    blocks = int(seconds * fs / block)
    rng = np.random.default_rng(1)
    t = np.arange(blocks * block) / fs
    tone = (0.1 * np.sin(2 * np.pi * 180 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    wall = {1: [], 2: []}
    cpu = {1: 0.0, 2: 0.0}
    # As the supervisor runs the device: no garbage collection can start inside a callback.
    gc.collect()
    gc.freeze()
    gc.disable()
    clock, thread_clock = time.perf_counter, time.thread_time
    for _ in range(rounds):   # one and two ears in turn, so both meet the same load of the machine
        for count, (session, stream, inputs, outputs) in streams.items():
            callback = stream._ears_callback if count > 1 else stream._callback
            indata = np.zeros((block, inputs), dtype=np.float32)
            outdata = np.zeros((block, outputs), dtype=np.float32)
            durations = np.empty(blocks)
            for k in range(blocks):
                indata[:] = tone[k * block:(k + 1) * block, None]
                started, started_cpu = clock(), thread_clock()
                callback(indata, outdata, block, None, None)
                cpu[count] += thread_clock() - started_cpu
                durations[k] = clock() - started
                if k % 30 == 29:
                    session.poll()   # the worker's share, outside the timed callbacks
            wall[count].append(durations)
    gc.enable()
    one.stop()
    two.stop()
    print(f"rig callback, {taps} taps, block {block} ({period_us:.1f} us period), {rounds} x {seconds:.0f} s of audio "
          f"per run, classifier on; secondary-path estimates "
          f"{', '.join(f'{n} {e.size}' for n, e in estimates.items())} taps")
    print("| ears | CPU us per callback (thread time, mean) | wall p50 us | wall p99 us | wall max us | "
          "p99 share of the period |")
    print("|---|---|---|---|---|---|")
    for count in (1, 2):
        durations = np.concatenate(wall[count])
        p50, p99, top = (1e6 * value for value in (np.percentile(durations, 50), np.percentile(durations, 99),
                                                  durations.max()))
        print(f"| {count} | {1e6 * cpu[count] / durations.size:.1f} | {p50:.1f} | {p99:.1f} | {top:.0f} | "
              f"{p99 / period_us:.3f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default=str(ROOT / "simulator" / "scenes" / "engine_hum.wav"))
    parser.add_argument("--plant", default="headphone-stereo")
    parser.add_argument("--callback", action="store_true", help="time the rig's audio callback for one and two ears")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per callback run")
    parser.add_argument("--taps", type=int, default=512, help="controller taps of the callback runs")
    args = parser.parse_args(argv)
    if args.callback:
        callback_cost(args.seconds, args.taps)
        return 0

    from device.contract.config import load_config
    from simulator.ears import EarsPlant, simulate_ears

    cfg = load_config()
    plant = EarsPlant.load(args.plant)
    alone = {}
    for name in plant.names:
        alone[name] = simulate_ears(args.scene, cfg, plant.only(name)).summary["ears"][name]
    print(f"scene {Path(args.scene).name}, plant {plant.name}: steady-state attenuation per ear, dB "
          f"(overall / 50-1000 Hz band), and the difference to the ear alone")
    print("| run | " + " | ".join(f"{name} | {name} - alone" for name in plant.names) + " | watchdog trips |")
    print("|---|" + "---|---|" * len(plant.names) + "---|")
    print("| each ear alone | " + " | ".join(f"{alone[n]['attenuation_db']:.2f} / {alone[n]['attenuation_band_db']:.2f} | -"
                                            for n in plant.names)
          + f" | {sum(alone[n]['watchdog_trips'] for n in plant.names)} |")
    for label, variant in (("both ears, crosstalk on", plant), ("both ears, crosstalk off", plant.without_crosstalk())):
        ears = simulate_ears(args.scene, cfg, variant).summary["ears"]
        cells = [f"{ears[n]['attenuation_db']:.2f} / {ears[n]['attenuation_band_db']:.2f} | "
                 f"{ears[n]['attenuation_db'] - alone[n]['attenuation_db']:+.2f}" for n in plant.names]
        print(f"| {label} | " + " | ".join(cells) + f" | {sum(ears[n]['watchdog_trips'] for n in plant.names)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
