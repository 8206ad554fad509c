"""The `slotsweep` console script: `slotsweep run|train|prepare|report|probe ...`, each
the same as `python -m slotsweep.<command>` (and `python -m slotsweep` is this script).

Also what every command shares: `-v/-q` and logging, `--version`, count arguments.
Nothing here imports torch, Ray or MLflow: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from slotsweep import __version__

COMMANDS = {
    "run": ("slotsweep.run", "run or resume a sweep"),
    "train": ("slotsweep.train", "train one model without Ray"),
    "prepare": ("slotsweep.prepare", "write datasets as Arrow shards"),
    "report": ("slotsweep.report", "a sweep's report: an HTML page, Markdown tables"),
    "probe": ("slotsweep.probe", "the feature-prediction probe of a checkpoint"),
}


def positive_int(text: str) -> int:
    """argparse type for counts (trials, CPUs, scenes): a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """-v/-q (repeatable) and -V/--version, the same on every command."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (-vv: debugging detail)")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="fewer messages: warnings and errors only (-qq: errors only)")
    parser.add_argument("-V", "--version", action="version", version=version_line(),
                        help="print the version and exit")


def add_sweep_storage_options(parser: argparse.ArgumentParser) -> None:
    """Where a sweep's state and its MLflow runs are: the same for `run` and `report`."""
    parser.add_argument("--storage", default=os.environ.get("SLOTSWEEP_STORAGE"),
                        help="the sweeps' storage directory (default: $SLOTSWEEP_STORAGE, "
                             "else the sweep file's storage)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                             "sweep file's tracking.uri, else sqlite in the sweep's storage)")


def version_line() -> str:
    return f"slotsweep {__version__}"


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a message is written (not when the
    handler was made), so that redirecting stderr later (pytest, a wrapper) holds."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Formatter(logging.Formatter):
    """`message` for information, `warning: message` above it, as the CLIs print errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def setup_logging(verbosity: int) -> None:
    """The `slotsweep` loggers' level from -v/-q (0: information; 1: debug; -1: warnings;
    -2: errors) and one handler on stderr; stdout stays for tables and summaries.
    Other libraries' loggers (Ray, MLflow) are left as they configure them."""
    level = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(
        max(-2, min(1, verbosity)), logging.ERROR)
    logger = logging.getLogger("slotsweep")
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Formatter("%(message)s"))
        logger.addHandler(handler)


def usage() -> str:
    lines = [f"  {name:<8} {text} (python -m {module})"
             for name, (module, text) in COMMANDS.items()]
    return ("usage: slotsweep [-V] COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`slotsweep COMMAND --help` for a command's options; -V: the version")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version_line())
        return 0
    if argv[0] not in COMMANDS:
        print(f"slotsweep: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
