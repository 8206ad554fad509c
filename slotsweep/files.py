"""Writing files so that a crash, a full disk or a concurrent reader never sees half a file.

Every writer of state in slotsweep (manifests, shards, checkpoints, the report, cached
remote shards, Tune's uploads) goes through `atomic_path`: the bytes go to a temporary
file beside the target, are flushed to the disk (fsync), and the temporary is renamed
over the target; POSIX rename within a directory is atomic, so a reader sees the old file
or the new one. The temporary's name is unique per process and call, so two writers of
the same target (two trials on a node staging one shard) never write into one file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TMP_SUFFIX = ".tmp"  # every temporary ends so: `stale_temporaries` finds a crash's leftovers


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; some filesystems cannot (then it is a no-op)."""
    with suppress(OSError):
        _fsync(directory)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to by any means (numpy, Arrow, torch); on
    a clean exit it is synced and renamed onto `path`, on an error removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        if tmp.is_dir():
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync(file)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str: UTF-8) to `path` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Temporaries that an interrupted write left in `directory` (`atomic_path`'s, and the
    `NAME.tmp` of slotsweep before 0.2)."""
    return sorted(p for p in Path(directory).glob(f"*{TMP_SUFFIX}") if p.is_file())


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()
