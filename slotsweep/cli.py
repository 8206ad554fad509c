"""The `slotsweep` console script: `slotsweep run|train|prepare|report|probe ...`, each
the same as `python -m slotsweep.<command>`."""

from __future__ import annotations

import argparse
import importlib
import sys

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


def usage() -> str:
    lines = [f"  {name:<8} {text} (python -m {module})"
             for name, (module, text) in COMMANDS.items()]
    return "usage: slotsweep COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"slotsweep: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
