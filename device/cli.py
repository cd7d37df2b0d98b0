"""The `anc-device` command line.

Every command lives in its own module under `device.commands` with `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`; this file only wires them up and turns
user mistakes into one line on stderr and exit status 2.

`anc-device --simulate scene.wav [...]` is accepted as written and means
`anc-device simulate scene.wav [...]`.
"""

from __future__ import annotations

import os

# One BLAS thread: the simulator's least-squares fits are many short dot products, which
# OpenBLAS's spinning worker threads make twenty times slower on a busy two-core machine, and
# on a rig no BLAS thread may compete with the audio callback. Set before numpy is imported.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from typing import Callable  # noqa: E402

from device import __version__  # noqa: E402
from device.contract.errors import UserError  # noqa: E402

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


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line naming the command and what is wrong, like every other
    user mistake (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="anc-device",
        description="Real-time active noise control: run on a rig, identify its paths, or simulate a scene.",
        epilog="example: anc-device --simulate simulator/scenes/engine_hum.wav --plant headphone --out out/demo",
    )
    parser.add_argument("--version", action="version", version=f"anc-device {__version__}")
    # Shown in the help only: main() rewrites `--simulate SCENE` into the `simulate` command.
    parser.add_argument("--simulate", metavar="SCENE",
                        help="simulate a WAV scene through a simulated plant: the same as `anc-device simulate SCENE "
                             "[--plant P] [--config FILE] [--out DIR] [--json]` (see `anc-device simulate --help`)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in _commands():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def run_quietly_into_pipes(entry: Callable[[], int]) -> int:
    """Run a command-line entry point so that a reader closing the pipe early (`... | head -1`)
    ends it quietly: no BrokenPipeError traceback, and none at interpreter exit when Python
    flushes stdout. Exit status 141, what a shell reports for a writer stopped by SIGPIPE.
    SIGPIPE itself keeps Python's default (ignored): a closed network socket must stay an
    exception in the code that handles it, not kill the process."""
    try:
        status = entry()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _main(argv: list[str] | None) -> int:
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


def main(argv: list[str] | None = None) -> int:
    return run_quietly_into_pipes(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
