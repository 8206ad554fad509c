"""The `slotsweep` console script: `slotsweep run|train|prepare ...`."""

from __future__ import annotations

import sys

COMMANDS = {
    "run": ("slotsweep.run", "run or resume a sweep (python -m slotsweep.run)"),
    "train": ("slotsweep.train", "train one model without Ray (python -m slotsweep.train)"),
    "prepare": ("slotsweep.prepare", "write datasets as Arrow shards"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {help}" for name, (_, help) in COMMANDS.items()]
        print("usage: slotsweep COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines),
              file=sys.stderr if argv else sys.stdout)
        return 0 if argv in ([], ["-h"], ["--help"]) else 2
    module = __import__(COMMANDS[argv[0]][0], fromlist=["main"])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
