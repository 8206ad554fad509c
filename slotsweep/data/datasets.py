"""The datasets `slotsweep prepare` writes, one function each: resumable (a rerun goes on
from the last complete shard; over a finished split it does nothing) and returning the
lines that say what was done. Parameters are the command line's options by name;
`bar(total=..., desc=...)` is a progress-bar context manager (tqdm's, from the CLI).
Torch and timm are imported when a function runs, not with this module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Bar = Callable[..., Any]


def _exists(path: str, what: str, *, folder: bool = False) -> None:
    """Inputs are checked before anything slow starts (weights, a progress bar)."""
    ok = Path(path).is_dir() if folder else Path(path).is_file()
    if not ok:
        raise FileNotFoundError(f"{path}: no such {'folder' if folder else 'file'} ({what})")


def _device(name: str | None) -> str:
    """--device, or cuda when a GPU is visible."""
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dsprites(*, out: str, train: int, val: int, resolution: int, seed: int,
             rows_per_shard: int, workers: int | None, bar: Bar) -> list[str]:
    """The built-in synthetic colored multi-dSprites: `out/train`, `out/val`."""
    from slotsweep.data.format import MANIFEST
    from slotsweep.data.sources.synthetic import default_workers, write_dsprites

    said = []
    for name, num, first in (("train", train, 0), ("val", val, train)):
        split = Path(out) / name
        if (split / MANIFEST).is_file():
            said.append(f"{split}: already complete, nothing to do")
            continue
        with bar(total=num, desc=f"dsprites {name}") as progress:
            write_dsprites(split, num=num, seed=seed, start=first, resolution=resolution,
                           rows_per_shard=rows_per_shard, progress=progress.update,
                           workers=workers or default_workers())
        said.append(f"{split}: {num} scenes at {resolution}x{resolution}")
    return said


def features(*, input: str, out: str | None, encoder: str, weights: str, block: int | None,
             batch_size: int, device: str | None, bar: Bar) -> list[str]:
    """Frozen-ViT tokens added to a split of image shards (a new split)."""
    from slotsweep.data.reader import ShardDataset
    from slotsweep.data.sources.features import add_features, create_encoder

    total = len(ShardDataset(input))  # a bad --in fails before any weights load
    vit = create_encoder(encoder, weights=weights, block=block)
    out = out or f"{input.rstrip('/')}-{encoder.replace('/', '_')}"
    with bar(total=total, desc=f"{encoder} tokens") as progress:
        add_features(input, out, vit, batch_size=batch_size, device=_device(device),
                     progress=progress.update)
    return [f"{out}: {total} rows, tokens {list(vit.grid)} x {vit.dim} (float16)"]


def coco(*, images: str, annotations: str, out: str, encoder: str, weights: str,
         block: int | None, batch_size: int, device: str | None, target_size: int,
         workers: int, rows_per_shard: int, bar: Bar) -> list[str]:
    """A COCO split through pycocotools: ViT tokens, target images, label maps."""
    from slotsweep.data.sources.coco import write_coco
    from slotsweep.data.sources.features import create_encoder, finished_with

    _exists(images, "--images (the split's JPEG files)", folder=True)
    _exists(annotations, "--annotations (instances_*.json)")
    vit = create_encoder(encoder, weights=weights, block=block)
    if finished_with(Path(out), vit):  # refuses another encoder's output directory
        return [f"{out}: already complete, nothing to do"]
    with bar(desc="coco") as progress:
        write_coco(images, annotations, out, vit, batch_size=batch_size,
                   device=_device(device), target_size=target_size,
                   rows_per_shard=rows_per_shard, workers=workers,
                   progress=progress.update, total=lambda n: progress.reset(total=n))
    return [f"{out}: tokens {list(vit.grid)} x {vit.dim}, label maps 320x320"]


def multi_dsprites(*, tfrecord: str, out: str, start: int, count: int | None,
                   rows_per_shard: int, bar: Bar) -> list[str]:
    """Records of DeepMind's multi_dsprites TFRecord file (read without TensorFlow)."""
    from slotsweep.data.format import MANIFEST
    from slotsweep.data.sources.multi_dsprites import import_multi_dsprites

    if (Path(out) / MANIFEST).is_file():
        return [f"{out}: already complete, nothing to do"]
    _exists(tfrecord, "--tfrecord")
    with bar(total=count, desc="multi-dsprites") as progress:
        import_multi_dsprites(tfrecord, out, start=start, count=count,
                              rows_per_shard=rows_per_shard, progress=progress.update)
    return [f"{out}: records {start}..{start + (count or 0)} of {tfrecord}"]


def verify_split(*, split: str, bar: Bar) -> list[str]:
    """Every shard of a split present, of its manifest's size and sha256, and readable
    with its schema: a split copied from elsewhere, checked in full (a run checks splits
    up to 2 GiB this way before it starts, larger ones by size and schema only)."""
    from slotsweep.data.reader import verify

    manifest = verify(split)
    return [f"{split}: {manifest['num_rows']} rows in {len(manifest['shards'])} shards, "
            "each as its manifest says (size, sha256, schema, rows)"]
