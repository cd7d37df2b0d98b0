"""What a finished session reports, the same on the rig and in the simulator.

The parts of an exit summary that come from the session itself (safety events, noise
classes, the classifier's state, the device's cancellation estimate, records written) are
built here once, and so are the text helpers both summaries print them with. Each backend
adds what only it knows (callback timing on the rig; the plant, the optimum and the true
attenuation in the simulator).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from device.core.worker import WorkerReport


def noise_classes(report: WorkerReport) -> list[dict[str, Any]]:
    """Every preset switch the classifier made: when, to what, how confident."""
    return [{"time_s": round(c.time_s, 3), "noise_type": c.noise_type, "confidence": round(c.confidence, 3)}
            for c in report.class_changes]


def safety_events(report: WorkerReport) -> list[dict[str, Any]]:
    return [event.to_dict() for event in report.safety_events]


def classifier_status(report: WorkerReport) -> str:
    return "on" if report.classifier_error is None else f"off: {report.classifier_error}"


def dominant_class(report: WorkerReport) -> tuple[str | None, float | None]:
    """The class most windows were given (ties: alphabetical first) and its mean confidence."""
    if not report.detections:
        return None, None
    labels = [d["noise_type"] for d in report.detections]
    dominant = max(sorted(set(labels)), key=labels.count)
    confidence = float(np.mean([d["confidence"] for d in report.detections if d["noise_type"] == dominant]))
    return dominant, round(confidence, 3)


def mean_cancellation_db(metrics: Iterable, after_s: float | None = None, last: int | None = None) -> float | None:
    """Mean of the device's per-interval cancellation estimates: those ending after `after_s`
    (the steady state), or the `last` few (the session average includes the convergence)."""
    metrics = list(metrics)
    if last is not None:
        metrics = metrics[-last:]
    values = [m.estimated_cancellation_db for m in metrics
              if m.estimated_cancellation_db is not None and (after_s is None or m.time_s > after_s + 1e-9)]
    return None if not values else round(float(np.mean(values)), 2)


def session_parts(session) -> dict[str, Any]:
    """The summary keys every backend shares, from a stopped `device.core.session.Session` (or an
    `EarsSession`: every ear's safety events, each naming its ear, and records; the classifier is
    the first ear's worker's, which hears the ears' mix)."""
    report = session.worker.report
    workers = session.workers
    events = safety_events(report)
    if len(workers) > 1:
        events = sorted(({**event, "ear": worker.ear} for worker in workers for event in safety_events(worker.report)),
                        key=lambda event: event["time_s"])
    return {
        "safety_events": events,
        "noise_classes": noise_classes(report),
        "classifier": classifier_status(report),
        "records_written": sum(worker.report.records_written for worker in workers),
        "session_id": session.session_id,
    }


# -- text ------------------------------------------------------------------------------------------

def db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} dB"


def value_or_dash(value) -> str:
    return "-" if value is None else str(value)


def class_names(classes: list[dict[str, Any]]) -> str:
    return ", ".join(c["noise_type"] for c in classes) or "-"


def class_intervals(classes: list[dict[str, Any]], end_s: float) -> str:
    """The class timeline as intervals: "2.0-10.0 s pink, 10.0-20.0 s construction" (a class
    holds from its switch to the next one; before the first switch nothing was classified)."""
    parts = []
    for index, change in enumerate(classes):
        until = classes[index + 1]["time_s"] if index + 1 < len(classes) else end_s
        parts.append(f"{change['time_s']:.1f}-{until:.1f} s {change['noise_type']}")
    return ", ".join(parts) or "-"


REIDENTIFIED = "secondary_path_reidentified"   # device.core.tracking's event


def path_checks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The secondary-path checks made on the fly (`controller.reidentify`), from the events."""
    return [event for event in events if event["kind"] == REIDENTIFIED]


def safety_lines(events: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """The `safety` lines of a summary: none, or each watchdog event with its time and value,
    then a line per secondary-path check."""
    checks = path_checks(events)
    watchdog = [event for event in events if event["kind"] != REIDENTIFIED]
    if not watchdog:
        lines = ["safety       no watchdog events"]
    else:
        lines = [f"safety       {len(watchdog)} watchdog events:"]
        for event in watchdog[:limit]:
            lines.append(f"             {event['time_s']:.3f} s  {event['kind']} ({event['value']:.1f}), "
                         f"step size was {event['step_size']:.4g}")
        if len(watchdog) > limit:
            lines.append(f"             ... and {len(watchdog) - limit} more (summary.json lists them all)")
    for check in checks[:limit]:
        change = "n/a" if check.get("change_db") is None else f"{check['change_db']:+.1f} dB"
        whose = f" of ear {check['ear']}" if check.get("ear") else ""
        lines.append(f"path         {check['time_s']:.3f} s  secondary path{whose} re-identified ({check.get('probe_s', 0):.1f} s "
                     f"probe, change {change}, threshold {check.get('threshold_db', 0):.1f} dB): {check.get('outcome', '')}")
    if events and events[-1]["kind"] == "stopped_reidentify":
        lines.append("             anti-noise stopped: the secondary path no longer matches; run `anc-device identify`"
                     + (" (or wait for the next check)" if checks else ""))
    return lines
