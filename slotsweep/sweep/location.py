"""Where a sweep keeps its state: a local (or NFS) folder, or a prefix in object storage
(`s3://bucket/prefix`, `gs://...`), behind the few operations the driver, the callback
and the trials need.

Tune reads and writes its own state through pyarrow's filesystems, given the same URI.
Our files (the ledger, the extension plans) follow one rule on both: a reader sees a
whole old file or a whole new one. Locally that is `files.atomic_write` (temporary, fsync,
rename); object storage has no rename, but a PUT is atomic, so there the object is
written in one PUT. An S3-compatible endpoint other than AWS's is named by
`AWS_ENDPOINT_URL`, which pyarrow, boto3 and Ray all read.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slotsweep.files import atomic_write


def is_remote(where: str | os.PathLike) -> bool:
    return "://" in str(where) and not str(where).startswith("file://")


@functools.lru_cache(maxsize=16)
def _filesystem(root: str) -> Any:
    """pyarrow's filesystem of `scheme://bucket` (one per bucket: S3's is costly to make)."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(root)[0]


@dataclass(frozen=True)
class Location:
    """A folder of a sweep's storage: an absolute local path, or `scheme://bucket/key`."""

    uri: str

    @classmethod
    def of(cls, where: str | os.PathLike) -> Location:
        text = str(where)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if not is_remote(text):
            return cls(str(Path(text).resolve()))
        if "?" in text:
            raise ValueError(f"{text}: a storage URI takes no query; name an S3-compatible "
                             "endpoint with AWS_ENDPOINT_URL")
        return cls(text.rstrip("/"))

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.uri.rstrip("/").rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> Location:
        return Location(f"{self.uri.rstrip('/')}/{name}")

    def __str__(self) -> str:
        return self.uri

    @property
    def path(self) -> Path:
        """The local folder (only for a local location)."""
        if self.remote:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def _fs(self) -> tuple[Any, str]:
        scheme, rest = self.uri.split("://", 1)
        bucket, _, key = rest.partition("/")
        return _filesystem(f"{scheme}://{bucket}"), f"{bucket}/{key}".rstrip("/")

    # -- reading ---------------------------------------------------------------------------

    def exists(self) -> bool:
        if not self.remote:
            return self.path.exists()
        from pyarrow import fs as pafs

        fs, key = self._fs()
        return fs.get_file_info(key).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError if there is none."""
        if not self.remote:
            return self.path.read_bytes()
        fs, key = self._fs()
        if not self.exists():
            raise FileNotFoundError(self.uri)
        with fs.open_input_stream(key) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def children(self, pattern: str = "*", *, dirs: bool = True) -> list[Location]:
        """The folders (or, `dirs=False`, the files) directly inside, whose names match
        `pattern`, sorted by name; none if this folder does not exist."""
        if not self.remote:
            if not self.path.is_dir():
                return []
            return [Location(str(p)) for p in sorted(self.path.glob(pattern))
                    if (p.is_dir() if dirs else p.is_file())]
        from pyarrow import fs as pafs

        fs, key = self._fs()
        infos = fs.get_file_info(pafs.FileSelector(key, allow_not_found=True))
        wanted = pafs.FileType.Directory if dirs else pafs.FileType.File
        names = sorted(i.base_name for i in infos if i.type == wanted
                       and fnmatch.fnmatch(i.base_name, pattern))
        return [self / n for n in names]

    # -- writing ---------------------------------------------------------------------------

    def mkdir(self) -> None:
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
        # object storage has no folders: a prefix exists once an object is under it

    def write(self, data: bytes | str) -> None:
        """Write the whole file atomically (locally: durably, too)."""
        if not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)
            return
        fs, key = self._fs()
        with fs.open_output_stream(key) as f:  # one PUT: the object appears whole
            f.write(data.encode("utf-8") if isinstance(data, str) else data)

    def remove(self) -> None:
        """Delete this file (nothing if it is not there)."""
        if not self.remote:
            self.path.unlink(missing_ok=True)
            return
        fs, key = self._fs()
        if self.exists():
            fs.delete_file(key)

    def remove_tree(self) -> None:
        if not self.remote:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        fs, key = self._fs()
        if self.exists():
            fs.delete_dir(key)
