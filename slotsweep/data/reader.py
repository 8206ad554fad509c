"""Reading a split: memory-mapped shards as zero-copy numpy views (`ShardDataset`), and
the checks that a split is whole (`check_split` before a run, `verify` in full)."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from slotsweep.data.format import (
    MANIFEST,
    ShardError,
    arrow_schema,
    read_manifest,
)
from slotsweep.files import sha256_file


def _check_schema(found: pa.Schema, columns: Mapping[str, Mapping[str, Any]], where: str) -> None:
    expected = arrow_schema(columns)
    if found.names != expected.names:
        raise ShardError(
            f"{where}: has columns {found.names}, the manifest lists {expected.names}; "
            "the shard belongs to another shard set: re-run prepare for this split"
        )
    for want, have in zip(expected, found, strict=True):
        if not have.equals(want, check_metadata=True):
            raise ShardError(
                f"{where}: column {want.name!r} is {have.type} with metadata {have.metadata}, "
                f"the manifest says {want.type} with shape {columns[want.name]['shape']}; "
                "re-run prepare for this split"
            )


def _open_shard(
    directory: Path, entry: Mapping[str, Any], columns: Mapping[str, Mapping[str, Any]]
) -> pa.RecordBatch:
    """Memory-map one shard and check its schema and row count against the manifest."""
    path = directory / entry["file"]
    where = f"{directory}: shard {entry['file']}"
    if not path.is_file():
        raise ShardError(
            f"{where} is missing; copy the whole split directory again or re-run prepare"
        )
    try:
        # The batch's buffers keep the mapping alive after the file (and its descriptor)
        # is closed, so a split with thousands of shards does not exhaust file handles.
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_file(source)
            _check_schema(reader.schema, columns, where)
            if reader.num_record_batches != 1:
                raise ShardError(
                    f"{where}: has {reader.num_record_batches} record batches, shards written "
                    "by ShardWriter have exactly one; re-run prepare for this split"
                )
            batch = reader.get_batch(0)
            batch.validate()
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(
            f"{where} is truncated or corrupt ({err}); check the whole split with "
            f"`slotsweep prepare verify {directory}` and re-run prepare for this split"
        ) from err
    if batch.num_rows != entry["num_rows"]:
        raise ShardError(
            f"{where}: holds {batch.num_rows} rows, the manifest says {entry['num_rows']}; "
            "re-run prepare for this split"
        )
    return batch


def _column_view(array: pa.Array, shape: Sequence[int]) -> np.ndarray:
    """Zero-copy, read-only numpy view of one column: (num_rows, *shape)."""
    values = array.flatten() if shape else array
    view = values.to_numpy(zero_copy_only=True).reshape(len(array), *shape)
    view.flags.writeable = False
    return view


def _verify_shard(
    directory: Path, entry: Mapping[str, Any], columns: Mapping[str, Mapping[str, Any]]
) -> None:
    path = directory / entry["file"]
    where = f"{directory}: shard {entry['file']}"
    if not path.is_file():
        raise ShardError(f"{where} is missing; copy the split again or re-run prepare")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(
            f"{where} has {size} bytes, the manifest says {entry['bytes']} (truncated or "
            "replaced); copy the split again or re-run prepare"
        )
    if sha256_file(path) != entry["sha256"]:
        raise ShardError(
            f"{where} fails its sha256 check (corrupt); copy the split again or re-run prepare"
        )
    _open_shard(directory, entry, columns)


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check every shard's presence, size, sha256, schema and row count; return the manifest."""
    manifest = read_manifest(path)
    directory = Path(path)
    directory = directory.parent if directory.name == MANIFEST else directory
    for entry in manifest["shards"]:
        _verify_shard(directory, entry, manifest["columns"])
    return manifest


CHECKSUM_LIMIT = 2 << 30  # splits up to this size get their sha256 checked up front


def check_split(path: str | os.PathLike, *, checksum_limit: int = CHECKSUM_LIMIT) -> dict:
    """Before anything runs on a split: every shard present, of the manifest's size,
    readable with the manifest's schema and row count; and, for splits no larger than
    `checksum_limit` bytes, matching its sha256 (larger ones: `verify` it once)."""
    manifest = read_manifest(path)
    directory = Path(path)
    directory = directory.parent if directory.name == MANIFEST else directory
    checksums = sum(e["bytes"] for e in manifest["shards"]) <= checksum_limit
    for entry in manifest["shards"]:
        if checksums:
            _verify_shard(directory, entry, manifest["columns"])
            continue
        file = directory / entry["file"]
        if file.is_file() and file.stat().st_size != entry["bytes"]:
            raise ShardError(
                f"{directory}: shard {entry['file']} has {file.stat().st_size} bytes, the "
                f"manifest says {entry['bytes']} (truncated or replaced); copy the split "
                "again or re-run prepare"
            )
        _open_shard(directory, entry, manifest["columns"])
    return manifest


class ShardDataset(Dataset):
    """Map-style dataset over the shards of one split; items are read-only numpy views.

    Shards are memory-mapped lazily, in the process that reads them, so the dataset
    pickles cheaply to DataLoader workers. ``shards`` picks a subset of shard indices
    (e.g. to split a split across trials); ``columns`` restricts what is read;
    ``expect_shapes`` checks row shapes up front (``None`` in a shape matches any size).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        columns: Iterable[str] | None = None,
        shards: Iterable[int] | None = None,
        expect_shapes: Mapping[str, Sequence[int | None]] | None = None,
        verify_checksums: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        available = self.manifest["columns"]
        self.columns = list(available) if columns is None else list(columns)
        for name in [*self.columns, *(expect_shapes or {})]:
            if name not in available:
                raise ShardError(f"{self.path}: has no column {name!r}; it has {list(available)}")
        for name, expected in (expect_shapes or {}).items():
            found = available[name]["shape"]
            if len(found) != len(expected) or any(
                e is not None and e != f for e, f in zip(expected, found, strict=False)
            ):
                raise ShardError(
                    f"{self.path}: column {name!r} has row shape {tuple(found)}, expected "
                    f"{tuple(expected)}; the shards were prepared with another encoder or "
                    f"size (attributes: {self.manifest['attributes']}): re-run prepare or "
                    "match the model to the data"
                )

        num_shards = len(self.manifest["shards"])
        self.shards = list(range(num_shards)) if shards is None else [int(s) for s in shards]
        if len(set(self.shards)) != len(self.shards) or not all(
            0 <= s < num_shards for s in self.shards
        ):
            raise ShardError(
                f"{self.path}: shards={self.shards} must be distinct indices in [0, {num_shards})"
            )
        self._entries = [self.manifest["shards"][s] for s in self.shards]
        # _offsets[k] is the first dataset row of the k-th selected shard: (num_shards + 1,)
        self._offsets = np.cumsum([0] + [e["num_rows"] for e in self._entries])
        if verify_checksums:
            for entry in self._entries:
                _verify_shard(self.path, entry, available)
        self._views: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = {}  # memory maps reopen in the worker process
        return state

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows in {self.path}")
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        row = i - int(self._offsets[k])
        return {name: view[row, ...] for name, view in self._shard_views(k).items()}

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Gather many rows at once into fresh arrays: one fancy-index per shard touched."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} rows in {self.path}")
        specs = self.manifest["columns"]
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1  # (len(idx),)
        # Open (and check against the manifest) every shard touched before allocating the
        # output, so a manifest's row shape is never trusted alone.
        views = {int(k): self._shard_views(int(k)) for k in np.unique(shard_of)}
        out = {
            name: np.empty((idx.size, *specs[name]["shape"]), dtype=specs[name]["dtype"])
            for name in self.columns
        }
        for k, shard in views.items():
            positions = np.flatnonzero(shard_of == k)
            rows = idx[positions] - self._offsets[k]
            for name, view in shard.items():
                out[name][positions] = view[rows]
        return out

    def _shard_views(self, k: int) -> dict[str, np.ndarray]:
        """Numpy views of the selected columns of the k-th selected shard (opened once)."""
        if k not in self._views:
            specs = self.manifest["columns"]
            batch = _open_shard(self.path, self._entries[k], specs)
            try:
                self._views[k] = {
                    name: _column_view(batch.column(name), specs[name]["shape"])
                    for name in self.columns
                }
            except pa.ArrowInvalid as err:
                raise ShardError(
                    f"{self.path}: shard {self._entries[k]['file']} cannot be read without a "
                    f"copy ({err}); run verify and re-run prepare for this split"
                ) from err
        return self._views[k]


def collate(batch: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """DataLoader ``collate_fn``: stack each column of the items into one tensor."""
    return {name: torch.from_numpy(np.stack([item[name] for item in batch])) for name in batch[0]}
