"""Write the built-in synthetic colored multi-dSprites as Arrow shards, once.

Train and validation come from one seeded stream with disjoint index ranges (train
rows 0..N-1, validation rows N..N+M-1), like the paper's "first 60,000, next 320".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from slotsweep.config import DataConfig
from slotsweep.data import dsprites
from slotsweep.data.shards import MANIFEST, ShardError, ShardWriter, read_manifest

_CHUNK = 1024


def _generator() -> str:
    return f"slotsweep.data.dsprites v{dsprites.GENERATOR_VERSION}"


def write_dsprites(
    out: str | Path,
    *,
    num: int,
    seed: int,
    start: int = 0,
    resolution: int = 64,
    rows_per_shard: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Generate scenes start..start+num-1 into shards at `out`; resumes an interrupted run."""
    out = Path(out)
    attributes = {
        "dataset": "synthetic-colored-multi-dsprites",
        "generator": _generator(),
        "seed": seed, "start": start, "resolution": resolution,
        "object_fields": list(dsprites.OBJECT_FIELDS),
    }
    with ShardWriter(out, rows_per_shard=rows_per_shard, attributes=attributes,
                     resume=True) as writer:
        done = writer.rows_done
        if progress and done:
            progress(done)
        for lo in range(done, num, _CHUNK):
            count = min(_CHUNK, num - lo)
            writer.write(dsprites.generate(count, seed=seed, start=start + lo,
                                           resolution=resolution))
            if progress:
                progress(count)
    return out


def _matches(path: Path, *, num: int, seed: int, start: int, resolution: int) -> bool:
    """True when a finished split holds exactly this data; False when absent."""
    if not (path / MANIFEST).is_file():
        return False
    manifest = read_manifest(path)
    attrs = manifest.get("attributes", {})
    want = {"seed": seed, "start": start, "resolution": resolution,
            "generator": _generator()}
    found = {k: attrs.get(k) for k in want}
    if found != want or manifest["num_rows"] != num:
        raise ShardError(
            f"{path}: holds synthetic data with {found} and {manifest['num_rows']} rows, but "
            f"the config asks for {want} and {num} rows; point data.train/data.val "
            "elsewhere or delete the directory"
        )
    return True


def ensure_synthetic(data: DataConfig, *, resolution: int, log=print) -> None:
    """Make sure `data.train` and `data.val` hold the configured synthetic splits.

    Safe when several trials start at once on one node: a file lock serialises them,
    and whoever comes second finds the data ready.
    """
    splits = [
        (Path(data.train), data.synthetic_train, 0),
        (Path(data.val), data.synthetic_val, data.synthetic_train),
    ]
    for path, num, start in splits:
        kw = {"num": num, "seed": data.synthetic_seed, "start": start, "resolution": resolution}
        if _matches(path, **kw):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(os.fspath(path) + ".lock"):
            if _matches(path, **kw):
                continue
            if log:
                log(f"generating {num} synthetic multi-dSprites scenes ({resolution}px) "
                    f"into {path}")
            write_dsprites(path, **kw)
