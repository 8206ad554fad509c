"""Prepare datasets as Arrow shards (DESIGN.md, "The flow of data").

    python -m slotsweep.prepare dsprites --out data/dsprites64 --train 60000 --val 320

Each split is written resumably: rerunning after an interruption continues from the
last complete shard, and rerunning over a finished split says so and does nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from slotsweep.data.shards import MANIFEST, ShardError
from slotsweep.data.synthetic import write_dsprites


def _dsprites(args: argparse.Namespace) -> None:
    splits = [("train", args.train, 0), ("val", args.val, args.train)]
    for name, num, start in splits:
        out = Path(args.out) / name
        if (out / MANIFEST).is_file():
            print(f"{out}: already complete, nothing to do")
            continue
        with tqdm(total=num, desc=f"dsprites {name}", unit="img", dynamic_ncols=True) as bar:
            write_dsprites(
                out, num=num, seed=args.seed, start=start, resolution=args.resolution,
                rows_per_shard=args.rows_per_shard, progress=bar.update,
            )
        print(f"{out}: {num} scenes at {args.resolution}x{args.resolution}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slotsweep.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    ds = sub.add_parser("dsprites", help="built-in synthetic colored multi-dSprites")
    ds.add_argument("--out", required=True, help="output directory (gets train/ and val/)")
    ds.add_argument("--train", type=int, default=60_000, help="training scenes")
    ds.add_argument("--val", type=int, default=320, help="validation scenes")
    ds.add_argument("--resolution", type=int, default=64)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--rows-per-shard", type=int, default=4096)
    ds.set_defaults(run=_dsprites)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ShardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
