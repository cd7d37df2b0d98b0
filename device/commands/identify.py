"""`anc-device identify`: measure the secondary path on the rig and store it.

Plays a low-level white-noise probe (`identification.*`: level, duration, fades, seed) through
the anti-noise speaker on the same duplex stream the controller will use, records both
microphones, and fits the speaker-to-error-mic FIR by least squares. Because the probe and
the recording share the stream clock, the estimate contains the whole I/O latency, which is
what FxLMS needs. With `controller.feedback_neutralization`, the speaker-to-reference-mic
path is fitted from the same recording. The estimates go to `runtime.state_dir` with the
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
PREROLL_S = 0.5   # silence before the probe: stream start-up transients pass before we listen


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def measure(sd, cfg, spec) -> dict:
    from device.rig.audio import play_and_record
    from device.core.dsp.identification import configured_probe, identify_path

    fs = spec.sample_rate
    probe = configured_probe(cfg.identification, fs)
    taps = cfg.controller.secondary_path_taps
    preroll = int(PREROLL_S * fs)
    played = np.concatenate([np.zeros(preroll), probe, np.zeros(taps)])
    recording = play_and_record(sd, spec, played)
    window = slice(preroll, preroll + probe.size + taps)
    secondary = identify_path(recording.played[window], recording.error[window], taps)
    feedback = None
    if cfg.controller.feedback_neutralization:
        feedback = identify_path(recording.played[window], recording.reference[window], cfg.controller.feedback_path_taps)
    return {"secondary": secondary, "feedback": feedback, "xruns": recording.xruns}


def run(args) -> int:
    from device.rig.audio import import_sounddevice, resolve_stream
    from device.rig.estimates import save_estimates

    cfg = load_config(args.config)
    sd = import_sounddevice()
    spec = resolve_stream(sd, cfg)
    result = measure(sd, cfg, spec)
    secondary, feedback = result["secondary"], result["feedback"]
    report = {
        "device": spec.describe(),
        "sample_rate": spec.sample_rate,
        "block_size": spec.block_size,
        "taps": int(secondary.estimate.size),
        "quality_db": round(secondary.quality_db, 2),
        "estimate_error_db": round(secondary.estimate_error_db, 2),
        "delay_samples": secondary.delay_samples,
        "delay_ms": round(secondary.delay_samples * 1e3 / spec.sample_rate, 3),
        "probe_rms_dbfs": round(secondary.probe_rms_dbfs, 2),
        "response_rms_dbfs": round(secondary.response_rms_dbfs, 2),
        "feedback": None if feedback is None else feedback.to_dict(),
        "xruns": result["xruns"],
        "stored": None,
    }
    if result["xruns"]:
        # An xrun may or may not break the alignment of probe and recording (JACK keeps it,
        # ALSA may not); the modelling error below tells which, so warn rather than refuse.
        print(f"anc-device: warning: {result['xruns']} callbacks flagged an xrun during the probe", file=sys.stderr)
    if not secondary.estimate_error_db <= MAX_ESTIMATE_ERROR_DB:
        raise UserError(
            f"identification: expected estimate error {secondary.estimate_error_db:.1f} dB is worse than "
            f"{MAX_ESTIMATE_ERROR_DB:.0f} dB (modelling error {secondary.quality_db:.1f} dB); estimate not stored: "
            "is the speaker connected to audio.speaker_channel and the error mic on audio.error_channel? "
            "In a loud room raise identification.probe_level_dbfs or duration_s")
    path = save_estimates(cfg.runtime.state_dir, secondary.estimate, None if feedback is None else feedback.estimate,
                          spec.identity, {key: value for key, value in report.items() if key != "stored"})
    report["stored"] = str(path)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"device       {report['device']}")
        print(f"secondary    {report['taps']} taps, delay {report['delay_samples']} samples "
              f"({report['delay_ms']} ms, I/O latency included)")
        print(f"quality      estimate error {report['estimate_error_db']} dB, modelling error {report['quality_db']} dB "
              f"(lower is better; probe {report['probe_rms_dbfs']} dBFS, response {report['response_rms_dbfs']} dBFS)")
        if feedback is not None:
            print(f"feedback     {feedback.estimate.size} taps, quality {feedback.quality_db:.2f} dB")
        print(f"stored       {path}")
    return 0
