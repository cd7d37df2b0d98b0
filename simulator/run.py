"""A whole simulated session: identify the secondary path, run the runtime in closed loop with
the plant, and measure the result against the causal optimum."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.contract.config import Config
from device.core.alarms import format_alarms
from device.core.dsp.identification import (IdentificationResult, RigIdentification, configured_probe,
                                            controller_tap_budget, identify_rig, resolved_controller_taps)
from device.core.engine import AncEngine
from device.contract.errors import UserError
from device.core.session import Session, load_classifier
from simulator import report
from simulator.optimum import causal_optima
from simulator.plant import ClosedLoopResult, PathChange, Plant, run_closed_loop
from simulator.scenes import Scene, load_scene

POLL_EVERY_BLOCKS = 16


@dataclass
class Simulation:
    scene: Scene
    plant: Plant
    cfg: Config
    result: ClosedLoopResult
    identification: IdentificationResult
    feedback_identification: IdentificationResult | None
    optimum_error: np.ndarray
    summary: dict[str, Any]
    metrics: list[dict]
    session: Session


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


def simulate(scene_path: str | Path, cfg: Config, plant_name: str | Path | None = None,
             spool: Any | None = None, progress: bool = False,
             secondary_path_changes: list[tuple[int, np.ndarray]] | None = None) -> Simulation:
    plant = Plant.load(plant_name or cfg.simulator.plant)
    if secondary_path_changes:
        plant.path_changes = sorted([*plant.path_changes, *(PathChange(int(at), np.asarray(path, dtype=np.float64))
                                                             for at, path in secondary_path_changes)],
                                    key=lambda change: change.at_sample)
    block_size = cfg.audio.block_size
    plant.check_block_size(block_size)
    scene = load_scene(scene_path, plant.sample_rate)
    seed = cfg.simulator.seed
    fs = plant.sample_rate

    ambient = scene.samples[:int(cfg.identification.ambient_s * fs)]
    rig = identify_rig_of_plant(cfg, plant, seed, ambient)
    secondary = rig.secondary
    feedback = rig.feedback if rig.neutralize_feedback else None
    # What identification decided becomes the configuration the runtime runs with.
    cfg = cfg.replace("controller", feedback_neutralization=rig.neutralize_feedback,
                      taps=resolved_controller_taps(cfg.controller, rig.recommended_taps))
    engine = AncEngine.from_config(cfg, secondary.estimate, None if feedback is None else feedback.estimate,
                                   sample_rate=fs, block_size=block_size)
    engine.warm_up()
    classifier, classifier_error = load_classifier(cfg)
    session = Session(cfg, engine, classifier=classifier, spool=spool, classifier_error=classifier_error)

    counter = [0]

    def process_block(reference, error, out, meta):
        session.process_block(reference, error, out, meta)
        counter[0] += 1
        if counter[0] % POLL_EVERY_BLOCKS == 0:
            session.poll()

    result = run_closed_loop(scene.samples, plant, process_block, block_size, seed,
                             on_progress=_progress_printer(progress))
    session_summary = session.stop()

    n = result.error_on.size
    window = report.steady_window(n, fs)
    off, on = result.error_off[window], result.error_on[window]
    attenuation = report.attenuation_db(off, on)
    band = report.band_attenuation_db(off, on, fs)
    optima = causal_optima(result.disturbance_reference, result.error_off, plant.full_secondary_path(window.start),
                           cfg.controller.taps, window.start, window.stop, cfg.safety.max_weight_norm)
    optimum = optima.reachable
    optimum_db = report.attenuation_db(off, optimum.error[window])
    optimum_band_db = report.band_attenuation_db(off, optimum.error[window], fs)
    unconstrained_db = report.attenuation_db(off, optima.unconstrained.error[window])
    causality = plant.causality()
    events = [event.to_dict() for event in session.worker.report.safety_events]
    worker = session.worker.report
    classes = [{"time_s": round(c.time_s, 3), "noise_type": c.noise_type, "confidence": round(c.confidence, 3)}
               for c in worker.class_changes]
    dominant = None
    dominant_confidence = None
    if worker.detections:
        labels = [d["noise_type"] for d in worker.detections]
        dominant = max(sorted(set(labels)), key=labels.count)
        dominant_confidence = round(float(np.mean([d["confidence"] for d in worker.detections
                                                   if d["noise_type"] == dominant])), 3)
    ceiling_dbfs = cfg.safety.output_ceiling_dbfs
    peak = float(np.max(np.abs(result.output))) if result.output.size else 0.0
    summary = {
        "scene": str(scene_path),
        "duration_s": round(result.duration_s, 3),
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
        "convergence_s": None if (c := report.convergence_time(result.error_off, result.error_on, fs, attenuation)) is None else round(c, 2),
        "wiener_bound_db": round(optimum_db, 2),
        "wiener_bound_band_db": round(optimum_band_db, 2),
        "gap_to_optimum_db": round(optimum_db - attenuation, 2),
        # wiener_bound_* is the optimum reachable within ||w|| <= safety.max_weight_norm; the
        # unconstrained least-squares optimum beside it (simulator/optimum.py).
        "optimum_unconstrained_db": round(unconstrained_db, 2),
        "optimum_unconstrained_band_db": round(report.band_attenuation_db(off, optima.unconstrained.error[window], fs), 2),
        "optimum_weight_norm": round(optimum.weight_norm, 2),
        "optimum_unconstrained_weight_norm": round(optima.unconstrained.weight_norm, 2),
        "optimum_max_weight_norm": optima.max_weight_norm,
        "optimum_loading": optimum.loading,
        "causality": causality.to_dict(),
        "causality_verdict": causality.explain(),
        "identification": secondary.to_dict(),
        "feedback_identification": None if feedback is None else feedback.to_dict(),
        "feedback_measured": None if rig.feedback is None else rig.feedback.to_dict(),
        "feedback_ratio_db": None if rig.feedback_ratio_db is None else round(rig.feedback_ratio_db, 2),
        "feedback_neutralization": rig.neutralize_feedback,
        "primary_span_samples": rig.primary_span_samples,
        "recommended_controller_taps": rig.recommended_taps,
        "feedback_path_in_plant": plant.feedback_path is not None,
        "real_time_factor": round(result.duration_s / max(result.wall_time_s, 1e-9), 1),
        "engine_real_time_factor": round(result.duration_s / max(result.engine_time_s, 1e-9), 1),
        "safety_events": events,
        "watchdog_trips": session_summary["watchdog_trips"],
        "diverged": session_summary["watchdog_trips"] > 0,
        "output_peak_dbfs": round(20 * np.log10(max(peak, 1e-12)), 2),
        "output_ceiling_dbfs": ceiling_dbfs,
        "estimated_cancellation_db": _device_estimate(worker.metrics, window.start / fs),
        "session_avg_cancellation_db": session_summary["avg_cancellation_db"],
        "noise_classes": classes,
        "dominant_class": dominant,
        "dominant_class_confidence": dominant_confidence,
        "detections": len(worker.detections),
        "classifier": "on" if worker.classifier_error is None else f"off: {worker.classifier_error}",
        "records_written": worker.records_written,
        "session_id": session.session_id,
        "anc_mode": session_summary["anc_mode"],
        "modes": session_summary["modes"],
        "alarms": [{k: a[k] for k in ("kind", "start_s", "detected_s", "end_s", "confidence", "level_dbfs")}
                   for a in session_summary["alarms"]],
    }
    metrics = per_second_metrics(result, session)
    return Simulation(scene, plant, cfg, result, secondary, feedback, optimum.error, summary, metrics, session)


def _device_estimate(metrics, steady_start_s: float) -> float | None:
    """The device's own cancellation estimate over the steady state (mean of its intervals)."""
    values = [m.estimated_cancellation_db for m in metrics
              if m.estimated_cancellation_db is not None and m.time_s > steady_start_s + 1e-9]
    return None if not values else round(float(np.mean(values)), 2)


def per_second_metrics(result: ClosedLoopResult, session: Session) -> list[dict]:
    fs = result.sample_rate
    worker_metrics = session.worker.report.metrics
    rows = []
    seconds = int(np.ceil(result.duration_s))
    for k in range(seconds):
        part = slice(k * fs, min((k + 1) * fs, result.error_on.size))
        off, on = result.error_off[part], result.error_on[part]
        if off.size < fs // 10:
            break
        row = {
            "t_s": round(part.stop / fs, 3),
            "attenuation_db": round(report.attenuation_db(off, on), 2),
            "attenuation_band_db": round(report.band_attenuation_db(off, on, fs), 2),
            "error_off_rms_dbfs": round(10 * np.log10(np.mean(off * off) + 1e-30), 2),
            "error_on_rms_dbfs": round(10 * np.log10(np.mean(on * on) + 1e-30), 2),
            "output_rms_dbfs": round(10 * np.log10(np.mean(result.output[part] ** 2) + 1e-30), 2),
        }
        if k < len(worker_metrics):
            row["device"] = worker_metrics[k].to_dict()
        rows.append(row)
    return rows


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


def write_outputs(sim: Simulation, out: Path) -> list[Path]:
    import soundfile

    fs = sim.result.sample_rate
    written: list[Path] = []

    def wav(name: str, samples: np.ndarray) -> None:
        path = out / name
        _atomic_write(path, lambda tmp: soundfile.write(tmp, samples.astype(np.float32), fs, subtype="FLOAT", format="WAV"))
        written.append(path)

    def npy(name: str, array: np.ndarray) -> None:
        path = out / name
        _atomic_write(path, lambda tmp: np.save(tmp, array))
        written.append(path)

    wav("error_off.wav", sim.result.error_off)
    wav("error_on.wav", sim.result.error_on)
    wav("anti_noise.wav", sim.result.output)
    npy("primary_path.npy", sim.plant.primary_path)
    npy("secondary_path.npy", sim.plant.secondary_path)
    npy("reference_path.npy", sim.plant.reference_path)
    if sim.plant.feedback_path is not None:
        npy("feedback_path.npy", sim.plant.feedback_path)
    npy("secondary_path_estimate.npy", sim.identification.estimate)
    metrics_path = out / "metrics.jsonl"
    _atomic_write(metrics_path, lambda tmp: Path(tmp).write_text("".join(json.dumps(row) + "\n" for row in sim.metrics)))
    written.append(metrics_path)
    summary_path = out / "summary.json"
    _atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(sim.summary, indent=2) + "\n"))
    written.append(summary_path)
    try:
        png = out / "report.png"
        window = report.steady_window(sim.result.error_on.size, fs)
        _atomic_write(png, lambda tmp: report.write_png(Path(tmp), sim.result, window, sim.optimum_error,
                                                        f"{Path(sim.summary['scene']).name} on {sim.plant.name}",
                                                        modes=sim.summary["modes"], alarms=sim.summary["alarms"]))
        written.append(png)
    except ImportError:
        print("anc-device: matplotlib is not installed; skipped report.png (pip install 'anc-device[plots]')",
              file=sys.stderr)
    return written


def format_summary(summary: dict) -> str:
    def db(value):
        return "n/a" if value is None else f"{value:.1f} dB"

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
        f"(controller is {summary['gap_to_optimum_db']:.1f} dB from it)",
        "convergence  " + ("no meaningful cancellation to converge to" if summary["convergence_s"] is None
                            else f"{summary['convergence_s']:.2f} s to within 3 dB of the steady state"),
        f"device view  {db(summary['estimated_cancellation_db'])} over the steady state, as the device estimates it from "
        f"its own microphones and secondary-path model",
        f"speed        {summary['real_time_factor']:.1f}x real time (device side alone, engine and worker without the plant simulation: {summary['engine_real_time_factor']:.0f}x)",
        f"output       peak {summary['output_peak_dbfs']:.1f} dBFS, ceiling {summary['output_ceiling_dbfs']:.1f} dBFS",
    ]
    if summary["feedback_path_in_plant"] and summary["feedback_identification"] is None:
        lines.append("feedback     the plant leaks the speaker into the reference mic and "
                     "controller.feedback_neutralization is off")
    if summary["safety_events"]:
        lines.append(f"safety       {len(summary['safety_events'])} watchdog events:")
        for event in summary["safety_events"][:10]:
            lines.append(f"             {event['time_s']:.3f} s  {event['kind']} ({event['value']:.1f}), "
                         f"step size was {event['step_size']:.4g}")
        if any(event["kind"] == "stopped_reidentify" for event in summary["safety_events"]):
            lines.append("             anti-noise stopped: the secondary path no longer matches; run `anc-device identify`")
    else:
        lines.append("safety       no watchdog events")
    lines.append(format_alarms(summary["alarms"], summary["modes"]))
    if summary["classifier"] != "on":
        lines.append(f"classes      classifier {summary['classifier']}")
    elif summary["noise_classes"]:
        timeline = ", ".join(f"{c['time_s']:.1f} s {c['noise_type']}" for c in summary["noise_classes"])
        lines.append(f"classes      dominant {summary['dominant_class']}; timeline: {timeline}")
    elif summary["dominant_class"] is not None:
        lines.append(f"classes      mostly {summary['dominant_class']} (mean confidence "
                     f"{summary['dominant_class_confidence']:.2f} over {summary['detections']} windows), never confident "
                     f"enough to switch presets")
    else:
        lines.append("classes      scene too short for a classification window")
    return "\n".join(lines)
