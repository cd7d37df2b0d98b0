"""Plants with several ears (a headphone's two cups), and a whole session on them.

A plant YAML with `ears:` holds one mapping per ear with that ear's own paths
(`primary_path`, `secondary_path`, optional `feedback_path`, `reference_path`) and an optional
`crosstalk_path`: that ear's speaker to every other ear's error mic (the sound that leaks out
of one cup, round the head and into the other). `sample_rate`, `latency_samples` and
`sensor_noise_dbfs` are shared: one sound card, one duplex stream.

    ref_k = reference_path_k * s_k + feedback_path_k * y_k + noise
    err_k = primary_path_k * s_k + secondary_path_k * y_k + sum_{j != k} crosstalk_path_j * y_j + noise

s_k is the scene's channel k for a scene with one channel per ear, or the one channel of a
mono scene for every ear (the same noise reaches each ear through that ear's own paths).

`simulate_ears` runs what the device runs: identification one ear at a time (the probe on
one speaker while every error mic listens, which measures that speaker's crosstalk as well,
and keeps each fit free of the other speaker), then one `EarsEngine` call per block for all
ears, and one session worker per ear (its metrics, watchdog events, no-harm guard and
warning-sound bypass), composed as on the rig (`device.core.ears.compose_ears_session`): the
noise classifier hears the mean of the ears' reference mics and picks one preset for all.
With `out`, each ear's WAVs and metrics go to files named after it (`error_on.left.wav`,
`metrics.left.jsonl`...), with summary.json, report.png and the session's spool.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numba
import numpy as np

from device.contract.config import Config
from device.contract.errors import UserError
from device.core import summary as session_summary_parts
from device.core.dsp.identification import resolved_controller_taps
from device.core.dsp.lsfir import fft_convolve
from device.core.ears import EarsEngine, compose_ears_session
from device.core.session import Session, load_classifier
from simulator import report
from simulator.optimum import causal_optima
from simulator.closed_loop import ClosedLoopChunk, StreamingFir, _microphone_blocks, _speaker_block
from simulator.plant import Plant, _read_response, read_plant_spec
from simulator.run import (POLL_EVERY_BLOCKS, Measurements, _atomic_write, _Outputs, classes_line,
                           identify_rig_of_plant, prepare_out_dir)
from simulator.scenes import SceneStream

SHARED_KEYS = ("name", "description", "sample_rate", "latency_samples", "sensor_noise_dbfs", "ears")
EAR_KEYS = ("primary_path", "secondary_path", "feedback_path", "reference_path", "crosstalk_path")
CHUNK_S = 1.0


@dataclass
class EarsPlant:
    name: str
    description: str
    sample_rate: int
    latency_samples: int
    ears: dict[str, Plant]                    # each ear alone, in the YAML's order
    crosstalk: dict[str, np.ndarray | None]   # ear's speaker -> every other ear's error mic
    source: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.ears)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "EarsPlant":
        spec, path = read_plant_spec(name_or_path)
        if "ears" not in spec:
            raise UserError(f"{path}: ears: missing key (a one-ear plant)")
        return cls.from_spec(spec, path)

    @classmethod
    def from_spec(cls, spec: dict, path: Path) -> "EarsPlant":
        for key in spec:
            if key not in SHARED_KEYS:
                raise UserError(f"{path}: {key}: unknown key of a plant with ears (allowed: {', '.join(SHARED_KEYS)}; "
                                f"each ear's paths go under ears.NAME)")
        ears = spec["ears"]
        if not isinstance(ears, dict) or not ears:
            raise UserError(f"{path}: ears: expected a mapping of ear name to its paths (left: {{...}}, right: {{...}}), "
                            f"got {ears!r}"[:200])
        name = str(spec.get("name", path.stem))
        shared = {key: spec[key] for key in ("sample_rate", "latency_samples", "sensor_noise_dbfs") if key in spec}
        plants: dict[str, Plant] = {}
        crosstalk: dict[str, np.ndarray | None] = {}
        for ear, ear_spec in ears.items():
            where = f"ears.{ear}"
            if not isinstance(ear, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", ear):
                raise UserError(f"{path}: ears: {ear!r} is not an ear name (1-32 letters, digits, _ or -)")
            if not isinstance(ear_spec, dict):
                raise UserError(f"{path}: {where}: expected a mapping of that ear's paths, got {ear_spec!r}"[:200])
            for key in ear_spec:
                if key not in EAR_KEYS:
                    raise UserError(f"{path}: {where}.{key}: unknown key (allowed: {', '.join(EAR_KEYS)})")
            one = {**shared, **{k: v for k, v in ear_spec.items() if k != "crosstalk_path"}, "name": f"{name}.{ear}"}
            try:
                plants[ear] = Plant._from_spec(one, path)
            except UserError as exc:
                raise UserError(_ear_message(str(exc), path, where)) from None
            value = ear_spec.get("crosstalk_path")
            crosstalk[ear] = None if value is None else _read_response(path, f"{where}.crosstalk_path", value,
                                                                       plants[ear].sample_rate)
        first = next(iter(plants.values()))
        return cls(name=name, description=str(spec.get("description", "")), sample_rate=first.sample_rate,
                   latency_samples=first.latency_samples, ears=plants, crosstalk=crosstalk, source=str(path))

    def check_block_size(self, block_size: int) -> None:
        next(iter(self.ears.values())).check_block_size(block_size)

    def without_crosstalk(self) -> "EarsPlant":
        return EarsPlant(self.name, self.description, self.sample_rate, self.latency_samples, dict(self.ears),
                         {ear: None for ear in self.ears}, self.source)

    def only(self, ear: str) -> "EarsPlant":
        """That ear alone: the other cup taken off, with its crosstalk."""
        return EarsPlant(self.name, self.description, self.sample_rate, self.latency_samples, {ear: self.ears[ear]},
                         {ear: None}, self.source)


def _ear_message(message: str, path: Path, where: str) -> str:
    """A one-ear plant's error, named under the ear when it is about one of the ear's keys."""
    head = f"{path}: "
    rest = message[len(head):] if message.startswith(head) else message
    key = re.split(r"[:.\[]", rest, maxsplit=1)[0]
    return f"{head}{where}.{rest}" if key in EAR_KEYS else message


def plant_has_ears(name_or_path: str | Path) -> bool:
    spec, _ = read_plant_spec(name_or_path)
    return "ears" in spec


@numba.njit(cache=True, nogil=True)
def _land(out_block, land, path, to_error):
    """Send one speaker block through `path` (a crosstalk path) into another ear's error mic."""
    for i in range(out_block.size):
        y = out_block[i]
        if y != 0.0:
            for j in range(path.size):
                to_error[land + i + j] += y * path[j]


class EarsClosedLoop:
    """The plant's ears and a controller for all of them in closed loop, chunk by chunk.
    `process_block(references, errors, outs, meta)` gets (ears x block) arrays once per block,
    as the audio callback does; each ear's speaker block reaches its own mics and, through its
    crosstalk path, the other ears' error mics `latency_samples` later."""

    def __init__(self, plant: EarsPlant, process_block: Callable[..., None], block_size: int, seed: int):
        plant.check_block_size(block_size)
        self.plant = plant
        self.process_block = process_block
        self.block_size = block_size
        ears = list(plant.ears.values())
        count = len(ears)
        self.reference_noise = [np.random.default_rng([seed, 0, 0, k]) for k in range(count)]
        self.error_noise = [np.random.default_rng([seed, 0, 1, k]) for k in range(count)]
        self.reference_fir = [StreamingFir(ear.reference_path) for ear in ears]
        self.primary_fir = [StreamingFir(ear.primary_path) for ear in ears]
        self.secondary = [ear.secondary_path for ear in ears]
        self.feedback = [np.zeros(0) if ear.feedback_path is None else ear.feedback_path for ear in ears]
        self.crosstalk = [plant.crosstalk[name] for name in plant.ears]
        # Each ear's real plant changing mid-run (`Plant.path_changes`; the controller is not told).
        self.changes = [sorted(ear.path_changes, key=lambda change: change.at_sample) for ear in ears]
        changed = [c for changes in self.changes for c in changes]
        tail = max(max(a.size for a in self.secondary), max(a.size for a in self.feedback),
                   max((0 if c is None else c.size) for c in self.crosstalk),
                   max([c.secondary_path.size for c in changed]
                       + [c.feedback_path.size for c in changed if c.feedback_path is not None], default=0))
        keep = plant.latency_samples + block_size + tail
        self.to_error = np.zeros((count, keep))
        self.to_reference = np.zeros((count, keep))
        self.references = np.zeros((count, block_size))
        self.errors = np.zeros((count, block_size))
        self.outs = np.zeros((count, block_size))
        self._meta = np.zeros(4)
        self.position = 0
        self.wall_time_s = 0.0
        self.engine_time_s = 0.0
        self._clock_zero = time.perf_counter()

    def run(self, scene_chunks: list[np.ndarray]) -> list[ClosedLoopChunk]:
        """One chunk per ear (the same length, a whole number of blocks except for the last)."""
        clock = time.perf_counter
        started = clock()
        plant, block_size = self.plant, self.block_size
        ears = list(plant.ears.values())
        count = len(ears)
        size = scene_chunks[0].size
        n = -(-size // block_size) * block_size
        keep = self.to_error.shape[1]
        free, off, to_error, to_reference = [], [], np.zeros((count, n + keep)), np.zeros((count, n + keep))
        for k, ear in enumerate(ears):
            s = np.zeros(n)
            s[:size] = scene_chunks[k]
            free.append(self.reference_fir[k](s) + ear.sensor_noise(n, self.reference_noise[k]))
            off.append(self.primary_fir[k](s) + ear.sensor_noise(n, self.error_noise[k]))
        to_error[:, :keep] = self.to_error
        to_reference[:, :keep] = self.to_reference
        reference_in, error_on, output = np.empty((count, n)), np.empty((count, n)), np.empty((count, n))
        refs, errs, outs, meta = self.references, self.errors, self.outs, self._meta
        latency = plant.latency_samples
        engine_time = 0.0
        base = self.position
        for a in range(0, n, block_size):
            for k, changes in enumerate(self.changes):
                while changes and changes[0].at_sample <= base + a:
                    change = changes.pop(0)
                    self.secondary[k] = change.secondary_path
                    if change.feedback_path is not None:
                        self.feedback[k] = change.feedback_path
            for k in range(count):
                _microphone_blocks(free[k], off[k], to_reference[k], to_error[k], a, refs[k], errs[k])
            t0 = clock()
            meta[0] = t0 - self._clock_zero
            self.process_block(refs, errs, outs, meta)
            t1 = clock()
            meta[1] = t1 - t0
            engine_time += t1 - t0
            for k in range(count):
                _speaker_block(outs[k], refs[k], errs[k], a, a + latency, self.secondary[k], self.feedback[k],
                               to_error[k], to_reference[k], reference_in[k], error_on[k], output[k])
                path = self.crosstalk[k]
                if path is not None:
                    for other in range(count):
                        if other != k:
                            _land(outs[k], a + latency, path, to_error[other])
        self.to_error = to_error[:, n:n + keep].copy()
        self.to_reference = to_reference[:, n:n + keep].copy()
        self.position += n
        self.engine_time_s += engine_time
        self.wall_time_s += clock() - started
        return [ClosedLoopChunk(base, reference_in[k, :size], off[k][:size], error_on[k, :size], output[k, :size],
                                free[k][:size]) for k in range(count)]


@dataclass
class EarsSimulation:
    plant: EarsPlant
    summary: dict[str, Any]
    sessions: dict[str, Session]
    engine: EarsEngine
    written: list[Path] = field(default_factory=list)
    plot_data: dict[str, tuple] = field(default_factory=dict)


def _scene_streams(scene_path: str | Path, plant: EarsPlant) -> tuple[list[SceneStream], int]:
    first = SceneStream(scene_path, plant.sample_rate)
    count = len(plant.ears)
    if first.channels == 1:
        return [first] * count, 1
    if first.channels != count:
        raise UserError(f"{scene_path}: {first.channels} channels for plant {plant.name} with {count} ears "
                        f"({', '.join(plant.names)}); give a mono scene or one channel per ear")
    return [first] + [SceneStream(scene_path, plant.sample_rate, channel=k) for k in range(1, count)], first.channels


def _crosstalk_db(plant: EarsPlant, ear: str, probe: np.ndarray) -> float | None:
    """The probe on `ear`'s speaker: the level at the other error mics over the level at its own."""
    path = plant.crosstalk[ear]
    if path is None or len(plant.ears) < 2:
        return None
    own = fft_convolve(probe, plant.ears[ear].secondary_path)
    leak = fft_convolve(probe, path)
    return round(float(10.0 * np.log10(float(np.dot(leak, leak)) / max(float(np.dot(own, own)), 1e-30))), 1)


def simulate_ears(scene_path: str | Path, cfg: Config, plant: EarsPlant | str | Path,
                  out: str | Path | None = None) -> EarsSimulation:
    """The runtime on a plant with ears; with `out`, every output goes there (nothing is created
    before the scene, plant, configuration and classifier have been checked)."""
    from device.core.dsp.identification import configured_probe

    if not isinstance(plant, EarsPlant):
        plant = EarsPlant.load(plant)
    block_size = cfg.audio.block_size
    plant.check_block_size(block_size)
    fs = plant.sample_rate
    seed = cfg.simulator.seed
    streams, channels = _scene_streams(scene_path, plant)
    names = plant.names
    ambient_samples = int(cfg.identification.ambient_s * fs)
    probe = configured_probe(cfg.identification, fs)
    classifier = load_classifier(cfg, required=True)
    rigs, ear_configs, crosstalk_db = {}, {}, {}
    for k, name in enumerate(names):
        ear_plant = plant.ears[name]
        rig = identify_rig_of_plant(cfg, ear_plant, seed + k, streams[k].head(ambient_samples))
        ear_configs[name] = cfg.replace("controller", feedback_neutralization=rig.neutralize_feedback,
                                        taps=resolved_controller_taps(cfg.controller, rig.recommended_taps))
        rigs[name] = rig
        crosstalk_db[name] = _crosstalk_db(plant, name, probe)
    out_dir = prepare_out_dir(out) if out is not None else None
    spool = None
    if out_dir is not None:
        try:
            from device.contract.spool import Spool

            spool = Spool(out_dir / "spool.sqlite", int(cfg.spool.budget_mb * 2**20))
        except ImportError:
            spool = None
    outputs: dict[str, _Outputs] = {}
    try:
        ears_session = compose_ears_session(
            ear_configs, [rigs[name].secondary.estimate for name in names],
            [rigs[name].feedback.estimate if rigs[name].neutralize_feedback else None for name in names],
            sample_rate=fs, block_size=block_size, spool=spool, classifier=classifier)
        if out_dir is not None:
            for name in names:
                outputs[name] = _Outputs(out_dir, fs, ear=name)
        sim = _run_ears(plant, streams, channels, cfg, ear_configs, rigs, crosstalk_db, ears_session, outputs,
                        str(scene_path))
    except BaseException:
        for handle in outputs.values():
            handle.discard()
        if spool is not None:
            spool.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(out_dir / "spool.sqlite") + suffix).unlink(missing_ok=True)
        raise
    if spool is not None:
        spool.close()
    if out_dir is not None:
        for handle in outputs.values():
            sim.written.extend(handle.commit())
        window = report.steady_window(streams[0].samples, fs)
        sim.written.extend(_write_outputs(sim, out_dir, window))
        if spool is not None:
            sim.written.append(out_dir / "spool.sqlite")
    return sim


def _run_ears(plant: EarsPlant, streams: list[SceneStream], channels: int, cfg: Config, ear_configs: dict,
              rigs: dict, crosstalk_db: dict, ears_session, outputs: dict, scene_path: str) -> EarsSimulation:
    names = plant.names
    fs = plant.sample_rate
    block_size = cfg.audio.block_size
    seed = cfg.simulator.seed
    engine = ears_session.engine
    sessions = ears_session.sessions
    counter = [0]

    def process_block(references, errors, outs, meta):
        ears_session.process_block(references, errors, outs, meta)
        counter[0] += 1
        if counter[0] % POLL_EVERY_BLOCKS == 0:
            ears_session.poll()

    loop = EarsClosedLoop(plant, process_block, block_size, seed)
    total = streams[0].samples
    window = report.steady_window(total, fs)
    full_secondary = {name: plant.ears[name].full_secondary_path(window.start) for name in names}
    measured = {name: Measurements(total, fs, ear_configs[name].controller.taps + full_secondary[name].size
                                   + plant.ears[name].reference_path.size, sessions[name],
                                   metrics_file=outputs[name].metrics if name in outputs else None)
                for name in names}
    chunk_length = max(1, int(CHUNK_S * fs) // block_size) * block_size
    if channels == 1:
        pieces = ([chunk] * len(names) for chunk in streams[0].chunks(chunk_length))
    else:
        pieces = (list(chunks) for chunks in zip(*(stream.chunks(chunk_length) for stream in streams)))
    for chunks in pieces:
        for name, chunk in zip(names, loop.run(chunks)):
            measured[name].add(chunk)
            if name in outputs:
                outputs[name].add(chunk)
    stopped = ears_session.stop()
    for m in measured.values():
        m.finish()
    duration_s = total / fs
    per_ear: dict[str, dict] = {}
    plot_data: dict[str, tuple] = {}
    energy = {"off": 0.0, "on": 0.0, "optimum": 0.0}
    steady_off, steady_on = [], []
    for name in names:
        m, ear_cfg = measured[name], ear_configs[name]
        off, on = m.steady("error_off"), m.steady("error_on")
        start = m.window.start - m.kept_from
        optima = causal_optima(m.kept["disturbance_reference"], m.kept["error_off"], full_secondary[name],
                               ear_cfg.controller.taps, start, m.kept["error_off"].size, cfg.safety.max_weight_norm)
        optimum_error = optima.reachable.error[start:]
        attenuation = report.attenuation_db(off, on)
        optimum_db = report.attenuation_db(off, optimum_error)
        times, att = m.attenuation_over_time()
        settled = report.convergence(times, att, attenuation)
        worker = sessions[name].worker.report
        summary = stopped["ears"][name]
        per_ear[name] = {
            "attenuation_db": round(attenuation, 2),
            "attenuation_band_db": round(report.band_attenuation_db(off, on, fs), 2),
            "optimum_db": round(optimum_db, 2),
            "optimum_band_db": round(report.band_attenuation_db(off, optimum_error, fs), 2),
            "gap_to_optimum_db": round(optimum_db - attenuation, 2),
            "convergence_s": None if settled.time_s is None else round(settled.time_s, 2),
            "dips": settled.dips,
            "diverged": summary["watchdog_trips"] > 0,
            "watchdog_trips": summary["watchdog_trips"],
            "safety_events": session_summary_parts.safety_events(worker),
            "taps": ear_cfg.controller.taps,
            "secondary_path_taps": int(rigs[name].secondary.estimate.size),
            "identification": rigs[name].secondary.to_dict(),
            "feedback_neutralization": bool(rigs[name].neutralize_feedback),
            "crosstalk_db": crosstalk_db[name],
            "causality_verdict": plant.ears[name].causality().explain(),
            "estimated_cancellation_db": session_summary_parts.mean_cancellation_db(worker.metrics,
                                                                                   after_s=window.start / fs),
            "output_peak_dbfs": round(20 * np.log10(max(m.peak, 1e-12)), 2),
            "modes": summary["modes"],
        }
        plot_data[name] = (off, on, optimum_error, times, att)
        energy["off"] += float(np.dot(off, off))
        energy["on"] += float(np.dot(on, on))
        energy["optimum"] += float(np.dot(optimum_error, optimum_error))
        steady_off.append(off)
        steady_on.append(on)
    attenuation = 10.0 * np.log10(energy["off"] / max(energy["on"], 1e-30))
    optimum_db = 10.0 * np.log10(energy["off"] / max(energy["optimum"], 1e-30))
    convergence = [ear["convergence_s"] for ear in per_ear.values()]
    summary = {
        "scene": str(scene_path),
        "duration_s": round(duration_s, 3),
        "sample_rate": fs,
        "scene_sample_rate": streams[0].source_rate,
        "scene_channels": channels,
        "plant": plant.name,
        "ear_names": list(names),
        "crosstalk": any(path is not None for path in plant.crosstalk.values()),
        "block_size": block_size,
        "latency_samples": plant.latency_samples,
        "steady_state_s": [round(window.start / fs, 3), round(window.stop / fs, 3)],
        # Over all ears: the energy of every error mic together.
        "attenuation_db": round(attenuation, 2),
        "attenuation_band_db": round(report.band_attenuation_db(np.concatenate(steady_off), np.concatenate(steady_on),
                                                                fs), 2),
        "optimum_db": round(optimum_db, 2),
        "gap_to_optimum_db": round(optimum_db - attenuation, 2),
        "convergence_s": None if None in convergence else max(convergence),
        "convergence_rule": report.CONVERGENCE_RULE,
        "diverged": any(ear["diverged"] for ear in per_ear.values()),
        "watchdog_trips": sum(ear["watchdog_trips"] for ear in per_ear.values()),
        "real_time_factor": round(duration_s / max(loop.wall_time_s, 1e-9), 1),
        "engine_real_time_factor": round(duration_s / max(loop.engine_time_s, 1e-9), 1),
        "output_ceiling_dbfs": cfg.safety.output_ceiling_dbfs,
        # The classifier hears the mean of the ears' reference mics (the first ear's worker runs it).
        "classifier_input": "mean of the ears' reference mics",
        **_class_parts(ears_session),
        "ears": per_ear,
    }
    return EarsSimulation(plant, summary, sessions, engine, plot_data=plot_data)


def _class_parts(ears_session) -> dict:
    shared = session_summary_parts.session_parts(ears_session)
    report_ = ears_session.worker.report
    dominant, confidence = session_summary_parts.dominant_class(report_)
    return {"noise_classes": shared["noise_classes"], "dominant_class": dominant,
            "dominant_class_confidence": confidence, "detections": len(report_.detections),
            "classifier": shared["classifier"], "records_written": shared["records_written"],
            "session_id": shared["session_id"]}


def _write_outputs(sim: EarsSimulation, out: Path, window: slice) -> list[Path]:
    written = []
    summary_path = out / "summary.json"
    _atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(sim.summary, indent=2) + "\n"))
    written.append(summary_path)
    try:
        png = out / "report.png"
        fs = sim.plant.sample_rate
        _atomic_write(png, lambda tmp: report.write_ears_png(
            Path(tmp), fs, sim.plot_data, (window.start / fs, window.stop / fs),
            f"{Path(sim.summary['scene']).name} on {sim.plant.name}"))
        written.append(png)
    except ImportError:
        pass
    return written


def format_ears_summary(summary: dict) -> str:
    db = session_summary_parts.db
    lines = [
        f"scene        {summary['scene']}  ({summary['duration_s']:.1f} s, {summary['scene_sample_rate']} Hz, "
        + ("mono: the same noise at every ear" if summary["scene_channels"] == 1
           else f"{summary['scene_channels']} channels: one per ear")
        + f"; simulated at {summary['sample_rate']} Hz)",
        f"plant        {summary['plant']}: ears {', '.join(summary['ear_names'])}, latency {summary['latency_samples']} "
        f"samples, block {summary['block_size']}, crosstalk {'on' if summary['crosstalk'] else 'off'}",
        f"attenuation  {db(summary['attenuation_db'])} overall, {db(summary['attenuation_band_db'])} in 50-1000 Hz, "
        f"all ears (steady state {summary['steady_state_s'][0]:.1f}-{summary['steady_state_s'][1]:.1f} s); "
        f"optimum {db(summary['optimum_db'])}",
    ]
    for name, ear in summary["ears"].items():
        settled = "did not settle" if ear["convergence_s"] is None else f"settled in {ear['convergence_s']:.2f} s"
        crosstalk = "" if ear["crosstalk_db"] is None else f", its crosstalk {ear['crosstalk_db']:.1f} dB"
        lines.append(
            f"{name:<12} {db(ear['attenuation_db'])} overall, {db(ear['attenuation_band_db'])} in 50-1000 Hz, "
            f"optimum {db(ear['optimum_db'])}, {settled}; {ear['taps']} taps, estimate {ear['secondary_path_taps']} "
            f"taps (modelling error {ear['identification']['quality_db']:.1f} dB){crosstalk}; "
            + (f"watchdog tripped {ear['watchdog_trips']}x" if ear["diverged"] else "no watchdog events"))
    lines.append(f"speed        {summary['real_time_factor']:.1f}x real time "
                 f"(engine and workers alone: {summary['engine_real_time_factor']:.0f}x)")
    lines.append(classes_line(summary) + (" (hearing the mean of the ears' reference mics)"
                                          if summary["classifier"] == "on" else ""))
    return "\n".join(lines)
