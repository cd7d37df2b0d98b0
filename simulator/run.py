"""A whole simulated session: identify the secondary path, run the runtime in closed loop with
the plant, and measure the result against the causal optimum.

The scene is streamed: read, simulated, measured and written one chunk (about a second) at a
time, so memory does not grow with the scene's length. What the summary needs from the whole
run is accumulated on the way (energies per 100 ms frame and per second, the output peak);
what needs samples is bounded: the steady-state window (the last 3 s) is kept for the band
attenuation, the spectra and the causal optimum, which is solved over that window alone (the
same window as before streaming, plus enough history for the filters to be exact).
Outputs are written as they are produced to temporary names and renamed at the end, so an
interrupted or failed run leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.contract.config import Config
from device.core.alarms import format_alarms
from device.core.dsp.identification import (IdentificationResult, RigIdentification, configured_probe,
                                            controller_tap_budget, identify_rig, resolved_controller_taps)
from device.contract.errors import UserError
from device.core import summary as session_summary_parts
from device.core.session import Session, compose_session, load_classifier
from simulator import report
from simulator.optimum import causal_optima
from simulator.closed_loop import ClosedLoopChunk, ClosedLoopResult, EngineClosedLoop
from simulator.plant import PathChange, Plant
from simulator.scenes import SceneStream

# The worker drains the ring every 32 blocks (21 ms at 48 kHz), about as often as it runs on a
# device (every 20 ms): the simulated session sees its settings change as late as a real one.
POLL_EVERY_BLOCKS = 32
CHUNK_S = 1.0            # s of scene per streamed chunk (rounded to whole blocks)
WAV_OUTPUTS = ("error_off.wav", "error_on.wav", "anti_noise.wav")


@dataclass
class Simulation:
    scene: SceneStream
    plant: Plant
    cfg: Config
    identification: IdentificationResult
    feedback_identification: IdentificationResult | None
    optimum_error: np.ndarray          # the causal optimum's error over the steady window
    summary: dict[str, Any]
    metrics: list[dict]
    session: Session
    written: list[Path] = field(default_factory=list)
    result: ClosedLoopResult | None = None   # whole signals, only with keep_signals=True
    plot_data: tuple | None = None           # steady-window signals and attenuation over time, for report.png


def identify_rig_of_plant(cfg: Config, plant: Plant, seed: int, ambient: np.ndarray | None = None) -> RigIdentification:
    """What `anc-device identify` does on a rig, against the simulated plant: `ambient`
    (the scene before control starts, speaker silent) sizes the controller, then the probe
    measures the secondary and feedback paths."""
    fs = plant.sample_rate
    probe = configured_probe(cfg.identification, fs)
    reference, error = plant.open_loop(probe, seed)
    ambient_reference = ambient_error = None
    if ambient is not None and ambient.size:
        ambient_reference, ambient_error = plant.open_loop(np.zeros(ambient.size), seed + 1, ambient=ambient)
    return identify_rig(probe, reference, error, cfg.controller, cfg.identification, fs,
                        controller_tap_budget(cfg.controller), ambient_reference, ambient_error)


def identify_plant(cfg: Config, plant: Plant, seed: int) -> tuple[IdentificationResult, IdentificationResult | None]:
    """The secondary-path estimate and, where neutralization is on, the feedback-path one."""
    rig = identify_rig_of_plant(cfg, plant, seed)
    return rig.secondary, rig.feedback if rig.neutralize_feedback else None


def _progress_printer(enabled: bool):
    if not enabled:
        return None

    def show(fraction: float) -> None:
        filled = int(fraction * 30)
        sys.stderr.write(f"\rsimulating [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%")
        if fraction >= 1.0:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


class Measurements:
    """What the summary, metrics.jsonl and report.png need, accumulated chunk by chunk."""

    def __init__(self, total: int, fs: int, history: int, session: Session, metrics_file=None):
        self.fs = fs
        self.total = total
        self.window = report.steady_window(total, fs)
        # The steady window plus the history the optimum's filters need to be exact there.
        self.kept_from = max(0, self.window.start - history)
        kept = total - self.kept_from
        self.kept = {name: np.zeros(kept) for name in ("error_off", "error_on", "disturbance_reference")}
        self.frame = max(1, int(report.FRAME_S * fs))
        self.frame_energy_off: list[float] = []
        self.frame_energy_on: list[float] = []
        self._frame_carry = (np.zeros(0), np.zeros(0))
        self._second_carry = [np.zeros(0), np.zeros(0), np.zeros(0)]
        self._second_samples = 0
        self.rows: list[dict] = []
        self._pending_rows: list[dict] = []
        self.peak = 0.0
        self.session = session
        self.metrics_file = metrics_file

    def add(self, chunk: ClosedLoopChunk) -> None:
        start, stop = chunk.start, chunk.start + chunk.error_on.size
        self.peak = max(self.peak, float(np.max(np.abs(chunk.output))) if chunk.output.size else 0.0)
        lo = max(start, self.kept_from)
        if lo < stop:
            for name, kept in self.kept.items():
                kept[lo - self.kept_from:stop - self.kept_from] = getattr(chunk, name)[lo - start:]
        off = np.concatenate([self._frame_carry[0], chunk.error_off])
        on = np.concatenate([self._frame_carry[1], chunk.error_on])
        count = off.size // self.frame
        if count:
            a = off[:count * self.frame].reshape(count, self.frame)
            b = on[:count * self.frame].reshape(count, self.frame)
            self.frame_energy_off.extend(np.einsum("ij,ij->i", a, a).tolist())
            self.frame_energy_on.extend(np.einsum("ij,ij->i", b, b).tolist())
        self._frame_carry = (off[count * self.frame:], on[count * self.frame:])
        parts = [np.concatenate([carry, new]) for carry, new in
                 zip(self._second_carry, (chunk.error_off, chunk.error_on, chunk.output))]
        used = 0
        while parts[0].size - used >= self.fs:
            self._second_row(*(p[used:used + self.fs] for p in parts))
            used += self.fs
        self._second_carry = [p[used:] for p in parts]
        self._flush_rows(final=False)

    def _second_row(self, off: np.ndarray, on: np.ndarray, output: np.ndarray) -> None:
        fs = self.fs
        self._second_samples += off.size
        self._pending_rows.append({
            "t_s": round(self._second_samples / fs, 3),
            "attenuation_db": round(report.attenuation_db(off, on), 2),
            "attenuation_band_db": round(report.band_attenuation_db(off, on, fs), 2),
            "error_off_rms_dbfs": round(10 * np.log10(np.mean(off * off) + 1e-30), 2),
            "error_on_rms_dbfs": round(10 * np.log10(np.mean(on * on) + 1e-30), 2),
            "output_rms_dbfs": round(10 * np.log10(np.mean(output * output) + 1e-30), 2),
        })

    def _flush_rows(self, final: bool) -> None:
        """Rows go out once the device's metrics interval for the same second is closed."""
        device = self.session.worker.report.metrics
        while self._pending_rows:
            index = len(self.rows)
            if index >= len(device) and not final:
                break
            row = self._pending_rows.pop(0)
            if index < len(device):
                row["device"] = device[index].to_dict()
            self.rows.append(row)
            if self.metrics_file is not None:
                self.metrics_file.write(json.dumps(row) + "\n")

    def finish(self) -> None:
        off, on, output = self._second_carry
        if off.size >= self.fs // 10:  # a last partial second, if it is long enough to mean something
            self._second_row(off, on, output)
        self._flush_rows(final=True)

    def attenuation_over_time(self) -> tuple[np.ndarray, np.ndarray]:
        off = np.asarray(self.frame_energy_off)
        on = np.asarray(self.frame_energy_on)
        ratio = off / np.maximum(on, 1e-30)
        times = (np.arange(off.size) + 1) * self.frame / self.fs
        return times, 10.0 * np.log10(np.maximum(ratio, 1e-30))

    def steady(self, name: str) -> np.ndarray:
        return self.kept[name][self.window.start - self.kept_from:]


def _ear_file(name: str, ear: str | None) -> str:
    if ear is None:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{ear}.{suffix}"


class _Outputs:
    """WAVs and metrics.jsonl written as the run goes, under temporary names until `commit`."""

    def __init__(self, out: Path, fs: int, ear: str | None = None):
        """`ear`: one ear of several, whose files are named `error_off.EAR.wav`, `metrics.EAR.jsonl`..."""
        import soundfile

        self.out = out
        self.temporary: dict[Path, Path] = {}
        self.wavs = {}
        for name in WAV_OUTPUTS:
            final = out / _ear_file(name, ear)
            temporary = self._temporary(final)
            self.wavs[name] = soundfile.SoundFile(str(temporary), "w", samplerate=fs, channels=1,
                                                  subtype="FLOAT", format="WAV")
        metrics = out / _ear_file("metrics.jsonl", ear)
        self.metrics = open(self._temporary(metrics), "w", encoding="utf-8")

    def _temporary(self, final: Path) -> Path:
        handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=final.suffix)
        os.close(handle)
        self.temporary[final] = Path(name)
        return Path(name)

    def add(self, chunk: ClosedLoopChunk) -> None:
        self.wavs["error_off.wav"].write(chunk.error_off.astype(np.float32))
        self.wavs["error_on.wav"].write(chunk.error_on.astype(np.float32))
        self.wavs["anti_noise.wav"].write(chunk.output.astype(np.float32))

    def close(self) -> None:
        for handle in self.wavs.values():
            handle.close()
        self.metrics.close()

    def commit(self) -> list[Path]:
        self.close()
        for final, temporary in self.temporary.items():
            os.replace(temporary, final)
        written = list(self.temporary)
        self.temporary = {}
        return written

    def discard(self) -> None:
        self.close()
        for temporary in self.temporary.values():
            temporary.unlink(missing_ok=True)
        self.temporary = {}


def simulate(scene_path: str | Path, cfg: Config, plant_name: str | Path | None = None,
             spool: Any | None = None, progress: bool = False,
             secondary_path_changes: list[tuple[int, np.ndarray]] | None = None,
             out: str | Path | None = None, keep_signals: bool = False) -> Simulation:
    """Simulate the scene; with `out`, write every output there (nothing is created before the
    scene, plant, configuration and classifier have been checked). `keep_signals` also keeps
    the whole signals in memory (`Simulation.result`), for tests on short scenes.
    A plant with `ears:` runs in `simulator.ears.simulate_ears` (its summary has per-ear figures)."""
    from simulator.ears import plant_has_ears, simulate_ears

    if plant_has_ears(plant_name or cfg.simulator.plant):
        return simulate_ears(scene_path, cfg, plant_name or cfg.simulator.plant, out=out)
    plant = Plant.load(plant_name or cfg.simulator.plant)
    if secondary_path_changes:
        plant.path_changes = sorted([*plant.path_changes, *(PathChange(int(at), np.asarray(path, dtype=np.float64))
                                                             for at, path in secondary_path_changes)],
                                    key=lambda change: change.at_sample)
    block_size = cfg.audio.block_size
    plant.check_block_size(block_size)
    scene = SceneStream(scene_path, plant.sample_rate)
    if scene.channels > 1:
        raise UserError(f"{scene_path}: {scene.channels} channels, but plant {plant.name} has one ear; "
                        "give a mono scene, or a plant with ears: (e.g. headphone-stereo)")
    seed = cfg.simulator.seed
    fs = plant.sample_rate
    classifier = load_classifier(cfg, required=True)

    ambient = scene.head(int(cfg.identification.ambient_s * fs))
    rig = identify_rig_of_plant(cfg, plant, seed, ambient)
    secondary = rig.secondary
    feedback = rig.feedback if rig.neutralize_feedback else None
    # What identification decided becomes the configuration the runtime runs with.
    cfg = cfg.replace("controller", feedback_neutralization=rig.neutralize_feedback,
                      taps=resolved_controller_taps(cfg.controller, rig.recommended_taps))
    out_dir = prepare_out_dir(out) if out is not None else None
    own_spool = None
    if out_dir is not None and spool is None:
        try:
            from device.contract.spool import Spool

            spool = own_spool = Spool(out_dir / "spool.sqlite", int(cfg.spool.budget_mb * 2**20))
        except ImportError:
            spool = None
    outputs = None
    try:
        session = compose_session(cfg, secondary.estimate, None if feedback is None else feedback.estimate,
                                  sample_rate=fs, block_size=block_size, spool=spool, classifier=classifier)
        outputs = _Outputs(out_dir, fs) if out_dir is not None else None
        sim = _run(scene, plant, cfg, session, rig, outputs, _progress_printer(progress), keep_signals,
                   str(scene_path))
    except BaseException:
        if outputs is not None:
            outputs.discard()
        if own_spool is not None:
            own_spool.close()
            for suffix in ("", "-wal", "-shm"):
                Path(str(out_dir / "spool.sqlite") + suffix).unlink(missing_ok=True)
        raise
    if own_spool is not None:
        own_spool.close()
    if out_dir is not None:
        sim.written = outputs.commit() + _write_final_outputs(sim, out_dir)
        if own_spool is not None:
            sim.written.append(out_dir / "spool.sqlite")
    return sim


def _run(scene: SceneStream, plant: Plant, cfg: Config, session: Session, rig: RigIdentification,
         outputs, on_progress, keep_signals: bool, scene_name: str) -> Simulation:
    secondary = rig.secondary
    feedback = rig.feedback if rig.neutralize_feedback else None
    fs = plant.sample_rate
    block_size = cfg.audio.block_size

    def on_blocks(reference, error, out, meta):
        session.push_blocks(reference, error, out, meta)
        if loop.blocks % POLL_EVERY_BLOCKS == 0:
            session.poll()

    # The engine's kernel runs from numba POLL_EVERY_BLOCKS blocks at a time, then the worker
    # polls: the same samples as a per-block `session.process_block` polling as often
    # (tests/test_streaming.py compares them), without Python per block.
    loop = EngineClosedLoop(plant, session.engine.kernel_state, on_blocks, block_size, cfg.simulator.seed,
                            POLL_EVERY_BLOCKS)
    steady_start = report.steady_window(scene.samples, fs).start
    full_secondary = plant.full_secondary_path(steady_start)
    history = cfg.controller.taps + full_secondary.size + plant.reference_path.size
    measured = Measurements(scene.samples, fs, history, session, None if outputs is None else outputs.metrics)
    chunk_length = max(1, int(CHUNK_S * fs) // block_size) * block_size
    kept: list[ClosedLoopChunk] = []
    done = 0
    for scene_chunk in scene.chunks(chunk_length):
        chunk = loop.run(scene_chunk)
        measured.add(chunk)
        if outputs is not None:
            outputs.add(chunk)
        if keep_signals:
            kept.append(chunk)
        done += scene_chunk.size
        if on_progress is not None:
            on_progress(min(1.0, done / scene.samples))
    session_summary = session.stop()
    measured.finish()
    duration_s = scene.samples / fs
    window = measured.window
    off, on = measured.steady("error_off"), measured.steady("error_on")
    attenuation = report.attenuation_db(off, on)
    band = report.band_attenuation_db(off, on, fs)
    start = window.start - measured.kept_from
    optima = causal_optima(measured.kept["disturbance_reference"], measured.kept["error_off"], full_secondary,
                           cfg.controller.taps, start, measured.kept["error_off"].size, cfg.safety.max_weight_norm)
    optimum = optima.reachable
    optimum_error = optimum.error[start:]
    optimum_db = report.attenuation_db(off, optimum_error)
    optimum_band_db = report.band_attenuation_db(off, optimum_error, fs)
    unconstrained_error = optima.unconstrained.error[start:]
    unconstrained_db = report.attenuation_db(off, unconstrained_error)
    times, att = measured.attenuation_over_time()
    settled = report.convergence(times, att, attenuation)
    causality = plant.causality()
    worker = session.worker.report
    shared = session_summary_parts.session_parts(session)
    dominant, dominant_confidence = session_summary_parts.dominant_class(worker)
    summary = {
        "scene": scene_name,
        "duration_s": round(duration_s, 3),
        "sample_rate": fs,
        "scene_sample_rate": scene.source_rate,
        "scene_channels": scene.channels,
        "channel_used": 0,
        "plant": plant.name,
        "block_size": block_size,
        "taps": cfg.controller.taps,
        "secondary_path_taps": int(secondary.estimate.size),
        "secondary_path_max_taps": cfg.controller.secondary_path_taps,
        "latency_samples": plant.latency_samples,
        "steady_state_s": [round(window.start / fs, 3), round(window.stop / fs, 3)],
        "attenuation_db": round(attenuation, 2),
        "attenuation_band_db": round(band, 2),
        "convergence_s": None if settled.time_s is None else round(settled.time_s, 2),
        "convergence_rule": report.CONVERGENCE_RULE,
        "dips": settled.dips,
        "wiener_bound_db": round(optimum_db, 2),
        "wiener_bound_band_db": round(optimum_band_db, 2),
        "gap_to_optimum_db": round(optimum_db - attenuation, 2),
        # wiener_bound_* is the optimum reachable within ||w|| <= safety.max_weight_norm; the
        # unconstrained least-squares optimum beside it (simulator/optimum.py).
        "optimum_unconstrained_db": round(unconstrained_db, 2),
        "optimum_unconstrained_band_db": round(report.band_attenuation_db(off, unconstrained_error, fs), 2),
        "optimum_weight_norm": round(optimum.weight_norm, 2),
        "optimum_unconstrained_weight_norm": round(optima.unconstrained.weight_norm, 2),
        "optimum_max_weight_norm": optima.max_weight_norm,
        "optimum_loading": optimum.loading,
        "causality": causality.to_dict(),
        "causality_verdict": causality.explain(),
        "identification": secondary.to_dict(),
        "feedback_identification": None if feedback is None else feedback.to_dict(),
        **rig.decisions(),
        "feedback_path_in_plant": plant.feedback_path is not None,
        "real_time_factor": round(duration_s / max(loop.wall_time_s, 1e-9), 1),
        "engine_real_time_factor": round(duration_s / max(loop.engine_time_s, 1e-9), 1),
        "safety_events": shared["safety_events"],
        # Secondary-path checks made on the fly (controller.reidentify), also among the events.
        "path_checks": session_summary_parts.path_checks(shared["safety_events"]),
        "watchdog_trips": session_summary["watchdog_trips"],
        "diverged": session_summary["watchdog_trips"] > 0,
        "output_peak_dbfs": round(20 * np.log10(max(measured.peak, 1e-12)), 2),
        "output_ceiling_dbfs": cfg.safety.output_ceiling_dbfs,
        "estimated_cancellation_db": session_summary_parts.mean_cancellation_db(worker.metrics, after_s=window.start / fs),
        "session_avg_cancellation_db": session_summary["avg_cancellation_db"],
        "noise_classes": shared["noise_classes"],
        "dominant_class": dominant,
        "dominant_class_confidence": dominant_confidence,
        "detections": len(worker.detections),
        "classifier": shared["classifier"],
        "records_written": shared["records_written"],
        "session_id": shared["session_id"],
        "anc_mode": session_summary["anc_mode"],
        "modes": session_summary["modes"],
        "alarms": [{k: a[k] for k in ("kind", "start_s", "detected_s", "end_s", "confidence", "level_dbfs")}
                   for a in session_summary["alarms"]],
    }
    result = None
    if keep_signals:
        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(part, name) for part in kept])

        result = ClosedLoopResult(fs, block_size, joined("reference"), joined("error_off"), joined("error_on"),
                                  joined("output"), joined("disturbance_reference"), loop.wall_time_s,
                                  loop.engine_time_s)
    sim = Simulation(scene, plant, cfg, secondary, feedback, optimum_error, summary, measured.rows, session,
                     result=result)
    sim.plot_data = (off, on, optimum_error, times, att, window)
    return sim


def _atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def prepare_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a directory, and this is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"{out}: output directory is not writable")
    return out


def _write_final_outputs(sim: Simulation, out: Path) -> list[Path]:
    """What is only known at the end: the paths, summary.json, report.png."""
    written: list[Path] = []

    def npy(name: str, array: np.ndarray) -> None:
        path = out / name
        _atomic_write(path, lambda tmp: np.save(tmp, array))
        written.append(path)

    npy("primary_path.npy", sim.plant.primary_path)
    npy("secondary_path.npy", sim.plant.secondary_path)
    npy("reference_path.npy", sim.plant.reference_path)
    if sim.plant.feedback_path is not None:
        npy("feedback_path.npy", sim.plant.feedback_path)
    npy("secondary_path_estimate.npy", sim.identification.estimate)
    summary_path = out / "summary.json"
    _atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(sim.summary, indent=2) + "\n"))
    written.append(summary_path)
    try:
        png = out / "report.png"
        off, on, optimum_error, times, att, window = sim.plot_data
        fs = sim.plant.sample_rate
        _atomic_write(png, lambda tmp: report.write_png(Path(tmp), fs, off, on, optimum_error, times, att,
                                                        (window.start / fs, window.stop / fs),
                                                        f"{Path(sim.summary['scene']).name} on {sim.plant.name}",
                                                        modes=sim.summary["modes"], alarms=sim.summary["alarms"]))
        written.append(png)
    except ImportError:
        print("anc-device: matplotlib is not installed; skipped report.png (pip install 'anc-device[plots]')",
              file=sys.stderr)
    return written


def gap_in_words(gap_db: float) -> str:
    """The controller against the optimum, the sign in words: an adaptive filter can beat the
    best fixed one when the scene drifts."""
    if gap_db > 0.05:
        return f"{gap_db:.1f} dB short of it"
    if gap_db < -0.05:
        return f"{-gap_db:.1f} dB better than it: an adaptive filter tracks what a fixed one cannot"
    return "level with it"


def convergence_in_words(summary: dict) -> str:
    if summary["convergence_s"] is None:
        if summary["attenuation_db"] is None or summary["attenuation_db"] < report.CONVERGENCE_MARGIN_DB:
            return "no meaningful cancellation to converge to"
        return (f"never stayed within {report.CONVERGENCE_MARGIN_DB:g} dB of the steady state for "
                f"{report.CONVERGENCE_HOLD_S:g} s")
    text = (f"{summary['convergence_s']:.2f} s to stay within {report.CONVERGENCE_MARGIN_DB:g} dB of the steady state "
            f"(for {report.CONVERGENCE_HOLD_S:g} s or more)")
    dips = summary.get("dips") or []
    if dips:
        shown = ", ".join(f"{d['start_s']:.1f}-{d['end_s']:.1f} s (down to {d['min_db']:.1f} dB)" for d in dips[:3])
        more = f" and {len(dips) - 3} more" if len(dips) > 3 else ""
        text += f"; {len(dips)} dip{'s' if len(dips) > 1 else ''} below it later: {shown}{more}"
    return text


def format_summary(summary: dict) -> str:
    if "ears" in summary:
        from simulator.ears import format_ears_summary

        return format_ears_summary(summary)
    db = session_summary_parts.db

    lines = [
        f"scene        {summary['scene']}  ({summary['duration_s']:.1f} s, {summary['scene_sample_rate']} Hz"
        + (f", {summary['scene_channels']} channels: first used" if summary["scene_channels"] > 1 else ", mono")
        + f"; simulated at {summary['sample_rate']} Hz)",
        f"plant        {summary['plant']}: latency {summary['latency_samples']} samples, block {summary['block_size']}, "
        f"{summary['taps']} taps, secondary-path estimate {summary['secondary_path_taps']} taps "
        f"(modelling error {summary['identification']['quality_db']:.1f} dB)",
        f"causality    {summary['causality_verdict']}",
        "",
        f"attenuation  {db(summary['attenuation_db'])} overall, {db(summary['attenuation_band_db'])} in 50-1000 Hz "
        f"(steady state {summary['steady_state_s'][0]:.1f}-{summary['steady_state_s'][1]:.1f} s)",
        f"optimum      {db(summary['wiener_bound_db'])} overall, {db(summary['wiener_bound_band_db'])} in 50-1000 Hz: "
        f"the best causal {summary['taps']}-tap filter on this plant and scene "
        f"(controller is {gap_in_words(summary['gap_to_optimum_db'])})",
        "convergence  " + convergence_in_words(summary),
        f"device view  {db(summary['estimated_cancellation_db'])} over the steady state, as the device estimates it from "
        f"its own microphones and secondary-path model",
        f"speed        {summary['real_time_factor']:.1f}x real time (device side alone, engine and worker without the plant simulation: {summary['engine_real_time_factor']:.0f}x)",
        f"output       peak {summary['output_peak_dbfs']:.1f} dBFS, ceiling {summary['output_ceiling_dbfs']:.1f} dBFS",
    ]
    if summary["feedback_path_in_plant"] and summary["feedback_identification"] is None:
        lines.append("feedback     the plant leaks the speaker into the reference mic and "
                     "controller.feedback_neutralization is off")
    lines.extend(session_summary_parts.safety_lines(summary["safety_events"]))
    lines.append(format_alarms(summary["alarms"], summary["modes"]))
    lines.append(classes_line(summary))
    return "\n".join(lines)


def classes_line(summary: dict) -> str:
    """The `classes` line of a simulation summary (one ear or several)."""
    if summary["classifier"] != "on":
        return f"classes      classifier {summary['classifier']}"
    if summary["noise_classes"]:
        timeline = session_summary_parts.class_intervals(summary["noise_classes"], summary["duration_s"])
        return f"classes      dominant {summary['dominant_class']}; {timeline}"
    if summary["dominant_class"] is not None:
        return (f"classes      mostly {summary['dominant_class']} (mean confidence "
                f"{summary['dominant_class_confidence']:.2f} over {summary['detections']} windows), never confident "
                f"enough to switch presets")
    return "classes      scene too short for a classification window"
