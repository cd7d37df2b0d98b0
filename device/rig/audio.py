"""The PortAudio edge: devices, and one full-duplex stream feeding a block processor.

Everything that touches `sounddevice` lives here. The rest of the runtime sees blocks:
a *processor* is any object with `process_block(reference, error, out, meta)` (the
controller `Session`, or the probe player of `identify`/`latency`), the same interface the
simulator drives.

`sounddevice` is imported lazily (`import_sounddevice`): PortAudio scans the devices when it
is loaded, so a JACK server or plant emulator started after the import would be invisible,
and a machine without libportaudio2 still gets `--help` and a clear message.

The callback does only this: copy the two microphone channels into preallocated blocks,
one `nogil` numba call (inside `processor.process_block`), copy the speaker block out, push
the block into the preallocated ring and count the status flags. `meta` carries the callback
start time (s, stream clock of this process), the duration of the *previous* callback (s,
measured after the push, so the whole callback is counted) and the PortAudio status flags.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from device.contract.config import Config, EarChannels, ear_channels
from device.contract.errors import UserError

log = logging.getLogger(__name__)

# PortAudio's suggested latency: the smallest the host API allows. The secondary-path estimate
# includes the resulting I/O delay, which is why it must be made with the same setting.
STREAM_LATENCY = "low"


class BlockProcessor(Protocol):
    def process_block(self, reference: np.ndarray, error: np.ndarray, out: np.ndarray, meta: np.ndarray) -> None: ...


# Pa_Initialize opens a client on a running JACK server; a server busy with a graph change (a
# client coming or going, just started) can refuse the activation once. A few tries a moment
# apart ride that out; a server that keeps refusing is a real fault and is reported.
PORTAUDIO_INIT_ATTEMPTS = 5
PORTAUDIO_INIT_RETRY_S = 0.3


def import_sounddevice(attempts: int = PORTAUDIO_INIT_ATTEMPTS):
    """The `sounddevice` module, or a UserError that says which system package is missing or
    why PortAudio would not initialize."""
    for attempt in range(attempts):
        try:
            import sounddevice
            return sounddevice
        except OSError as exc:  # the Python package is there but the PortAudio library is not
            raise UserError(f"cannot load PortAudio ({exc}); "
                            "install it with `sudo apt-get install libportaudio2`") from None
        except Exception as exc:  # sounddevice.PortAudioError from Pa_Initialize at import
            if type(exc).__name__ != "PortAudioError":
                raise
            # A failed import leaves no module behind, so the next import initializes afresh.
            if attempt + 1 == attempts:
                raise UserError(f"cannot initialize PortAudio after {attempts} tries: {exc}") from None
            time.sleep(PORTAUDIO_INIT_RETRY_S)
    raise AssertionError("unreachable")


def rescan_devices(sd) -> None:
    """Make PortAudio enumerate devices again (a USB card or JACK client came back).
    sounddevice has no public call for this; terminating and re-initializing the library is
    the documented way and is only done while no stream is open."""
    sd._terminate()
    for attempt in range(PORTAUDIO_INIT_ATTEMPTS):
        try:
            sd._initialize()
            return
        except sd.PortAudioError as exc:  # see PORTAUDIO_INIT_ATTEMPTS
            if attempt + 1 == PORTAUDIO_INIT_ATTEMPTS:
                raise UserError(f"cannot initialize PortAudio again after {PORTAUDIO_INIT_ATTEMPTS} tries: {exc}") from None
            time.sleep(PORTAUDIO_INIT_RETRY_S)


# -- device selection --------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    """Which devices and channels the duplex stream uses, resolved against PortAudio."""

    input_index: int
    output_index: int
    input_name: str
    output_name: str
    host_api: str
    sample_rate: int
    block_size: int
    input_channels: int     # channels opened on the input device (covers both microphones)
    output_channels: int    # channels opened on the output device (covers the speaker)
    reference_channel: int
    error_channel: int
    speaker_channel: int
    # Every ear of the stream (`audio.ears`), in order; empty: the one ear of the three
    # channels above. With several, the callback hands the processor (ears x block) arrays.
    ears: tuple[EarChannels, ...] = ()

    @property
    def ear_names(self) -> tuple[str, ...]:
        return tuple(ear.name for ear in self.ears)

    @property
    def identity(self) -> dict[str, Any]:
        """What a secondary-path estimate must have been made with to be valid for this stream."""
        identity = {
            "host_api": self.host_api,
            "input_device": self.input_name,
            "output_device": self.output_name,
            "sample_rate": self.sample_rate,
            "block_size": self.block_size,
            "error_channel": self.error_channel,
            "speaker_channel": self.speaker_channel,
            "stream_latency": STREAM_LATENCY,
        }
        if self.ears:
            # An ear's estimate holds for this channel map of every ear, not for another one
            # (and is the same for every ear's view of the stream, `for_ear`).
            del identity["error_channel"], identity["speaker_channel"]
            identity["ears"] = [[ear.name, ear.reference_channel, ear.error_channel, ear.speaker_channel]
                                for ear in self.ears]
        return identity

    def for_ear(self, name: str) -> "StreamSpec":
        """The same stream (every channel opened) with one ear's microphones and speaker routed
        to the processor, as a one-ear stream: what identification plays its probe on (the
        other speakers stay silent). Its identity is the whole stream's."""
        ear = next((ear for ear in self.ears if ear.name == name), None)
        if ear is None:
            raise UserError(f"audio.ears: no ear named {name!r} (configured: {', '.join(self.ear_names)})")
        return replace(self, reference_channel=ear.reference_channel, error_channel=ear.error_channel,
                       speaker_channel=ear.speaker_channel)

    def describe(self) -> str:
        same = self.input_name == self.output_name
        devices = f"'{self.input_name}'" if same else f"in '{self.input_name}', out '{self.output_name}'"
        channels = f"reference ch {self.reference_channel}, error ch {self.error_channel}, speaker ch {self.speaker_channel}"
        if self.ears:
            channels = "; ".join(f"{e.name}: reference ch {e.reference_channel}, error ch {e.error_channel}, "
                                 f"speaker ch {e.speaker_channel}" for e in self.ears)
        return f"{devices} ({self.host_api}) at {self.sample_rate} Hz, block {self.block_size}; {channels}"


def _find_device(sd, wanted: Any, kind: str, key: str, channels: int) -> int:
    """Index of the device named (substring, case-insensitive) or numbered `wanted`."""
    devices = sd.query_devices()
    direction = "max_input_channels" if kind == "input" else "max_output_channels"
    if wanted is None:
        try:
            index = sd.default.device[0 if kind == "input" else 1]
        except Exception:  # noqa: BLE001 - PortAudio without a default
            index = -1
        if index is None or index < 0:
            raise UserError(f"audio.{key}: no default {kind} device; name one (see `anc-device devices`)")
    elif isinstance(wanted, int):
        if not 0 <= wanted < len(devices):
            raise UserError(f"audio.{key}: device index {wanted} does not exist (see `anc-device devices`)")
        index = wanted
    else:
        text = str(wanted).lower()
        exact = [i for i, d in enumerate(devices) if d["name"].lower() == text and d[direction] > 0]
        partial = [i for i, d in enumerate(devices) if text in d["name"].lower() and d[direction] > 0]
        matches = exact or partial
        if not matches:
            raise UserError(f"audio.{key}: no {kind} device matches {wanted!r} (see `anc-device devices`)")
        if len(matches) > 1:
            names = ", ".join(f"{i}: {devices[i]['name']}" for i in matches[:6])
            raise UserError(f"audio.{key}: {wanted!r} matches several {kind} devices ({names}); be more specific")
        index = matches[0]
    device = devices[index]
    if device[direction] < channels:
        raise UserError(
            f"audio.{key}: device {index} '{device['name']}' has {device[direction]} {kind} channels, "
            f"the channel map needs {channels}")
    return int(index)


def _check_ear_channels(sd, audio, index: int, kind: str, key: str) -> None:
    """Every ear's channel of this direction exists on the device: one line naming the ear's key."""
    device = sd.query_devices()[index]
    count = int(device["max_input_channels" if kind == "input" else "max_output_channels"])
    names = ("reference_channel", "error_channel") if kind == "input" else ("speaker_channel",)
    for position, ear in enumerate(audio.ears):
        for name in names:
            if ear[name] >= count:
                raise UserError(f"audio.ears[{position}].{name}: channel {ear[name]} ({ear['name']}) is beyond "
                                f"audio.{key} device {index} '{device['name']}', which has {count} {kind} channels")


def resolve_stream(sd, cfg: Config) -> StreamSpec:
    audio = cfg.audio
    ears = ear_channels(audio)
    several = bool(audio.ears)
    input_channels = max(max(ear.reference_channel, ear.error_channel) for ear in ears) + 1
    output_channels = max(ear.speaker_channel for ear in ears) + 1
    if not several and audio.reference_channel == audio.error_channel:
        raise UserError(f"audio.error_channel: {audio.error_channel} is also the reference channel; the two microphones need their own channels")
    input_wanted = audio.input_device if audio.input_device is not None else audio.device
    output_wanted = audio.output_device if audio.output_device is not None else audio.device
    input_key = "input_device" if audio.input_device is not None else "device"
    output_key = "output_device" if audio.output_device is not None else "device"
    input_index = _find_device(sd, input_wanted, "input", input_key, 1 if several else input_channels)
    output_index = _find_device(sd, output_wanted, "output", output_key, 1 if several else output_channels)
    if several:
        _check_ear_channels(sd, audio, input_index, "input", input_key)
        _check_ear_channels(sd, audio, output_index, "output", output_key)
    devices = sd.query_devices()
    input_device, output_device = devices[input_index], devices[output_index]
    if input_device["hostapi"] != output_device["hostapi"]:
        raise UserError("audio.input_device/output_device: a duplex stream needs both devices on the same host API "
                        f"(got {sd.query_hostapis(input_device['hostapi'])['name']} and "
                        f"{sd.query_hostapis(output_device['hostapi'])['name']})")
    return StreamSpec(
        input_index=input_index,
        output_index=output_index,
        input_name=input_device["name"],
        output_name=output_device["name"],
        host_api=sd.query_hostapis(input_device["hostapi"])["name"],
        sample_rate=audio.sample_rate,
        block_size=audio.block_size,
        input_channels=input_channels,
        output_channels=output_channels,
        reference_channel=ears[0].reference_channel,
        error_channel=ears[0].error_channel,
        speaker_channel=ears[0].speaker_channel,
        ears=ears if several else (),
    )


def _low_latency_ms(device) -> float | None:
    values = [device[key] for key in ("default_low_input_latency", "default_low_output_latency") if device[key] > 0]
    return round(1e3 * min(values), 2) if values else None


def list_devices(sd, cfg: Config | None = None) -> dict[str, Any]:
    """Host APIs and devices, marking the ones the configuration selects."""
    chosen: dict[int, list[str]] = {}
    selection_error = None
    if cfg is not None:
        try:
            spec = resolve_stream(sd, cfg)
            chosen.setdefault(spec.input_index, []).append("input")
            chosen.setdefault(spec.output_index, []).append("output")
        except UserError as exc:
            selection_error = str(exc)
    host_apis = [api["name"] for api in sd.query_hostapis()]
    devices = []
    for index, device in enumerate(sd.query_devices()):
        devices.append({
            "index": index,
            "name": device["name"],
            "host_api": host_apis[device["hostapi"]],
            "input_channels": int(device["max_input_channels"]),
            "output_channels": int(device["max_output_channels"]),
            "default_sample_rate": float(device["default_samplerate"]),
            "low_latency_ms": _low_latency_ms(device),
            "configured": chosen.get(index, []),
        })
    return {"portaudio": sd.get_portaudio_version()[1], "host_apis": host_apis, "devices": devices,
            "selection_error": selection_error}


# -- the duplex stream ---------------------------------------------------------------------------
class DuplexStream:
    """One PortAudio duplex stream driving a block processor, with counters a watchdog can read.

    `blocks` advances once per callback; the owner compares it over time to tell a live audio
    loop from a stalled one. `xruns` counts callbacks that PortAudio flagged (under/overflow).
    """

    def __init__(self, sd, spec: StreamSpec, processor: BlockProcessor, number: int = 0):
        self.sd = sd
        self.spec = spec
        self.processor = processor
        n = spec.block_size
        self.reference = np.zeros(n, dtype=np.float32)
        self.error = np.zeros(n, dtype=np.float32)
        self.out = np.zeros(n, dtype=np.float32)
        self.meta = np.zeros(4)
        self.meta[3] = number  # which stream: start-time jitter is only meaningful within one
        # Several ears: (ears x block) blocks, and the processor is one for all ears
        # (`process_block(references, errors, outs, meta)`, e.g. an EarsEngine's session).
        self.ears = len(spec.ears) if getattr(processor, "ears_at_once", False) else 0
        if self.ears:
            self.references = np.zeros((self.ears, n), dtype=np.float32)
            self.errors = np.zeros((self.ears, n), dtype=np.float32)
            self.outs = np.zeros((self.ears, n), dtype=np.float32)
            self._input_channels = [(ear.reference_channel, ear.error_channel) for ear in spec.ears]
            self._speaker_channels = [ear.speaker_channel for ear in spec.ears]
        self.blocks = 0
        self.xruns = 0
        self.odd_sized_blocks = 0
        self.callback_errors = 0
        self.last_callback_error: str | None = None
        self._clock = time.perf_counter
        self._t0 = self._clock()
        self._stream = None
        self.finished = threading.Event()

    # PortAudio's thread. Nothing here may allocate beyond sounddevice's own wrappers, lock, log or wait.
    def _callback(self, indata, outdata, frames, time_info, status) -> None:
        start = self._clock()
        if frames != self.spec.block_size:  # not with a fixed blocksize, but never index past the blocks
            outdata.fill(0)
            self.odd_sized_blocks += 1
            return
        flags = 1.0 if status else 0.0
        np.copyto(self.reference, indata[:, self.spec.reference_channel])
        np.copyto(self.error, indata[:, self.spec.error_channel])
        meta = self.meta
        meta[0] = start - self._t0
        meta[2] = flags
        try:
            self.processor.process_block(self.reference, self.error, self.out, meta)
        except Exception as exc:  # noqa: BLE001 - silence, count, and let the owner report it
            self.out.fill(0.0)
            self.callback_errors += 1
            self.last_callback_error = f"{exc.__class__.__name__}: {exc}"
        if self.spec.output_channels > 1:
            outdata.fill(0)
        outdata[:, self.spec.speaker_channel] = self.out
        if flags:
            self.xruns += 1
        self.blocks += 1
        meta[1] = self._clock() - start

    def _ears_callback(self, indata, outdata, frames, time_info, status) -> None:
        """`_callback` for several ears: the same steps, one copy per microphone and speaker."""
        start = self._clock()
        if frames != self.spec.block_size:
            outdata.fill(0)
            self.odd_sized_blocks += 1
            return
        flags = 1.0 if status else 0.0
        references, errors, outs = self.references, self.errors, self.outs
        for ear, (reference_channel, error_channel) in enumerate(self._input_channels):
            np.copyto(references[ear], indata[:, reference_channel])
            np.copyto(errors[ear], indata[:, error_channel])
        meta = self.meta
        meta[0] = start - self._t0
        meta[2] = flags
        try:
            self.processor.process_block(references, errors, outs, meta)
        except Exception as exc:  # noqa: BLE001 - silence, count, and let the owner report it
            outs.fill(0.0)
            self.callback_errors += 1
            self.last_callback_error = f"{exc.__class__.__name__}: {exc}"
        outdata.fill(0)
        for ear, channel in enumerate(self._speaker_channels):
            outdata[:, channel] = outs[ear]
        if flags:
            self.xruns += 1
        self.blocks += 1
        meta[1] = self._clock() - start

    def _finished(self) -> None:
        self.finished.set()

    def open(self) -> None:
        spec = self.spec
        self.finished.clear()
        self._stream = self.sd.Stream(
            samplerate=spec.sample_rate,
            blocksize=spec.block_size,
            device=(spec.input_index, spec.output_index),
            channels=(spec.input_channels, spec.output_channels),
            dtype="float32",
            latency=STREAM_LATENCY,
            callback=self._ears_callback if self.ears else self._callback,
            finished_callback=self._finished,
            dither_off=True,
        )

    def start(self) -> None:
        if self._stream is None:
            self.open()
        self._stream.start()

    @property
    def active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    @property
    def latency_s(self) -> tuple[float, float] | None:
        return None if self._stream is None else tuple(self._stream.latency)

    def close(self) -> None:
        """Stop and close; a stream whose device vanished may fail to stop, which is fine here."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        for action in (stream.stop, stream.close):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the device may already be gone
                log.debug("closing the stream: %s", exc)


# -- playing a signal and recording both microphones (identify, latency) ------------------------
class PlayRecord:
    """Block processor that plays `played` on the speaker and records both microphones on the
    same stream clock, so `played[n]` and `recorded[n]` share an index and the I/O latency is
    in the data."""

    def __init__(self, played: np.ndarray, block_size: int):
        n_blocks = -(-played.size // block_size)
        self.played = np.zeros(n_blocks * block_size, dtype=np.float32)
        self.played[:played.size] = played
        self.reference = np.zeros_like(self.played)
        self.error = np.zeros_like(self.played)
        self.block_size = block_size
        self.position = 0
        self.xruns = 0
        self.done = threading.Event()

    def process_block(self, reference, error, out, meta) -> None:
        a = self.position
        if a >= self.played.size:
            out.fill(0.0)
            self.done.set()
            return
        b = a + self.block_size
        self.reference[a:b] = reference
        self.error[a:b] = error
        out[:] = self.played[a:b]
        self.xruns += int(meta[2] != 0)
        self.position = b


def play_and_record(sd, spec: StreamSpec, played: np.ndarray, timeout_s: float | None = None) -> PlayRecord:
    """Play `played` once through the speaker and return what both microphones heard."""
    recorder = PlayRecord(played, spec.block_size)
    stream = DuplexStream(sd, spec, recorder)
    duration = recorder.played.size / spec.sample_rate
    timeout = timeout_s if timeout_s is not None else 10.0 + 3.0 * duration
    try:
        stream.start()
    except sd.PortAudioError as exc:
        raise UserError(f"audio: cannot open {spec.describe()}: {exc}") from None
    try:
        if not recorder.done.wait(timeout):
            raise UserError(f"audio: the stream on '{spec.input_name}' delivered {recorder.position} of "
                            f"{recorder.played.size} samples in {timeout:.0f} s; is the device running?")
    finally:
        stream.close()
    return recorder


# -- process start time, for "time to first non-muted block" ------------------------------------
def process_age_s() -> float | None:
    """Seconds since this process was started (Linux /proc), None where unknown."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5): starttime, counted after the comm field
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
