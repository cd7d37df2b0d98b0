"""The plant emulator: the simulator's Plant model as a JACK client, for the hardware-in-the-loop bench.

It registers two output ports, `reference_mic` and `error_mic`, and one input port,
`speaker`. PortAudio's JACK host API shows each JACK client as a device named after it, so
a duplex stream opened on the device `anc-plant` auto-connects: input channel 0 is the
reference mic, input channel 1 the error mic, output channel 0 the speaker. Every JACK
period it plays the scene (looped) through the plant:

    ref = reference_path * s + feedback_path * speaker + noise
    err = primary_path   * s + secondary_path * speaker + noise

with the speaker delayed so that the whole digital loop (stream output -> JACK -> emulator
-> JACK -> stream input) lasts the plant's `latency_samples`, as in `simulator/plant.py`.

Measured on jackd 1.9.21 (dummy driver) with PortAudio 19.6 through `sounddevice`: a
sample a duplex stream writes at its frame k comes back on its input at frame
k + 2 periods when the stream's block size equals the JACK period and this client passes
the speaker straight through (one period because the graph has a cycle, one for
PortAudio's fixed-size block processing). With `blocksize=0` (PortAudio takes JACK's
buffer as it comes) it is one period, with a block of two periods three. The emulator adds
`latency_samples - 2 periods`, so a plant whose latency is shorter than two periods is
refused: the emulator cannot play the speaker back earlier than the server does.

The scene part of both microphones does not depend on the loop, so it is computed once as
a circular convolution over the whole scene (the loop is seamless) together with the
sensor noise. The speaker part is a streaming convolution: a preallocated history of the
speaker, double-length so the last N samples are one contiguous slice, multiplied by a
precomputed Toeplitz matrix (one `matmul` into a preallocated block; measured 3-8 us a
period for 32-64 samples and 264-520 taps, against ~35 us for an FFT overlap-save whose
cost here is Python overhead).

The emulator keeps the ground truth, the disturbance (primary_path * s + noise) and the
error it emitted, over the last `record_seconds`, so the attenuation the controller reaches
can be measured at the ear rather than as the device estimates it (`attenuation_db`).

A plant with ears (`simulator.ears.EarsPlant`, e.g. `headphone-stereo`) gives one set of ports
per ear, registered ear by ear so that PortAudio numbers them in that order: outputs
`EAR_reference_mic`, `EAR_error_mic` (input channels 2k and 2k + 1 of the stream for ear k)
and input `EAR_speaker` (output channel k). Each speaker reaches its own ear's mics through
that ear's paths and every other ear's error mic through its `crosstalk_path`; a mono scene
reaches every ear (through each ear's own paths), a scene with one channel per ear feeds each
ear its own. `recorded`, `attenuation_db` and `summary` take the ear's name.

JACK freewheel mode (`set_freewheel(True)`) runs the same callbacks as fast as the CPU
allows, without deadlines: runs are faster than real time and deterministic. JACK 1.9.21
hangs (a client's semaphore "already deallocated", then the server stops answering) if a
client closes while the server freewheels; stop freewheeling before any client closes.

Command line, for the bench (runs until SIGTERM or Ctrl-C):

    python -m simulator.jack_plant --plant headphone --scene simulator/scenes/engine_hum.wav
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import threading
import time

import numpy as np

from device.contract.errors import UserError
from simulator.plant import Plant

DEFAULT_CLIENT_NAME = "anc-plant"
# Periods a duplex PortAudio stream with block size == JACK period adds between writing a
# sample and reading its echo, when this client passes the speaker straight through.
JACK_ROUND_TRIP_PERIODS = 2
REFERENCE_PORT = "reference_mic"
ERROR_PORT = "error_mic"
SPEAKER_PORT = "speaker"


def circular_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x (one loop of a periodic signal) through h: the steady state of the looped signal."""
    n = x.size
    folded = np.zeros(n)
    # A response longer than the loop wraps around it more than once.
    np.add.at(folded, np.arange(h.size) % n, h)
    return np.fft.irfft(np.fft.rfft(x) * np.fft.rfft(folded), n)


def speaker_matrix(paths: list[np.ndarray], period: int) -> np.ndarray:
    """Toeplitz rows so that `matrix @ history[-N:]` is every path applied to the last period.

    Row i of block p is the output of path p at the i-th sample of the period; the history
    window holds N = period + taps - 1 samples, the newest last.
    """
    taps = max(h.size for h in paths)
    window = period + taps - 1
    matrix = np.zeros((len(paths) * period, window))
    for p, h in enumerate(paths):
        for i in range(period):
            newest = window - period + i
            # out[i] = sum_k h[k] * history[newest - k]
            matrix[p * period + i, newest - h.size + 1:newest + 1] = h[::-1]
    return matrix


class PlantEmulator:
    """A plant as a JACK client. Create, `activate()`, let a device stream connect, `close()`."""

    def __init__(
        self,
        plant,  # a Plant, or a simulator.ears.EarsPlant
        scene: np.ndarray | None = None,
        name: str = DEFAULT_CLIENT_NAME,
        servername: str | None = None,
        seed: int = 0,
        sensor_noise: bool = True,
        record_seconds: float = 30.0,
        round_trip_periods: int = JACK_ROUND_TRIP_PERIODS,
    ):
        import jack

        self.plant = plant
        self.name = name
        try:
            self.client = jack.Client(name, use_exact_name=True, no_start_server=True, servername=servername)
        except jack.JackOpenError as exc:
            server = "" if servername is None else f" as server {servername!r}"
            raise UserError(f"JACK client {name!r}: cannot open ({exc}); is jackd running{server} "
                            f"and the name free?") from None
        try:
            self._setup(plant, scene, seed, sensor_noise, record_seconds, round_trip_periods)
        except BaseException:
            self.client.close()
            raise

    # -- construction --------------------------------------------------------------------
    def _setup(self, plant, scene, seed: int, sensor_noise: bool, record_seconds: float,
               round_trip_periods: int) -> None:
        client = self.client
        self.sample_rate = int(client.samplerate)
        self.period = int(client.blocksize)
        if plant.sample_rate != self.sample_rate:
            raise UserError(f"{plant.source}: sample_rate is {plant.sample_rate} Hz but the JACK server runs at "
                            f"{self.sample_rate} Hz")
        self.round_trip_samples = round_trip_periods * self.period
        if plant.latency_samples < self.round_trip_samples:
            raise UserError(
                f"{plant.source}: latency_samples: {plant.latency_samples} is less than the JACK round trip of "
                f"{self.round_trip_samples} samples ({round_trip_periods} periods of {self.period}); the emulator "
                f"cannot return the speaker sooner than the server does (use a shorter JACK period or a plant "
                f"with latency_samples >= {self.round_trip_samples})")
        self.speaker_delay = plant.latency_samples - self.round_trip_samples
        period = self.period
        several = hasattr(plant, "ears")
        ears = dict(plant.ears) if several else {None: plant}
        crosstalk = dict(plant.crosstalk) if several else {None: None}
        self.ear_names = tuple(ears) if several else ()
        count = len(ears)

        # Scene part of both microphones, one loop, extended by a period so that a period
        # starting anywhere in the loop is one contiguous slice.
        if scene is None:
            loops = [np.zeros(max(period, self.sample_rate))] * count
        else:
            samples = np.asarray(scene, dtype=np.float64)
            if samples.ndim == 2 and samples.shape[1] == 1:
                samples = samples[:, 0]
            if samples.ndim == 1 and samples.size >= period:
                loops = [samples] * count
            elif several and samples.ndim == 2 and samples.shape[1] == count and samples.shape[0] >= period:
                loops = [samples[:, k] for k in range(count)]
            else:
                wanted = "a mono signal" if not several else f"a mono signal or one channel per ear ({count})"
                raise UserError(f"scene: expected {wanted} of at least one period ({period} samples), "
                                f"got shape {samples.shape}")
        self.loop_samples = loops[0].size
        self._ears = []
        for k, (name, ear) in enumerate(ears.items()):
            rng = np.random.default_rng([seed, 2] if not several else [seed, 2, k])
            loop = loops[k]
            n = loop.size
            disturbance_error = circular_convolve(loop, ear.primary_path) if scene is not None else np.zeros(n)
            disturbance_reference = circular_convolve(loop, ear.reference_path) if scene is not None else np.zeros(n)
            if sensor_noise:
                disturbance_reference += ear.sensor_noise(n, rng)
                disturbance_error += ear.sensor_noise(n, rng)
            # Speaker part: the extra delay folded into the paths; rows of the speaker matrix:
            # its own error mic, then its own reference mic (feedback), then the other ears'
            # error mics (crosstalk).
            delay = np.zeros(self.speaker_delay)
            paths = [np.concatenate([delay, ear.secondary_path])]
            has_feedback = ear.feedback_path is not None
            if has_feedback:
                paths.append(np.concatenate([delay, ear.feedback_path]))
            leak = crosstalk[name] if count > 1 else None
            if leak is not None:
                paths.append(np.concatenate([delay, leak]))
            matrix = speaker_matrix(paths, period)
            window = matrix.shape[1]
            ring_size = -(-window // period) * period   # a whole number of periods, so a period never wraps
            self._ears.append(_EarPorts(
                name=name, plant=ear, has_feedback=has_feedback, has_crosstalk=leak is not None,
                disturbance_error=np.concatenate([disturbance_error, disturbance_error[:period]]),
                disturbance_reference=np.concatenate([disturbance_reference, disturbance_reference[:period]]),
                matrix=matrix, window=window, ring_size=ring_size, ring=np.zeros(2 * ring_size),
                speaker_out=np.empty(matrix.shape[0]), error_block=np.empty(period),
                reference_block=np.empty(period)))
        first = self._ears[0]
        self.has_feedback_path = first.has_feedback
        self._matrix = first.matrix
        self._ring_pos = 0
        self._scene_pos = 0

        # Ground truth over the last record_seconds (a whole number of periods).
        self.record_size = max(1, math.ceil(record_seconds * self.sample_rate / period)) * period
        for ear in self._ears:
            ear.recorded_disturbance = np.zeros(self.record_size, dtype=np.float32)
            ear.recorded_error = np.zeros(self.record_size, dtype=np.float32)
            ear.recorded_speaker = np.zeros(self.record_size, dtype=np.float32)

        self.frames = 0                  # frames processed since activation
        self.xruns = 0                   # xruns the server reported
        self.freewheeling = False
        self.server_gone: str | None = None  # reason, once the server shut the client down
        self.callback_error: BaseException | None = None
        self.callback_max_s = 0.0
        self._clock = time.perf_counter

        # Registered ear by ear: PortAudio numbers a client's ports in this order.
        for ear in self._ears:
            prefix = "" if ear.name is None else f"{ear.name}_"
            ear.reference_port = client.outports.register(prefix + REFERENCE_PORT)
            ear.error_port = client.outports.register(prefix + ERROR_PORT)
        for ear in self._ears:
            prefix = "" if ear.name is None else f"{ear.name}_"
            ear.speaker_port = client.inports.register(prefix + SPEAKER_PORT)
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._on_xrun)
        client.set_freewheel_callback(self._on_freewheel)
        client.set_shutdown_callback(self._on_shutdown)
        client.set_blocksize_callback(self._on_blocksize)
        self._active = False
        self._closed = False

    # -- JACK callbacks ------------------------------------------------------------------
    def _process(self, frames: int) -> None:
        import jack

        started = self._clock()
        try:
            period = self.period
            if frames != period:
                raise RuntimeError(f"JACK period changed from {period} to {frames} frames")
            p = self._ring_pos
            s = self._scene_pos
            r = self.frames % self.record_size
            ears = self._ears
            # Every speaker through its paths first: another ear's error mic needs its crosstalk.
            for ear in ears:
                speaker = ear.speaker_port.get_array()
                # Speaker history, written twice so the newest `window` samples are contiguous.
                size = ear.ring_size
                ear.ring[p % size:p % size + period] = speaker
                ear.ring[size + p % size:size + p % size + period] = speaker
                end = size + p % size + period
                np.matmul(ear.matrix, ear.ring[end - ear.window:end], out=ear.speaker_out)
                ear.recorded_speaker[r:r + period] = speaker
            for k, ear in enumerate(ears):
                np.add(ear.disturbance_error[s:s + period], ear.speaker_out[:period], out=ear.error_block)
                for other in ears:
                    if other is not ear and other.has_crosstalk:
                        ear.error_block += other.speaker_out[-period:]
                if ear.has_feedback:
                    np.add(ear.disturbance_reference[s:s + period], ear.speaker_out[period:2 * period],
                           out=ear.reference_block)
                else:
                    ear.reference_block[:] = ear.disturbance_reference[s:s + period]
                ear.error_port.get_array()[:] = ear.error_block
                ear.reference_port.get_array()[:] = ear.reference_block
                ear.recorded_disturbance[r:r + period] = ear.disturbance_error[s:s + period]
                ear.recorded_error[r:r + period] = ear.error_block

            self._ring_pos = p + period
            self._scene_pos = (s + period) % self.loop_samples
            self.frames += period
        except Exception as exc:  # a bug here must not pass for a plant: stop, and say why
            self.callback_error = exc
            raise jack.CallbackExit from None
        elapsed = self._clock() - started
        if elapsed > self.callback_max_s:
            self.callback_max_s = elapsed

    def _on_xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1

    def _on_freewheel(self, starting: bool) -> None:
        self.freewheeling = starting

    def _on_shutdown(self, status, reason: str) -> None:
        self.server_gone = reason or "server shut the client down"

    def _on_blocksize(self, blocksize: int) -> None:
        if self._active and blocksize != self.period:
            self.callback_error = RuntimeError(f"JACK period changed from {self.period} to {blocksize} frames")

    # -- control -------------------------------------------------------------------------
    @property
    def port_names(self) -> dict[str, str]:
        """Port names by role: `reference_mic`, `error_mic`, `speaker`, each prefixed `EAR_` with ears."""
        names = {}
        for ear in self._ears:
            prefix = "" if ear.name is None else f"{ear.name}_"
            names.update({prefix + "reference_mic": ear.reference_port.name, prefix + "error_mic": ear.error_port.name,
                          prefix + "speaker": ear.speaker_port.name})
        return names

    def activate(self) -> "PlantEmulator":
        self.client.activate()
        self._active = True
        return self

    def set_freewheel(self, on: bool, timeout_s: float = 5.0) -> None:
        """Switch the server's freewheel mode and wait until the callback says it did."""
        self.client.set_freewheel(bool(on))
        deadline = time.monotonic() + timeout_s
        while self.freewheeling != bool(on):
            if time.monotonic() > deadline:
                raise TimeoutError(f"JACK did not {'enter' if on else 'leave'} freewheel mode in {timeout_s} s")
            time.sleep(0.002)

    def connected(self) -> bool:
        """True when something is connected to the speaker and to both microphones."""
        ports = [port for ear in self._ears for port in (ear.speaker_port, ear.reference_port, ear.error_port)]
        return all(port.number_of_connections > 0 for port in ports)

    def wait_connected(self, timeout_s: float = 20.0, alive=lambda: True) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.connected():
            self.check()
            if not alive():
                raise RuntimeError("the device process ended before connecting to the emulator")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no stream connected to {self.name} within {timeout_s} s")
            time.sleep(0.01)

    def wait_frames(self, frames: int, timeout_s: float, alive=lambda: True) -> None:
        """Wait until `frames` have been processed since activation."""
        deadline = time.monotonic() + timeout_s
        while self.frames < frames:
            self.check()
            if not alive():
                raise RuntimeError(f"the device process ended after {self.frames} of {frames} frames")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.frames} of {frames} frames processed in {timeout_s} s")
            time.sleep(0.005)

    def check(self) -> None:
        if self.callback_error is not None:
            raise RuntimeError(f"emulator callback failed: {self.callback_error!r}")
        if self.server_gone is not None:
            raise RuntimeError(f"JACK server shut the emulator down: {self.server_gone}")

    def close(self) -> None:
        """Leave freewheel mode, deactivate, close: the client and its ports disappear."""
        if self._closed:
            return
        self._closed = True
        if self.freewheeling and self.server_gone is None:
            try:
                self.set_freewheel(False)
            except Exception:  # closing anyway; the server may be gone
                pass
        if self._active:
            self.client.deactivate()
            self._active = False
        self.client.close()

    def __enter__(self) -> "PlantEmulator":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- ground truth --------------------------------------------------------------------
    def _ear(self, ear: str | None) -> "_EarPorts":
        if ear is None:
            if len(self._ears) > 1:
                raise ValueError(f"the plant has ears {', '.join(self.ear_names)}: name one")
            return self._ears[0]
        for ports in self._ears:
            if ports.name == ear:
                return ports
        raise ValueError(f"no ear {ear!r} (ears: {', '.join(self.ear_names) or 'none'})")

    def recorded(self, last_seconds: float | None = None, ear: str | None = None) -> dict[str, np.ndarray]:
        """Copies of the disturbance, the emitted error and the speaker (of `ear`), oldest first."""
        ports = self._ear(ear)
        available = min(self.frames, self.record_size)
        n = available if last_seconds is None else min(available, int(round(last_seconds * self.sample_rate)))
        end = self.frames % self.record_size
        index = (np.arange(end - n, end)) % self.record_size
        return {
            "disturbance": ports.recorded_disturbance[index].astype(np.float64),
            "error": ports.recorded_error[index].astype(np.float64),
            "speaker": ports.recorded_speaker[index].astype(np.float64),
        }

    def attenuation_db(self, last_seconds: float, ear: str | None = None) -> float:
        """Disturbance power over emitted error power at the error mic (of `ear`), over the last seconds."""
        rec = self.recorded(last_seconds, ear)
        if rec["error"].size == 0:
            raise ValueError("nothing recorded yet")
        disturbance = float(np.sum(rec["disturbance"] ** 2))
        error = float(np.sum(rec["error"] ** 2))
        return 10.0 * math.log10(max(disturbance, 1e-30) / max(error, 1e-30))

    def summary(self, last_seconds: float = 5.0) -> dict:
        recorded = min(self.frames, self.record_size) > 0
        summary = {
            "client": self.name,
            "plant": self.plant.name,
            "sample_rate": self.sample_rate,
            "period": self.period,
            "latency_samples": self.plant.latency_samples,
            "round_trip_samples": self.round_trip_samples,
            "speaker_delay_samples": self.speaker_delay,
            "frames": self.frames,
            "xruns": self.xruns,
            "callback_max_ms": round(self.callback_max_s * 1e3, 4),
            "attenuation_db": None,
            "attenuation_window_s": last_seconds,
        }
        if not self.ear_names:
            summary["attenuation_db"] = round(self.attenuation_db(last_seconds), 2) if recorded else None
        else:
            summary["ears"] = {name: {"attenuation_db": round(self.attenuation_db(last_seconds, name), 2)
                                      if recorded else None} for name in self.ear_names}
            if recorded:
                # Over every ear: the energy of all error mics together.
                records = [self.recorded(last_seconds, name) for name in self.ear_names]
                disturbance = sum(float(np.sum(r["disturbance"] ** 2)) for r in records)
                error = sum(float(np.sum(r["error"] ** 2)) for r in records)
                summary["attenuation_db"] = round(10.0 * math.log10(max(disturbance, 1e-30) / max(error, 1e-30)), 2)
        return summary


@dataclasses.dataclass(eq=False)
class _EarPorts:
    """One ear's ports, its scene part, its speaker's paths and its ground truth."""

    name: str | None
    plant: Plant
    has_feedback: bool
    has_crosstalk: bool
    disturbance_error: np.ndarray
    disturbance_reference: np.ndarray
    matrix: np.ndarray
    window: int
    ring_size: int
    ring: np.ndarray
    speaker_out: np.ndarray
    error_block: np.ndarray
    reference_block: np.ndarray
    recorded_disturbance: np.ndarray | None = None
    recorded_error: np.ndarray | None = None
    recorded_speaker: np.ndarray | None = None
    reference_port: object = None
    error_port: object = None
    speaker_port: object = None


# -- command line ----------------------------------------------------------------------------

def load_plant(name_or_path):
    """A one-ear `Plant`, or an `EarsPlant` when the YAML has `ears:`. Only a plant with ears
    imports `simulator.ears` (which loads numba, for the simulator's closed loop)."""
    from simulator.plant import read_plant_spec

    spec, _ = read_plant_spec(name_or_path)
    if "ears" not in spec:
        return Plant.load(name_or_path)
    from simulator.ears import EarsPlant

    return EarsPlant.load(name_or_path)


def with_latency(plant, latency_samples: int):
    """The plant with another digital loop delay (every ear's, for a plant with ears)."""
    if not hasattr(plant, "ears"):
        return dataclasses.replace(plant, latency_samples=latency_samples)
    return dataclasses.replace(plant, latency_samples=latency_samples,
                               ears={name: dataclasses.replace(ear, latency_samples=latency_samples)
                                     for name, ear in plant.ears.items()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.jack_plant",
        description="Emulate a plant as a JACK client: ports reference_mic, error_mic (out) and speaker (in). "
                    "Runs until SIGTERM or Ctrl-C.")
    parser.add_argument("--plant", default="headphone",
                        help="built-in preset (headphone, duct, headphone-stereo: ports per ear) or plant YAML file")
    parser.add_argument("--scene", help="WAV (or FLAC/OGG) file, read as mono, looped, reaching every ear; "
                        "resampled to the plant rate "
                        "(default: silence, only the sensor noise, as for `anc-device identify`)")
    parser.add_argument("--name", default=DEFAULT_CLIENT_NAME, help="JACK client name, also the PortAudio device name")
    parser.add_argument("--server", help="JACK server name (default: $JACK_DEFAULT_SERVER or 'default')")
    parser.add_argument("--latency-samples", type=int,
                        help="override the plant's digital loop delay (e.g. two periods of 64 plus converters: 136)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sensor noise")
    parser.add_argument("--no-sensor-noise", action="store_true", help="microphones without self-noise")
    parser.add_argument("--freewheel", action="store_true",
                        help="switch the server to freewheel once a stream is connected (faster than real time)")
    parser.add_argument("--report-every", type=float, default=0.0, metavar="S",
                        help="print a status line every S seconds (0: only at start and exit)")
    parser.add_argument("--json", action="store_true", help="status lines as JSON objects")
    return parser


def _print(obj: dict, as_json: bool, text: str) -> None:
    print(json.dumps(obj) if as_json else text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from simulator.scenes import load_scene

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        plant = load_plant(args.plant)
        if args.latency_samples is not None:
            if args.latency_samples < 1:
                raise UserError(f"--latency-samples: expected a positive integer, got {args.latency_samples}")
            plant = with_latency(plant, args.latency_samples)
        scene = None if args.scene is None else load_scene(args.scene, plant.sample_rate)
        emulator = PlantEmulator(plant, None if scene is None else scene.samples, name=args.name,
                                 servername=args.server, seed=args.seed, sensor_noise=not args.no_sensor_noise)
    except UserError as exc:
        print(f"jack_plant: error: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        emulator.activate()
        ready = {"event": "ready", **emulator.summary(), "ports": emulator.port_names}
        playing = "silence" if scene is None else f"scene {args.scene} ({scene.duration_s:.1f} s, looped)"
        _print(ready, args.json,
               f"{emulator.name}: plant {plant.name}, latency {plant.latency_samples} samples "
               f"(JACK round trip {emulator.round_trip_samples} + speaker delay {emulator.speaker_delay}), "
               f"period {emulator.period} at {emulator.sample_rate} Hz, {playing}; "
               f"ports {', '.join(emulator.port_names.values())}")
        freewheel_pending = args.freewheel
        next_report = time.monotonic() + args.report_every if args.report_every > 0 else math.inf
        while not stop.wait(0.05):
            emulator.check()
            if freewheel_pending and emulator.connected():
                emulator.set_freewheel(True)
                freewheel_pending = False
            if time.monotonic() >= next_report:
                next_report += args.report_every
                info = emulator.summary()
                _print({"event": "status", **info}, args.json,
                       f"{info['frames'] / emulator.sample_rate:.1f} s processed, {info['xruns']} xruns, "
                       f"attenuation {info['attenuation_db']} dB over the last {info['attenuation_window_s']} s")
    except RuntimeError as exc:
        print(f"jack_plant: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        emulator.close()
    info = emulator.summary()
    _print({"event": "stopped", **info}, args.json,
           f"{emulator.name}: stopped after {info['frames'] / emulator.sample_rate:.1f} s, {info['xruns']} xruns, "
           f"attenuation {info['attenuation_db']} dB over the last {info['attenuation_window_s']} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
