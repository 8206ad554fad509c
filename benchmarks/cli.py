"""CLI start-up: `python -m slotsweep.<command> --help` against what it would cost with torch.

Each command's `--help` runs in a fresh interpreter, best of N wall-clock times, next to
two baselines measured in the same run: the bare interpreter (`python -c pass`, the
floor) and `python -c "import torch"` (what every `--help` paid while the commands
imported the trainer's modules first). The aim is under 0.5 s each.

    python benchmarks/cli.py [--repeats 7]
    python benchmarks/cli.py --smoke      # one repeat; CI runs it
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time

COMMANDS = ["run", "train", "prepare", "report", "probe"]


def best_of(repeats: int, cmd: list[str]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="one repeat: the script's CI")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 1
    py = sys.executable
    cases = [("python -c pass (floor)", ["-c", "pass"]),
             ('python -c "import torch" (before)', ["-c", "import torch"])]
    cases += [(f"python -m slotsweep.{c} --help", ["-m", f"slotsweep.{c}", "--help"])
              for c in COMMANDS]
    cases.append(("python -m slotsweep --version", ["-m", "slotsweep", "--version"]))
    rows = [(name, best_of(args.repeats, [py, *argv])) for name, argv in cases]
    if args.smoke:
        print("SMOKE RUN: one repeat, not a measurement")
    print(f"best of {args.repeats}; {platform.machine()}, Python {platform.python_version()}")
    print("| command | s |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
