"""`anc-device identify`: measure the rig's paths and store them.

Records `identification.ambient_s` of ambient noise with the speaker silent, then plays a
low-level white-noise probe (`identification.*`: level, duration, fades, seed) through the
anti-noise speaker on the same duplex stream the controller will use, records both
microphones, and hands everything to `device.core.dsp.identification.identify_rig`, the
function the simulator uses too:

* the speaker-to-error-mic path, measured long and stored as long as latency plus the path
  above the noise floor (`controller.secondary_path_taps` is the longest allowed: a path
  that needs more is refused with the length to set);
* the speaker-to-reference-mic (feedback) path from the same recording; when its level
  relative to the secondary path exceeds `identification.feedback_threshold_db`,
  neutralization is turned on and the path is stored with the estimate (`anc-device run`
  uses it);
* the controller length recommended for the rig (`controller.taps: auto` uses it).

Because the probe and the recording share the stream clock, the estimate contains the whole
I/O latency, which is what FxLMS needs. The estimates go to `runtime.state_dir` with the
stream they belong to; `anc-device run` refuses an estimate made for another stream.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from device.contract.config import load_config
from device.contract.errors import UserError

NAME = "identify"
HELP = "play a quiet probe, measure the speaker-to-error-mic path (with latency) and store it"

# Above this expected estimate error FxLMS would adapt on a wrong model. Typical causes:
# speaker unplugged, wrong channel map, probe too quiet for the room. The modelling error
# (residual over recorded power) is reported too, but room noise inflates it even when a long
# probe pins the path down, so it does not decide.
MAX_ESTIMATE_ERROR_DB = -15.0
# An xrun can tear the recording from the probe (ALSA may drop or repeat a period; measured on
# the JACK bench: 3033 flagged callbacks left an estimate 18 dB off its path with a 7.5 dB
# modelling error, where a clean capture of the same cup fits to 29 dB). A capture with xruns
# whose fit is worse than GOOD_FIT_DB is measured again, up to MEASUREMENTS times in all, and
# the best fit kept; a capture without xruns, or one that fits this well, is kept at once.
MEASUREMENTS = 3
GOOD_FIT_DB = -20.0
PREROLL_S = 0.5   # silence before the probe: stream start-up transients pass before we listen


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def measure(sd, cfg, spec) -> dict:
    from device.rig.audio import play_and_record
    from device.core.dsp.identification import configured_probe, controller_tap_budget, identify_rig

    fs = spec.sample_rate
    probe = configured_probe(cfg.identification, fs)
    ambient = int(cfg.identification.ambient_s * fs)
    tail = min(cfg.controller.secondary_path_taps, 4096) + 1024   # the response must ring out inside the recording
    preroll = int(PREROLL_S * fs)
    played = np.concatenate([np.zeros(preroll + ambient), probe, np.zeros(tail)])
    recording = play_and_record(sd, spec, played)
    start = preroll + ambient
    window = slice(start, start + probe.size + tail)
    ambient_window = slice(preroll, start)
    rig = identify_rig(recording.played[window], recording.reference[window], recording.error[window],
                       cfg.controller, cfg.identification, fs, controller_tap_budget(cfg.controller),
                       recording.reference[ambient_window] if ambient else None,
                       recording.error[ambient_window] if ambient else None)
    return {"rig": rig, "xruns": recording.xruns}


def measure_until_clean(sd, cfg, spec) -> dict:
    """`measure`, again while the capture xran and fits poorly; the best-fitting capture, with
    the number of captures taken (`measurements`)."""
    best = None
    for count in range(1, MEASUREMENTS + 1):
        result = measure(sd, cfg, spec)
        if best is None or result["rig"].secondary.quality_db < best["rig"].secondary.quality_db:
            best = result
        if result["xruns"] == 0 or result["rig"].secondary.quality_db <= GOOD_FIT_DB:
            break
    return {**best, "measurements": count}


def _ear_report(sd, cfg, spec) -> tuple[dict, object]:
    """Identify the ear `spec` routes to the processor: its report and what identify_rig found."""
    result = measure_until_clean(sd, cfg, spec)
    rig = result["rig"]
    secondary = rig.secondary
    feedback = rig.feedback if rig.neutralize_feedback else None
    report = {
        "device": spec.describe(),
        "sample_rate": spec.sample_rate,
        "block_size": spec.block_size,
        "taps": int(secondary.estimate.size),
        "max_taps": cfg.controller.secondary_path_taps,
        "left_out_db": secondary.to_dict()["left_out_db"],
        "quality_db": round(secondary.quality_db, 2),
        "estimate_error_db": round(secondary.estimate_error_db, 2),
        "delay_samples": secondary.delay_samples,
        "delay_ms": round(secondary.delay_samples * 1e3 / spec.sample_rate, 3),
        "probe_rms_dbfs": round(secondary.probe_rms_dbfs, 2),
        "response_rms_dbfs": round(secondary.response_rms_dbfs, 2),
        "feedback": None if feedback is None else feedback.to_dict(),
        **rig.decisions(),
        "xruns": result["xruns"],
        "measurements": result["measurements"],
        "stored": None,
    }
    where = "" if not spec.ears else f" on ear {_ear_of(spec)}"
    if result["xruns"]:
        # An xrun may or may not break the alignment of probe and recording (JACK keeps it,
        # ALSA may not); the modelling error below tells which, so warn rather than refuse.
        print(f"anc-device: warning: {result['xruns']} callbacks flagged an xrun during the probe{where} "
              f"(the best of {result['measurements']} captures kept)", file=sys.stderr)
    if not secondary.estimate_error_db <= MAX_ESTIMATE_ERROR_DB:
        channels = ("audio.speaker_channel", "audio.error_channel") if not spec.ears else (
            f"ear {_ear_of(spec)}'s speaker_channel", "its error_channel")
        raise UserError(
            f"identification{where}: expected estimate error {secondary.estimate_error_db:.1f} dB is worse than "
            f"{MAX_ESTIMATE_ERROR_DB:.0f} dB (modelling error {secondary.quality_db:.1f} dB); estimate not stored: "
            f"is the speaker connected to {channels[0]} and the error mic on {channels[1]}? "
            "In a loud room raise identification.probe_level_dbfs or duration_s")
    return report, rig


def _ear_of(spec) -> str:
    return next(ear.name for ear in spec.ears if ear.error_channel == spec.error_channel)


def run(args) -> int:
    from device.rig.audio import import_sounddevice, resolve_stream
    from device.rig.estimates import save_estimates

    cfg = load_config(args.config)
    sd = import_sounddevice()
    spec = resolve_stream(sd, cfg)
    # Several ears: the probe plays on one ear at a time (the others silent), so each fit sees
    # its own speaker alone; every estimate is checked before any is stored.
    names = spec.ear_names or (None,)
    measured = {name: _ear_report(sd, cfg, spec if name is None else spec.for_ear(name)) for name in names}
    for name, (report, rig) in measured.items():
        feedback = rig.feedback if rig.neutralize_feedback else None
        path = save_estimates(cfg.runtime.state_dir, rig.secondary.estimate,
                              None if feedback is None else feedback.estimate, spec.identity,
                              {key: value for key, value in report.items() if key != "stored"}, ear=name)
        report["stored"] = str(path)
    if args.json:
        if names == (None,):
            print(json.dumps(measured[None][0]))
        else:
            print(json.dumps({"ears": {name: report for name, (report, _) in measured.items()}}))
        return 0
    for name, (report, rig) in measured.items():
        if name is not None:
            print(f"ear          {name}")
        _print_report(cfg, report, rig)
    return 0


def _print_report(cfg, report: dict, rig) -> None:
    print(f"device       {report['device']}")
    left_out = ("nothing above the noise floor" if report["left_out_db"] is None
                else f"{report['left_out_db']} dB of its energy")
    print(f"secondary    {report['taps']} taps (latency plus the whole path; at most {report['max_taps']}), "
          f"delay {report['delay_samples']} samples ({report['delay_ms']} ms, I/O latency included), "
          f"left out {left_out}")
    print(f"quality      estimate error {report['estimate_error_db']} dB, modelling error {report['quality_db']} dB "
          f"(lower is better; probe {report['probe_rms_dbfs']} dBFS, response {report['response_rms_dbfs']} dBFS)")
    if rig.feedback is None:
        print("feedback     none above the noise floor: neutralization off")
    else:
        state = "on" if rig.neutralize_feedback else "off"
        print(f"feedback     {rig.feedback.estimate.size} taps, {report['feedback_ratio_db']} dB relative to the "
              f"secondary path (threshold {cfg.identification.feedback_threshold_db} dB): neutralization {state}")
    span = ("not measurable from this ambient noise" if rig.primary_span_samples is None
            else f"primary path {rig.primary_span_samples} samples")
    print(f"controller   {rig.recommended_taps} taps recommended ({span})")
    print(f"stored       {report['stored']}")
