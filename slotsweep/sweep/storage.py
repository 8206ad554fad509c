"""The sweep's storage: checks before anything runs, and the signs of a full, read-only
or over-quota storage in the errors that Python, Ray and SQLite raise mid-sweep.

A storage fault is never a trial's failure: the sweep stops, keeps what it has, and the
next run resumes (tests/e2e/test_faults.py).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from slotsweep.files import atomic_path
from slotsweep.sweep.location import Location

SETTLED_NS = 1_000_000_000  # see atomic_local_uploads


def atomic_local_uploads() -> None:
    """Make Tune's experiment-state uploads to a local/NFS storage path atomic per file.

    Tune writes its snapshot in a staging directory and copies it to the storage path in
    a background thread, overwriting files in place. A driver killed mid-copy left an
    empty `experiment_state-*.json`, and the next run silently restarted the experiment
    from scratch (seen in our SIGKILL tests). Here each file is copied to a temporary
    name and renamed over the old one, so a snapshot file is always whole. Remote
    filesystems (s3://, gs://) keep Ray's own upload: their object writes are atomic.

    Tune uploads the whole staging directory at every snapshot (every second), most of
    it unchanged (ended trials' logs, params): a file whose size, times and inode are
    those it had when this process last copied it, to a target still there, is skipped.
    The kernel stamps times at a clock tick's grain, so two writes of one size within a
    tick look alike: a file written less than `SETTLED_NS` before its copy is copied again
    at the next upload whatever its signature says. What is left to copy each second is
    the experiment state and the running trials' logs.
    """
    from pyarrow import fs as pafs
    from ray.train._internal import storage

    original = storage._upload_to_fs_path
    if getattr(original, "_slotsweep_atomic", False):
        return

    copied: dict[Path, tuple[int, ...]] = {}  # target -> its source's signature then

    def upload(local_path, fs, fs_path, exclude=None):
        if not isinstance(fs, pafs.LocalFileSystem):
            return original(local_path, fs, fs_path, exclude)
        src, dst = Path(local_path), Path(fs_path)
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(src).as_posix() if src.is_dir() else file.name
            if exclude and any(fnmatch.fnmatch(rel, pat) for pat in exclude):
                continue
            target = dst if src.is_file() else dst / rel
            stat = file.stat()  # before the copy: a change during it is copied next time
            signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
            if copied.get(target) == signature and target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(file, tmp)
            if time.time_ns() - stat.st_mtime_ns > SETTLED_NS:  # content writes set mtime
                copied[target] = signature
            else:
                copied.pop(target, None)

    # A marker on the patched function, so a second call does not wrap it again.
    upload._slotsweep_atomic = True  # type: ignore[attr-defined]
    storage._upload_to_fs_path = upload


# What a full, read-only or over-quota storage looks like from Python, Ray and sqlite.
# SQLite says "unable to open database file" (CANTOPEN) when it cannot create its journal
# beside a database it already has open: mid-sweep, that is a directory gone read-only.
STORAGE_SIGNS = {"No space left on device": "full", "database or disk is full": "full",
                 "Disk quota exceeded": "over quota", "Read-only file system": "read-only",
                 "attempt to write a readonly database": "read-only",
                 "unable to open database file": "read-only",
                 # object storage, as pyarrow's S3 client words it
                 "Couldn't connect to server": "unreachable",
                 "Could not connect to": "unreachable",
                 "ACCESS_DENIED": "refusing access", "AccessDenied": "refusing access",
                 "INVALID_ACCESS_KEY_ID": "refusing the credentials",
                 "SIGNATURE_DOES_NOT_MATCH": "refusing the credentials",
                 "NO_SUCH_BUCKET": "missing its bucket", "NoSuchBucket": "missing its bucket"}


MIN_FREE_MB = int(os.environ.get("SLOTSWEEP_MIN_FREE_MB", "50"))


class StorageFault(RuntimeError):
    """The sweep's storage cannot be written: the sweep stops, what is there is kept."""


def cause_chain(error: BaseException | None, limit: int = 10) -> Iterator[BaseException]:
    """`error`, then what caused it (`__cause__`, else `__context__`), at most `limit`:
    Tune and Ray wrap the exceptions raised in callbacks and trials."""
    for _ in range(limit):
        if error is None:
            return
        yield error
        error = error.__cause__ or error.__context__


def storage_fault(error: BaseException | str | None) -> str | None:
    """The storage sign in an error (or its cause chain, or a trial's error text)."""

    def sign_in(text: str) -> str | None:
        return next((f"is {what}: {s}" for s, what in STORAGE_SIGNS.items() if s in text),
                    None)

    if isinstance(error, str):
        return sign_in(error)
    for cause in cause_chain(error):
        if sign := sign_in(f"{type(cause).__name__}: {cause}"):
            return sign
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EROFS,
                                                          errno.EDQUOT):
            return f"is unwritable: {os.strerror(cause.errno)}"
    return None


def _probe_write(directory: Path) -> None:
    """Write, sync and remove one byte in `directory`; raises the OSError if it fails."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".slotsweep-probe-") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())


def unwritable(directory: Path) -> str | None:
    """Why `directory` cannot be written now ("is read-only: ...", "is full: ..."), or
    None. For errors whose text does not say: SQLite reports a storage remounted
    read-only, or one that filled up, as "disk I/O error"."""
    try:
        _probe_write(directory)
    except OSError as exc:
        return storage_fault(exc) or f"cannot be written: {exc.strerror}"
    return None


def check_storage(where: Location | Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail before anything runs when the sweep's storage cannot be written: a local
    folder (or its nearest existing parent) unwritable or with less than `min_free_mb`
    MB free; object storage that cannot be reached, has no such bucket or refuses the
    credentials. Leaves nothing behind."""
    if isinstance(where, Location):
        if where.remote:
            check_remote_storage(where)
            return
        where = where.path
    probe_dir = where
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        _probe_write(probe_dir)
    except OSError as exc:
        raise StorageFault(f"{probe_dir}: the sweep storage cannot be written "
                           f"({exc.strerror}); make it writable or pass --storage") from None
    free = shutil.disk_usage(probe_dir).free / 2**20
    if free < min_free_mb:
        raise StorageFault(f"{probe_dir}: the sweep storage has {free:.0f} MB free, less "
                           f"than {min_free_mb} MB (SLOTSWEEP_MIN_FREE_MB); free some space "
                           "or pass --storage")


def check_remote_storage(where: Location) -> None:
    """Write, read back and delete one small object under `where`."""
    probe = where / f".slotsweep-probe-{os.getpid()}"
    try:
        probe.write(b"x")
        if probe.read_bytes() != b"x":
            raise OSError("the object read back differs from the one written")
        probe.remove()
    except (OSError, ValueError) as exc:
        sign = storage_fault(exc) or "cannot be written"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageFault(
            f"{where}: the sweep storage {sign.split(':')[0]} ({detail}); check that the "
            "bucket exists, the credentials (AWS_PROFILE, the instance role) may write it, "
            "and AWS_ENDPOINT_URL for an S3-compatible endpoint") from None
