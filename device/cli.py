"""The `anc-device` command line.

Every command lives in its own module under `device.commands` with `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up and turns
user mistakes into one line on stderr and exit status 2.

`anc-device --simulate scene.wav [...]` is accepted as written and means
`anc-device simulate scene.wav [...]`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from device import __version__
from device.contract.errors import UserError

COMMAND_MODULES = (
    "device.commands.run",
    "device.commands.identify",
    "device.commands.latency",
    "device.commands.devices",
    "device.commands.simulate",
    "device.commands.classify",
    "device.commands.scene",
)


def _commands():
    return [importlib.import_module(name) for name in COMMAND_MODULES]


def _rewrite_simulate_flag(argv: list[str]) -> list[str]:
    """Turn `--simulate SCENE` (anywhere before a subcommand) into the `simulate` subcommand."""
    for index, arg in enumerate(argv):
        if arg == "--simulate":
            return ["simulate", *argv[:index], *argv[index + 1:]]
        if arg.startswith("--simulate="):
            return ["simulate", *argv[:index], arg.split("=", 1)[1], *argv[index + 1:]]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anc-device",
        description="Real-time active noise control: run on a rig, identify its paths, or simulate a scene.",
    )
    parser.add_argument("--version", action="version", version=f"anc-device {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _commands():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_rewrite_simulate_flag(argv))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"anc-device: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("anc-device: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
