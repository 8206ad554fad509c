"""Opening a remote split whose shards are already in the node's cache: the cost a
trial pays at every start.

Compares, on the same split in the same run:
  - baseline: slotsweep before the cache kept its verification (`rehash_open` below, a
    copy of that code): every open re-hashes every cached shard (sha256 of the split);
  - now: `local_split`, whose `verified.json` lets an unchanged shard cost a stat;
  - for scale, the first open (copy and hash every shard) and one shard changed.

The "remote" is a `file://` URI: a warm open reads only the small manifest from the
storage, so the rest is the local check either way (S3 adds one GET per open to both).

    python benchmarks/remote_cache.py [--shards 8] [--shard-mib 256] [--repeats 3]
    python benchmarks/remote_cache.py --smoke   # 3 shards of 1 MiB; CI runs it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from filelock import FileLock

from slotsweep.data.format import MANIFEST, read_manifest
from slotsweep.data.remote import local_split
from slotsweep.data.writer import ShardWriter
from slotsweep.files import atomic_path, atomic_write, sha256_file

ROW_BYTES = 196 * 768 * 2  # one COCO image's DINO ViT-B/16 tokens, float16


def rehash_open(uri: str, cache: Path) -> Path:
    """`local_split` before this change (as of commit bf018ed), less its error handling: on
    every open it copies the manifest and re-hashes every cached shard."""
    from pyarrow import fs as pafs

    def copy(fs, src: str, dst: Path) -> None:
        with atomic_path(dst) as tmp, fs.open_input_stream(src) as fin, tmp.open("wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)

    filesystem, base = pafs.FileSystem.from_uri(uri)
    local = cache / hashlib.sha256(uri.encode()).hexdigest()[:20]
    local.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        copy(filesystem, f"{base.rstrip('/')}/{MANIFEST}", local / MANIFEST)
        for shard in read_manifest(local)["shards"]:
            target = local / shard["file"]
            if target.is_file() and target.stat().st_size == shard["bytes"] and \
                    sha256_file(target) == shard["sha256"]:
                continue
            raise SystemExit(f"{target}: the cached copy does not match (the benchmark broke)")
        atomic_write(local / "source.json", json.dumps({"uri": uri}))
    return local


def write_split(out: Path, shards: int, shard_mib: float) -> int:
    rows = max(1, int(shard_mib * 2**20 // ROW_BYTES))
    rng = np.random.default_rng(0)
    with ShardWriter(out, rows_per_shard=rows) as writer:
        for k in range(shards):
            feats = rng.standard_normal((rows, 196, 768), dtype=np.float32).astype(np.float16)
            writer.write({"id": np.arange(k * rows, (k + 1) * rows, dtype=np.int64),
                          "features": feats})
    return sum(p.stat().st_size for p in out.glob("shard-*.arrow"))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="3 shards of 1 MiB, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.shards, args.shard_mib, args.repeats = 3, 1, 1
    root = Path(tempfile.mkdtemp(prefix="slotsweep-remote-cache-"))
    try:
        nbytes = write_split(root / "store", args.shards, args.shard_mib)
        uri, cache = (root / "store").as_uri(), root / "cache"
        first = time.perf_counter()
        local = local_split(uri, cache=cache)
        rows = {"first open: copy and hash every shard": time.perf_counter() - first}
        rows["warm open, before: re-hash every shard (baseline)"] = best_of(
            args.repeats, lambda: rehash_open(uri, cache))
        rows["warm open, now: stat + verified.json"] = best_of(
            args.repeats, lambda: local_split(uri, cache=cache))

        def one_changed() -> None:
            os.utime(local / "shard-00000.arrow", ns=(1, 1))  # same bytes, new stat
            local_split(uri, cache=cache)

        rows["warm open, now, one shard's stat changed: it is re-hashed"] = best_of(
            args.repeats, one_changed)

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.shards} shards, "
              f"{nbytes / 2**30:.2f} GiB, warm page cache; best of {args.repeats}"
              + (" — SMOKE RUN: tiny, not a measurement" if args.smoke else "") + "\n")
        baseline = rows["warm open, before: re-hash every shard (baseline)"]
        print("| open | ms | vs baseline |\n|---|---:|---:|")
        for name, seconds in rows.items():
            print(f"| {name} | {seconds * 1e3:,.1f} | {baseline / seconds:,.1f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
