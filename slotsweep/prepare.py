"""Prepare datasets as Arrow shards (DESIGN.md, "The flow of data").

    python -m slotsweep.prepare dsprites --out data/dsprites64 --train 60000 --val 320
    python -m slotsweep.prepare features --in data/dsprites64/val --weights PATH.pth

Each split is written resumably: rerunning after an interruption continues from the
last complete shard, and rerunning over a finished split says so and does nothing.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys

from slotsweep.cli import add_common_options, positive_int, setup_logging
from slotsweep.data import datasets

# Nothing above imports torch: `--help` and a usage error answer at once. The data code
# (torch, Arrow, timm) is imported by the dataset's function when it runs.
log = logging.getLogger("slotsweep.prepare")
DEFAULT_ENCODER = "vit_base_patch16_224.dino"


def _bar(**kwargs):
    from tqdm import tqdm

    return tqdm(unit="img", dynamic_ncols=True, **kwargs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slotsweep.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    ds = sub.add_parser("dsprites", help="built-in synthetic colored multi-dSprites")
    ds.add_argument("--out", required=True, help="output directory (gets train/ and val/)")
    ds.add_argument("--train", type=positive_int, default=60_000,
                    help="training scenes (default: 60000)")
    ds.add_argument("--val", type=positive_int, default=320,
                    help="validation scenes (default: 320)")
    ds.add_argument("--resolution", type=positive_int, default=64,
                    help="image size in pixels (default: 64)")
    ds.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    ds.add_argument("--rows-per-shard", type=positive_int, default=4096,
                    help="scenes per Arrow shard (default: 4096)")
    ds.add_argument("--workers", type=positive_int, default=None,
                    help="generating processes (default: the cores, at most 8)")
    ds.set_defaults(run=datasets.dsprites)
    ft = sub.add_parser("features", help="add frozen-ViT tokens to image shards")
    ft.add_argument("--in", dest="input", required=True, help="a split directory of shards")
    ft.add_argument("--out", help="output split directory (default: IN-ENCODER)")
    _encoder_options(ft)
    ft.set_defaults(run=datasets.features)
    co = sub.add_parser("coco", help="COCO via pycocotools + frozen-ViT tokens")
    co.add_argument("--images", required=True, help="folder of the split's JPEG files")
    co.add_argument("--annotations", required=True, help="instances_*.json")
    co.add_argument("--out", required=True, help="output split directory")
    _encoder_options(co)
    co.add_argument("--target-size", type=positive_int, default=128,
                    help="image size kept for image-reconstruction runs (default: 128)")
    co.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="DataLoader processes decoding JPEGs (default: the cores, at most 8)")
    co.add_argument("--rows-per-shard", type=positive_int, default=1024,
                    help="images per Arrow shard (default: 1024)")
    co.set_defaults(run=datasets.coco)
    md = sub.add_parser("multi-dsprites", help="DeepMind's multi_dsprites TFRecord (no TF)")
    md.add_argument("--tfrecord", required=True, help="e.g. multi_dsprites_colored_on_colored"
                                                      ".tfrecords (GZIP)")
    md.add_argument("--out", required=True, help="output split directory")
    md.add_argument("--start", type=int, default=0, help="first record (default: 0)")
    md.add_argument("--count", type=positive_int, default=None,
                    help="records (default: to the end)")
    md.add_argument("--rows-per-shard", type=positive_int, default=4096,
                    help="scenes per Arrow shard (default: 4096)")
    md.set_defaults(run=datasets.multi_dsprites)
    vf = sub.add_parser("verify", help="check a split's shards against its manifest")
    vf.add_argument("split", help="a split directory of shards")
    vf.set_defaults(run=datasets.verify_split)
    return p


def _encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help=f"a timm ViT name (default: {DEFAULT_ENCODER})")
    p.add_argument("--weights", default="pretrained",
                   help="pretrained (timm's hub) | random (tests) | PATH to a state dict")
    p.add_argument("--block", type=positive_int, default=None,
                   help="1-based block whose tokens are taken (default: the last)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="images per encoder batch (default: 64)")
    p.add_argument("--device", default=None,
                   help="torch device for the encoder (default: cuda if visible, else cpu)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    from slotsweep.data.format import ShardError

    # The dataset function's parameters are the subcommand's options, by name.
    options = {k: getattr(args, k) for k in inspect.signature(args.run).parameters
               if k != "bar"}
    try:
        for line in args.run(**options, bar=_bar):
            print(line)
    except (ShardError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
