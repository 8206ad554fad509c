"""Shard sets on shared or cloud storage, cached on the node's local disk.

A split may be any pyarrow filesystem URI (`s3://bucket/coco/train`, `gs://...`,
`file:///mnt/shared/...`). On first read its manifest and shards are copied into a
local cache (`$SLOTSWEEP_CACHE`, default `~/.cache/slotsweep/shards`), each shard
verified against the manifest's sha256; a cached shard that no longer matches is
fetched again. Training then memory-maps the local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock

from slotsweep.data.format import MANIFEST, ShardError, read_manifest
from slotsweep.files import atomic_path, atomic_write, sha256_file


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def cache_root() -> Path:
    return Path(os.environ.get("SLOTSWEEP_CACHE", Path.home() / ".cache/slotsweep/shards"))


def _copy(fs, src: str, dst: Path) -> None:
    with atomic_path(dst) as tmp, fs.open_input_stream(src) as fin, tmp.open("wb") as fout:
        while chunk := fin.read(1 << 22):
            fout.write(chunk)


def local_split(uri: str | os.PathLike, *, cache: Path | None = None) -> Path:
    """A local directory holding the split at `uri` (the path itself if it is local)."""
    if not is_remote(uri):
        return Path(uri)
    from pyarrow import fs as pafs

    uri = str(uri)
    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, no credentials, ...
        raise ShardError(f"{uri}: cannot open this storage ({exc})") from None
    local = (cache or cache_root()) / hashlib.sha256(uri.encode()).hexdigest()[:20]
    local.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):  # trials on one node share one copy
        try:
            _copy(filesystem, f"{base.rstrip('/')}/{MANIFEST}", local / MANIFEST)
        except OSError as exc:
            raise ShardError(f"{uri}: no readable {MANIFEST} ({exc})") from None
        manifest = read_manifest(local)
        for shard in manifest["shards"]:
            target = local / shard["file"]
            if target.is_file() and target.stat().st_size == shard["bytes"] and \
                    sha256_file(target) == shard["sha256"]:
                continue  # a good cached copy
            _copy(filesystem, f"{base.rstrip('/')}/{shard['file']}", target)
            if sha256_file(target) != shard["sha256"]:
                target.unlink()
                raise ShardError(f"{uri}/{shard['file']}: checksum differs from the "
                                 "manifest after download; the remote shard is corrupt")
        atomic_write(local / "source.json", json.dumps({"uri": uri}))
    return local
