"""`anc-device run`: cancel noise on the rig until SIGTERM/SIGINT (or `--duration`).

Loads and checks everything before any sound is made (config, devices, the stored
secondary-path estimate for this very stream, the classifier, the spool), compiles the
kernel, then starts the duplex stream muted; the engine measures the uncontrolled level and
fades the anti-noise in. On SIGTERM/SIGINT it fades out, closes the stream, writes the
session record and prints a summary (`--json`: one JSON object on stdout). Logs go to stderr.

With several ears (`audio.ears`) every ear's estimate must be stored for this stream and
channel map; each ear runs with its own controller length and feedback decision, all ears in
one kernel call per block (`device.core.ears`), and the summary gives each ear's figures.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from device.contract.config import load_config
from device.contract.errors import UserError

NAME = "run"
HELP = "run the noise canceller on the configured sound card until stopped"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file overriding config/default.yaml")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until SIGTERM/SIGINT)")
    parser.add_argument("--mode", help="what the speaker plays: off, anc or hear-through (default: anc.mode of the config)")
    parser.add_argument("--json", action="store_true", help="print the exit summary as exactly one JSON object on stdout")
    parser.add_argument("--no-live-view", action="store_true",
                        help="no status line on the terminal (it is off anyway when stderr is not a terminal or "
                             "under systemd)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level on stderr (default info)")


def with_mode(cfg, mode: str):
    """The configuration with anc.mode set from --mode, refused in one line when unknown."""
    from device.contract.config import ANC_MODES

    if mode not in ANC_MODES:
        raise UserError(f"--mode: {mode!r} is not one of {', '.join(ANC_MODES)}")
    return cfg.replace("anc", mode=mode)


def open_spool(cfg):
    """The local outbox the cloud agent drains; refusing to start beats silently losing records."""
    try:
        from device.contract.spool import Spool
    except ImportError:
        return None
    path = Path(cfg.spool.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Spool(path, int(cfg.spool.budget_mb * 2**20))
    except OSError as exc:
        raise UserError(f"spool.path: cannot open {path}: {exc.strerror or exc}") from None


def configured_for(cfg, estimates, ear: str | None = None):
    """The configuration an ear runs with: identification decided both of these. A stored
    feedback path means neutralization is on, and `controller.taps: auto` is the length it
    recommended for this rig (this ear)."""
    from device.core.dsp.identification import DEFAULT_TAP_BUDGET, resolved_controller_taps

    if cfg.controller.feedback_neutralization and estimates.feedback_path is None:
        whose = "the stored estimate" if ear is None or ear == "ear" else f"ear {ear}'s stored estimate"
        raise UserError(f"controller.feedback_neutralization: {whose} has no feedback path (none was "
                        "measured above the noise floor, or it predates this setting); run `anc-device identify` again")
    return cfg.replace("controller", feedback_neutralization=estimates.feedback_path is not None,
                       taps=resolved_controller_taps(cfg.controller, estimates.metadata.get(
                           "recommended_controller_taps", DEFAULT_TAP_BUDGET)))


def run(args) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="anc-device: %(levelname)s %(message)s")
    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration: expected a positive number of seconds, got {args.duration}")
    cfg = load_config(args.config)
    if args.mode is not None:
        cfg = with_mode(cfg, args.mode)

    from device.rig.audio import DuplexStream, import_sounddevice, resolve_stream
    from device.rig.estimates import load_estimates
    from device.core.session import compose_session
    from device.rig.supervisor import Supervisor, format_summary
    from device.commands import live_view
    from device.commands.live_view import LiveView

    sd = import_sounddevice()
    spec = resolve_stream(sd, cfg)
    names = spec.ear_names if len(spec.ears) > 1 else (spec.ear_names[0] if spec.ears else None,)
    estimates = {name: load_estimates(cfg.runtime.state_dir, spec.identity, ear=name) for name in names}
    ear_configs = {name: configured_for(cfg, estimate, name) for name, estimate in estimates.items()}
    spool = open_spool(cfg)
    try:
        if len(names) > 1:
            from device.core.ears import compose_ears_session

            session = compose_ears_session(ear_configs, [e.secondary_path for e in estimates.values()],
                                           [e.feedback_path for e in estimates.values()],
                                           sample_rate=spec.sample_rate, block_size=spec.block_size, spool=spool)
        else:
            cfg = ear_configs[names[0]]
            estimate = estimates[names[0]]
            session = compose_session(cfg, estimate.secondary_path, estimate.feedback_path,
                                      sample_rate=spec.sample_rate, block_size=spec.block_size, spool=spool)
        stream = DuplexStream(sd, spec, session)
        for name, estimate in estimates.items():
            logging.getLogger(__name__).info(
                "secondary path%s: %d taps, modelling error %s dB, identified %s",
                "" if len(names) == 1 else f" of ear {name}", estimate.secondary_path.size,
                estimate.metadata.get("quality_db"), estimate.metadata.get("created_at"))
        supervisor = Supervisor(cfg, sd, session, stream, spool=spool)
        view = LiveView(supervisor) if live_view.wanted() and not args.no_live_view else None
        if view is not None:
            view.start()
        try:
            summary = supervisor.run(args.duration)
        finally:
            if view is not None:
                view.stop()
    finally:
        if spool is not None:
            spool.close()
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0
