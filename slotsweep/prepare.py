"""Prepare datasets as Arrow shards (DESIGN.md, "The flow of data").

    python -m slotsweep.prepare dsprites --out data/dsprites64 --train 60000 --val 320
    python -m slotsweep.prepare features --in data/dsprites64/val --weights PATH.pth

Each split is written resumably: rerunning after an interruption continues from the
last complete shard, and rerunning over a finished split says so and does nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from slotsweep.cli import add_common_options, positive_int, setup_logging

# Nothing above imports torch: `--help` and a usage error answer at once. The data code
# (torch, Arrow, timm) is imported by the subcommand that needs it.
log = logging.getLogger("slotsweep.prepare")
MANIFEST = "manifest.json"  # slotsweep.data.shards.MANIFEST, without importing torch
DEFAULT_ENCODER = "vit_base_patch16_224.dino"


def _bar(**kwargs):
    from tqdm import tqdm

    return tqdm(unit="img", dynamic_ncols=True, **kwargs)


def _exists(path: str, what: str, *, folder: bool = False) -> None:
    """Inputs are checked before anything slow starts (weights, a progress bar)."""
    ok = Path(path).is_dir() if folder else Path(path).is_file()
    if not ok:
        raise FileNotFoundError(f"{path}: no such {'folder' if folder else 'file'} ({what})")


def _device(name: str | None) -> str:
    """--device, or cuda when a GPU is visible (asked only when the subcommand runs)."""
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dsprites(args: argparse.Namespace) -> None:
    from slotsweep.data.synthetic import default_workers, write_dsprites

    splits = [("train", args.train, 0), ("val", args.val, args.train)]
    for name, num, start in splits:
        out = Path(args.out) / name
        if (out / MANIFEST).is_file():
            print(f"{out}: already complete, nothing to do")
            continue
        with _bar(total=num, desc=f"dsprites {name}") as bar:
            write_dsprites(
                out, num=num, seed=args.seed, start=start, resolution=args.resolution,
                rows_per_shard=args.rows_per_shard, progress=bar.update,
                workers=args.workers or default_workers(),
            )
        print(f"{out}: {num} scenes at {args.resolution}x{args.resolution}")


def _features(args: argparse.Namespace) -> None:
    from slotsweep.data.features import add_features, create_encoder
    from slotsweep.data.shards import ShardDataset

    total = len(ShardDataset(args.input))  # a bad --in fails before any weights load
    encoder = create_encoder(args.encoder, weights=args.weights, block=args.block)
    out = args.out or f"{args.input.rstrip('/')}-{args.encoder.replace('/', '_')}"
    with _bar(total=total, desc=f"{args.encoder} tokens") as bar:
        add_features(args.input, out, encoder, batch_size=args.batch_size,
                     device=_device(args.device), progress=bar.update)
    print(f"{out}: {total} rows, tokens {list(encoder.grid)} x {encoder.dim} (float16)")


def _stack(rows: list[dict]) -> dict:
    import numpy as np

    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def write_coco(images: str, annotations: str, out: str | Path, encoder, *,
               batch_size: int = 64, device: str = "cpu", target_size: int = 128,
               rows_per_shard: int = 1024, workers: int = 0, progress=None,
               total=None) -> Path:
    """COCO images → shards of tokens (frozen ViT), target images and label maps.

    JPEG decoding and label maps run in `workers` DataLoader processes while the encoder
    runs batches on `device`. Resumable: a rerun skips the complete shards' images.
    `total(n)` is told the number of images once the annotations are read, then
    `progress(k)` after every k images (the complete shards' first, on a resume).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from slotsweep.data.coco import CocoImages
    from slotsweep.data.features import extract_tokens
    from slotsweep.data.shards import ShardWriter

    dataset = CocoImages(images, annotations, image_size=encoder.image_size,
                         target_size=target_size)
    attributes = {"dataset": "coco", "annotations": Path(annotations).name,
                  "image_size": target_size, "mask_geometry": "short side 320, centre crop",
                  "encoder_geometry": f"short side {encoder.image_size}, centre crop",
                  **encoder.attributes()}
    if total:
        total(len(dataset))
    with ShardWriter(out, rows_per_shard=rows_per_shard, attributes=attributes,
                     resume=True) as writer:
        if progress:
            progress(writer.rows_done)
        todo = Subset(dataset, range(writer.rows_done, len(dataset)))
        loader = DataLoader(todo, batch_size=batch_size, num_workers=workers,
                            collate_fn=_stack, pin_memory=torch.cuda.is_available())
        for columns in loader:
            vit = columns.pop("image_vit")
            columns["features"] = extract_tokens(encoder, vit, device=device,
                                                 autocast=device != "cpu")
            writer.write(columns)
            if progress:
                progress(len(columns["id"]))
    return Path(out)


def _coco(args: argparse.Namespace) -> None:
    from slotsweep.data.features import create_encoder, finished_with

    _exists(args.images, "--images (the split's JPEG files)", folder=True)
    _exists(args.annotations, "--annotations (instances_*.json)")
    encoder = create_encoder(args.encoder, weights=args.weights, block=args.block)
    out = Path(args.out)
    if finished_with(out, encoder):  # refuses another encoder's output directory
        print(f"{out}: already complete, nothing to do")
        return
    with _bar(desc="coco") as bar:
        write_coco(args.images, args.annotations, out, encoder, batch_size=args.batch_size,
                   device=_device(args.device), target_size=args.target_size,
                   rows_per_shard=args.rows_per_shard, workers=args.workers,
                   progress=bar.update, total=lambda n: bar.reset(total=n))
    print(f"{out}: tokens {list(encoder.grid)} x {encoder.dim}, label maps 320x320")


def _multi_dsprites(args: argparse.Namespace) -> None:
    from slotsweep.data.multi_dsprites import import_multi_dsprites

    out = Path(args.out)
    if (out / MANIFEST).is_file():
        print(f"{out}: already complete, nothing to do")
        return
    _exists(args.tfrecord, "--tfrecord")
    with _bar(total=args.count, desc="multi-dsprites") as bar:
        import_multi_dsprites(args.tfrecord, out, start=args.start, count=args.count,
                              rows_per_shard=args.rows_per_shard, progress=bar.update)
    print(f"{out}: records {args.start}..{args.start + (args.count or 0)} of {args.tfrecord}")


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
    ds.set_defaults(run=_dsprites)
    ft = sub.add_parser("features", help="add frozen-ViT tokens to image shards")
    ft.add_argument("--in", dest="input", required=True, help="a split directory of shards")
    ft.add_argument("--out", help="output split directory (default: IN-ENCODER)")
    _encoder_options(ft)
    ft.set_defaults(run=_features)
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
    co.set_defaults(run=_coco)
    md = sub.add_parser("multi-dsprites", help="DeepMind's multi_dsprites TFRecord (no TF)")
    md.add_argument("--tfrecord", required=True, help="e.g. multi_dsprites_colored_on_colored"
                                                      ".tfrecords (GZIP)")
    md.add_argument("--out", required=True, help="output split directory")
    md.add_argument("--start", type=int, default=0, help="first record (default: 0)")
    md.add_argument("--count", type=positive_int, default=None,
                    help="records (default: to the end)")
    md.add_argument("--rows-per-shard", type=positive_int, default=4096,
                    help="scenes per Arrow shard (default: 4096)")
    md.set_defaults(run=_multi_dsprites)
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
    from slotsweep.data.shards import ShardError

    try:
        args.run(args)
    except (ShardError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
