"""Shard sets on shared or cloud storage, cached on the node's local disk.

A split may be any pyarrow filesystem URI (`s3://bucket/coco/train`, `gs://...`,
`file:///mnt/shared/...`; pyarrow reads the S3 endpoint and credentials from the usual
AWS variables, `AWS_ENDPOINT_URL` included). On first read its manifest and shards are
copied into a local cache (`$SLOTSWEEP_CACHE`, default `~/.cache/slotsweep/shards`),
each shard hashed while it streams in and kept only if its sha256 matches the manifest.
A file lock per split makes the trials that start together on one node share one
download. Training then memory-maps the local copy.

The cache remembers what it verified: `verified.json` beside the copies holds, per
shard, the sha256 it matched and the file's (size, mtime_ns, ctime_ns, inode) at that
moment. An unchanged copy then costs a stat on the next open, not a re-hash of the
whole split (minutes for COCO's features); a copy whose stat changed is hashed again,
and removed and fetched again if it no longer matches. Bytes that rot without a write
are invisible to a stat: `slotsweep prepare verify DIR` hashes every shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from slotsweep.data.format import MANIFEST, ShardError, read_manifest
from slotsweep.files import atomic_path, atomic_write, sha256_file

log = logging.getLogger(__name__)

VERIFIED = "verified.json"  # what the cache checked, per shard (module docstring)
CHUNK = 1 << 22  # bytes per read of a remote file: one ranged GET on S3

T = TypeVar("T")


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def cache_root() -> Path:
    return Path(os.environ.get("SLOTSWEEP_CACHE", Path.home() / ".cache/slotsweep/shards"))


_DENIED = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "InvalidToken", "ExpiredToken")
_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
                "timed out")


class StorageUnreachable(ShardError):
    """The storage did not answer (network, endpoint down): an earlier whole copy may serve."""


def _kind(exc: Exception) -> str:
    """What a storage error means to the user: denied, unreachable, missing or other."""
    text = str(exc)
    if isinstance(exc, PermissionError) or any(word in text for word in _DENIED):
        return "denied"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    return "unreachable" if any(word in text for word in _UNREACHABLE) else "other"


def _message(where: str, exc: Exception) -> str:
    """`where`: what failed, and what to do about it."""
    kind = _kind(exc)
    if kind == "denied":
        return (f"{where}: access denied ({_brief(exc)}); check the credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or the node's "
                "role) and that they may read this bucket")
    if kind == "unreachable":
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        at = f" at AWS_ENDPOINT_URL={endpoint}" if endpoint else ""
        return (f"{where}: cannot reach the storage{at} ({_brief(exc)}); check the "
                "network and the endpoint, then run again: shards already cached are kept "
                "and only the rest is fetched")
    if kind == "missing":
        return (f"{where}: no such file; check the URI, or upload the whole split "
                f"({MANIFEST} and every shard it lists)")
    return f"{where}: cannot read it ({_brief(exc)})"


class _Remote:
    """One split on a pyarrow filesystem: where it is, and what its errors mean."""

    def __init__(self, uri: str) -> None:
        from pyarrow import fs as pafs

        self.uri = uri.partition("?")[0].rstrip("/")  # query options may hold secrets
        try:
            self.filesystem, base = pafs.FileSystem.from_uri(uri)
        except OSError as exc:
            raise ShardError(_message(self.uri, exc)) from None
        except Exception as exc:  # unknown scheme, malformed URI, ...
            detail = _brief(exc).replace(uri.partition("?")[2] or uri, "...")
            raise ShardError(f"{self.uri}: cannot open this storage ({detail}); check the "
                             "URI's scheme, spelling and options") from None
        self.base = base.rstrip("/")

    def call(self, name: str, action: Callable[[], T]) -> T:
        """`action()`, its storage errors turned into a ShardError naming `name`'s URI."""
        try:
            return action()
        except OSError as exc:
            where = f"{self.uri}/{name}"
            if _kind(exc) == "missing" and self._bucket_missing():
                raise ShardError(f"{where}: bucket {self.base.split('/')[0]!r} does not "
                                 "exist (or these credentials cannot see it); check the "
                                 "URI") from None
            error = StorageUnreachable if _kind(exc) == "unreachable" else ShardError
            raise error(_message(where, exc)) from None

    def _bucket_missing(self) -> bool:
        if self.filesystem.type_name not in ("s3", "gcs"):
            return False
        from pyarrow import fs as pafs

        try:
            info = self.filesystem.get_file_info(self.base.split("/")[0])
        except OSError:
            return False
        return info.type == pafs.FileType.NotFound

    def read(self, name: str) -> bytes:
        """The bytes of (small) file `name` of the split."""
        with self.call(name, lambda: self.filesystem.open_input_stream(f"{self.base}/{name}")
                       ) as fin:
            return self.call(name, fin.read)

    def fetch(self, name: str, dst: Path, sha256: str) -> None:
        """Copy file `name` of the split to `dst`, atomically, if its bytes hash to
        `sha256` (else nothing is left at `dst` and ShardError)."""
        src = f"{self.base}/{name}"
        digest = hashlib.sha256()
        with atomic_path(dst) as tmp:
            fin = self.call(name, lambda: self.filesystem.open_input_stream(src))
            with fin, tmp.open("wb") as fout:
                while chunk := self.call(name, lambda: fin.read(CHUNK)):
                    digest.update(chunk)
                    fout.write(chunk)
            if digest.hexdigest() != sha256:
                raise ShardError(
                    f"{self.uri}/{name}: its bytes differ from the manifest's sha256 (the "
                    "stored shard is corrupt or from another prepare); nothing was cached: "
                    "upload the split again or re-run prepare")


def _brief(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _records(local: Path) -> dict[str, Any]:
    try:
        records = json.loads((local / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: every copy is hashed once more
    return records if isinstance(records, dict) else {}


def _record(local: Path, records: dict[str, Any], entry: dict[str, Any]) -> None:
    records[entry["file"]] = {"sha256": entry["sha256"], "stat": _stat(local / entry["file"])}
    atomic_write(local / VERIFIED, json.dumps(records, indent=0))


def _unchanged(local: Path, records: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether the copy of `entry` is as it was when checked against this sha256."""
    target = local / entry["file"]
    return target.is_file() and records.get(entry["file"]) == {
        "sha256": entry["sha256"], "stat": _stat(target)}


def _good_copy(local: Path, records: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether `entry`'s cached copy holds the manifest's bytes: a stat when it is
    unchanged since verified, else a hash (recorded when it matches; a copy that does
    not match is removed, so the cache never holds a corrupt shard)."""
    if _unchanged(local, records, entry):
        return True
    target = local / entry["file"]
    if not target.is_file():
        return False
    if target.stat().st_size == entry["bytes"] and sha256_file(target) == entry["sha256"]:
        _record(local, records, entry)
        return True
    target.unlink()
    records.pop(entry["file"], None)
    return False


def _write_if_changed(path: Path, data: bytes) -> None:
    """Leave an unchanged file alone: a warm open writes (and syncs) nothing."""
    if not path.is_file() or path.read_bytes() != data:
        atomic_write(path, data)


def _fetch_manifest(remote: _Remote, local: Path) -> dict[str, Any]:
    _write_if_changed(local / MANIFEST, remote.read(MANIFEST))
    try:
        return read_manifest(local)
    except ShardError as exc:
        (local / MANIFEST).unlink(missing_ok=True)
        raise ShardError(f"{remote.uri}/{MANIFEST}: {exc}") from None


def _cached_whole(local: Path) -> bool:
    """Whether `local` holds a whole verified copy of the split (from an earlier open)."""
    try:
        manifest = read_manifest(local)
    except ShardError:
        return False
    records = _records(local)
    return all(_unchanged(local, records, entry) for entry in manifest["shards"])


def _sync(remote: _Remote, local: Path) -> None:
    """Bring `local` up to date with the split: fetch what is missing or changed."""
    try:
        manifest = _fetch_manifest(remote, local)
    except StorageUnreachable as exc:
        if not _cached_whole(local):
            raise
        log.warning("%s; using the whole copy verified earlier in %s", exc, local)
        return
    records = _records(local)
    for entry in manifest["shards"]:
        if not _good_copy(local, records, entry):
            remote.fetch(entry["file"], local / entry["file"], entry["sha256"])
            _record(local, records, entry)
    _write_if_changed(local / "source.json", json.dumps({"uri": remote.uri}).encode())


def local_split(uri: str | os.PathLike, *, cache: Path | None = None) -> Path:
    """A local directory holding the split at `uri` (the path itself if it is local).

    Remote splits are copied into `cache` (default `cache_root()`), one directory per
    URI; every error of the storage is a ShardError naming the file's URI.
    """
    if not is_remote(uri):
        return Path(uri)
    remote = _Remote(str(uri))
    local = (cache or cache_root()) / hashlib.sha256(str(uri).encode()).hexdigest()[:20]
    local.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):  # trials on one node share one copy
        _sync(remote, local)
    return local
