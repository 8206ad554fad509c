"""Shard reader throughput for DINOSAUR features (196 x 768 float16 per image).

Compares, on the same data in the same run:
  - raw read bandwidth: the shard files read into memory (cold page cache where we can
    drop it: we cannot here, so each layout is read once before timing: warm cache);
  - the shard reader (memory-mapped Arrow, zero-copy views) through the trainer's batch
    path with 0, 1 and 2 DataLoader workers;
  - the authors' layout: one `.npy` file per image, loaded with np.load per sample.

    python benchmarks/loader.py [--images 4096] [--batch-size 64]
    python benchmarks/loader.py --smoke      # 128 images of 16x32 tokens; CI runs it
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slotsweep.data.batches import Batches
from slotsweep.data.reader import ShardDataset
from slotsweep.data.writer import ShardWriter

TOKENS, DIM = 196, 768


class NpyPerImage(Dataset):
    def __init__(self, folder: Path, n: int) -> None:
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.folder / f"{i:07d}.npy"))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true",
                        help="128 images of 16x32 tokens, batch 16: the script's CI")
    args = parser.parse_args()
    tokens, dim = (16, 32) if args.smoke else (TOKENS, DIM)
    if args.smoke:
        args.images, args.batch_size = 128, 16
    root = Path(tempfile.mkdtemp(prefix="slotsweep-loader-"))
    try:
        rng = np.random.default_rng(0)
        shards, npy = root / "shards", root / "npy"
        npy.mkdir()
        with ShardWriter(shards, rows_per_shard=1024) as writer:
            for start in range(0, args.images, 256):
                n = min(256, args.images - start)
                feats = rng.standard_normal((n, tokens, dim), dtype=np.float32).astype(np.float16)
                writer.write({"id": np.arange(start, start + n, dtype=np.int64),
                              "features": feats})
                for j in range(n):
                    np.save(npy / f"{start + j:07d}.npy", feats[j])
        nbytes = args.images * tokens * dim * 2
        files = sorted(shards.glob("*.arrow"))

        def raw():
            for f in files:
                f.read_bytes()

        raw()  # warm the page cache for every layout alike
        rows = {"raw read of the shard files (bytes into memory)": timed(raw)}

        batches = Batches(ShardDataset(shards, columns=["features"]))
        steps = args.images // args.batch_size
        for workers in (0, 1, 2):
            it = batches.train_batches(start=0, batch_size=args.batch_size, seed=0,
                                       num_workers=workers)
            next(it)  # start-up (worker processes) is not throughput

            def consume(it=it, workers=workers):
                for _ in range(steps - 1):
                    batch = next(it)  # get_batch gathers (copies) every byte of the batch
                    if batch["features"].shape != (args.batch_size, tokens, dim):
                        raise SystemExit(f"{workers} workers: a batch of shape "
                                         f"{tuple(batch['features'].shape)}")

            rows[f"shards, {workers} loader workers"] = timed(consume) * steps / (steps - 1)

        loader = DataLoader(NpyPerImage(npy, args.images), batch_size=args.batch_size,
                            shuffle=True, num_workers=0)
        list(loader)  # warm

        def npy_read():
            for b in loader:
                assert b.shape[0] > 0  # np.load read every byte

        rows["one .npy per image (authors' layout), 0 workers"] = timed(npy_read)

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.images} images "
              f"x {tokens}x{dim} float16 = {nbytes / 1e9:.2f} GB, batch {args.batch_size}, "
              "warm page cache" + (" — SMOKE RUN: tiny, not a measurement" if args.smoke else "")
              + "\n")
        print("| reader | samples/s | MB/s | vs raw read |\n|---|---|---|---|")
        raw_rate = nbytes / rows["raw read of the shard files (bytes into memory)"]
        for name, seconds in rows.items():
            rate = nbytes / seconds
            print(f"| {name} | {args.images / seconds:,.0f} | {rate / 1e6:,.0f} | "
                  f"{100 * rate / raw_rate:.0f}% |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
