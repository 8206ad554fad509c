"""Arrow IPC shards: the on-disk dataset format that `prepare` writes and training reads.

A split is a directory holding ``manifest.json`` and ``shard-00000.arrow``, ... in the
Arrow IPC *file* format, uncompressed, one record batch per shard. Every column holds one
fixed-shape tensor per row, stored as a FixedSizeList of its primitive dtype (a scalar
column such as ``id`` is stored as the primitive itself), so a memory-mapped read hands
out numpy views without copying. See DESIGN.md, "Arrow shards".

The manifest (JSON, no pickle anywhere)::

    {"schema_version": 1, "num_rows": 3000,
     "columns": {"id": {"dtype": "int64", "shape": []},
                 "features": {"dtype": "float16", "shape": [196, 768]}, ...},
     "shards": [{"file": "shard-00000.arrow", "num_rows": 1024,
                 "sha256": "...", "bytes": 123456}, ...],
     "attributes": {"encoder": "vit_base_patch16_224.dino", ...}}
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch.utils.data import Dataset

from slotsweep.files import atomic_path, atomic_write, sha256_file, stale_temporaries

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
# Fixed-width numeric types only: Arrow packs booleans into bits, which numpy cannot
# view without a copy (store masks as uint8).
_DTYPES = frozenset(
    ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "float32", "float64"]
)


class ShardError(ValueError):
    """A shard set is missing, corrupt, or does not match what the caller expects."""


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside a split directory."""
    return f"shard-{index:05d}.arrow"


# --------------------------------------------------------------------------- helpers


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _schema(columns: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """The Arrow schema of a shard; each field's metadata records its row shape."""
    fields = []
    for name, spec in columns.items():
        shape = list(spec["shape"])
        arrow_type = pa.from_numpy_dtype(np.dtype(spec["dtype"]))
        if shape:
            arrow_type = pa.list_(arrow_type, int(np.prod(shape)))
        metadata = {"shape": json.dumps(shape)}
        fields.append(pa.field(name, arrow_type, nullable=False, metadata=metadata))
    return pa.schema(fields)


def _check_schema(found: pa.Schema, columns: Mapping[str, Mapping[str, Any]], where: str) -> None:
    expected = _schema(columns)
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
            f"{where} is truncated or corrupt ({err}); run "
            "slotsweep.data.shards.verify on the directory and re-run prepare for this split"
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


# --------------------------------------------------------------------------- writing


class ShardWriter:
    """Append rows to a split directory, one shard file per ``rows_per_shard`` rows.

    The first batch fixes the column names, dtypes and row shapes. Every shard is written
    to a temp name and renamed into place, then recorded in ``progress.json``; ``close``
    writes the last partial shard and ``manifest.json``. With ``resume=True`` the shards
    recorded in ``progress.json`` are kept and ``rows_done`` says how many leading rows
    the producer must skip.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        rows_per_shard: int = 1024,
        attributes: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        if rows_per_shard < 1:
            raise ShardError(f"{out_dir}: rows_per_shard must be >= 1, got {rows_per_shard}")
        self.out_dir = Path(out_dir)
        self.rows_per_shard = rows_per_shard
        try:  # normalise to what the manifest will hold (tuples -> lists) and fail early
            self.attributes: dict[str, Any] = json.loads(json.dumps(dict(attributes or {})))
        except (TypeError, ValueError) as err:
            raise ShardError(f"{out_dir}: attributes must be JSON-serialisable: {err}") from err
        self.columns: dict[str, dict[str, Any]] | None = None
        self.completed_shards: list[dict[str, Any]] = []
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._rows_written = 0
        self._closed = False

        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in stale_temporaries(self.out_dir):  # left behind by a crash mid-write
            stale.unlink()
        if resume:
            self._resume()
        else:
            self._require_empty()
        self._rows_written = self.rows_done

    @property
    def rows_done(self) -> int:
        """Rows safely on disk in completed shards: a resumed producer skips this many."""
        return sum(entry["num_rows"] for entry in self.completed_shards)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep completed shards for resume; never publish a manifest
            self._closed = True
            self._pending = []

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append rows; axis 0 of every array is the row axis."""
        if self._closed:
            raise ShardError(f"{self.out_dir}: write() after close()")
        arrays = {name: np.asarray(value) for name, value in batch.items()}
        where = f"{self.out_dir}: batch at row {self._rows_written}"
        lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1 or None in lengths.values():
            raise ShardError(
                f"{where}: every column needs the same number of rows on axis 0, got {lengths}"
            )
        if self.columns is None:
            self.columns = self._infer_columns(arrays, where)
        self._check_batch(arrays, where)
        num_rows = next(iter(lengths.values()))
        assert num_rows is not None  # every column has a row axis: checked above
        if num_rows == 0:
            return
        # Copy: the producer may reuse its buffers for the next batch.
        self._pending.append({n: np.array(a, order="C", copy=True) for n, a in arrays.items()})
        self._pending_rows += num_rows
        self._rows_written += num_rows
        while self._pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> None:
        """Write the last partial shard and the manifest; remove ``progress.json``."""
        if self._closed:
            return
        if self.columns is None:
            raise ShardError(f"{self.out_dir}: no batch was written, so there is no schema")
        if self._pending_rows:
            self._flush(self._pending_rows)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "num_rows": self.rows_done,
            "columns": self.columns,
            "shards": self.completed_shards,
            "attributes": self.attributes,
        }
        atomic_write(self.out_dir / MANIFEST, _json_bytes(manifest))
        (self.out_dir / PROGRESS).unlink(missing_ok=True)
        self._closed = True

    # ---- internals

    @staticmethod
    def _infer_columns(arrays: Mapping[str, np.ndarray], where: str) -> dict[str, dict]:
        columns = {}
        for name, a in arrays.items():
            if a.dtype.name not in _DTYPES or not a.dtype.isnative:
                raise ShardError(
                    f"{where}: column {name!r} has dtype {a.dtype.str}; use one of "
                    f"{sorted(_DTYPES)} in native byte order (booleans as uint8)"
                )
            columns[name] = {"dtype": a.dtype.name, "shape": list(a.shape[1:])}
        if columns.get("id") != {"dtype": "int64", "shape": []}:
            raise ShardError(
                f"{where}: column 'id' is required as int64 with one scalar per row, "
                f"got {columns.get('id')}"
            )
        return columns

    def _check_batch(self, arrays: Mapping[str, np.ndarray], where: str) -> None:
        assert self.columns is not None
        if set(arrays) != set(self.columns):
            missing = sorted(set(self.columns) - set(arrays))
            extra = sorted(set(arrays) - set(self.columns))
            raise ShardError(
                f"{where}: columns differ from the first batch: missing {missing}, extra {extra}"
            )
        for name, spec in self.columns.items():
            a = arrays[name]
            if a.dtype != np.dtype(spec["dtype"]) or list(a.shape[1:]) != spec["shape"]:
                raise ShardError(
                    f"{where}: column {name!r} is {a.dtype.str} with row shape "
                    f"{list(a.shape[1:])}, the first batch fixed {spec['dtype']} with row shape "
                    f"{spec['shape']}; cast or resize it before writing"
                )

    def _flush(self, num_rows: int) -> None:
        """Write the first ``num_rows`` pending rows as the next shard."""
        joined = {
            name: np.concatenate([part[name] for part in self._pending])
            for name in self._pending[0]
        }
        rest = self._pending_rows - num_rows
        self._pending = [{n: a[num_rows:] for n, a in joined.items()}] if rest else []
        self._pending_rows = rest
        self._write_shard({n: a[:num_rows] for n, a in joined.items()})

    def _write_shard(self, data: Mapping[str, np.ndarray]) -> None:
        assert self.columns is not None
        schema = _schema(self.columns)
        arrays = []
        for field in schema:
            a = data[field.name]
            values = pa.array(a.reshape(-1))  # (rows * prod(shape),)
            if pa.types.is_fixed_size_list(field.type):
                values = pa.FixedSizeListArray.from_arrays(values, type=field.type)
            arrays.append(values)
        batch = pa.record_batch(arrays, schema=schema)

        name = shard_name(len(self.completed_shards))
        path = self.out_dir / name
        with atomic_path(path) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                writer.write_batch(batch)
            entry = {
                "file": name,
                "num_rows": batch.num_rows,
                "sha256": sha256_file(tmp),
                "bytes": tmp.stat().st_size,
            }
        self.completed_shards.append(entry)
        progress = {
            "schema_version": SCHEMA_VERSION,
            "rows_per_shard": self.rows_per_shard,
            "columns": self.columns,
            "shards": self.completed_shards,
            "attributes": self.attributes,
        }
        atomic_write(self.out_dir / PROGRESS, _json_bytes(progress))

    def _require_empty(self) -> None:
        existing = [p.name for p in self.out_dir.iterdir() if p.name in (MANIFEST, PROGRESS)]
        existing += [p.name for p in self.out_dir.glob("shard-*.arrow")]
        if existing:
            raise ShardError(
                f"{self.out_dir}: already holds {len(existing)} shard set files "
                f"(e.g. {sorted(existing)[0]}); pass resume=True to "
                "continue an interrupted write, or delete the directory to start over"
            )

    def _resume(self) -> None:
        if (self.out_dir / MANIFEST).exists():
            raise ShardError(
                f"{self.out_dir}: is already complete ({MANIFEST} exists); read it with "
                "ShardDataset, or delete the directory to prepare it again"
            )
        progress_path = self.out_dir / PROGRESS
        if progress_path.exists():
            try:
                progress = json.loads(progress_path.read_text())
                shards = progress["shards"]
                rows_per_shard, columns = progress["rows_per_shard"], progress["columns"]
                attributes = progress["attributes"]
            except (ValueError, KeyError, TypeError) as err:
                raise ShardError(
                    f"{progress_path}: unreadable ({err!r}); delete the directory and re-run "
                    "prepare"
                ) from err
            if rows_per_shard != self.rows_per_shard:
                raise ShardError(
                    f"{progress_path}: was written with rows_per_shard={rows_per_shard}, "
                    f"resume asked for {self.rows_per_shard}; resume with the same value"
                )
            if attributes != self.attributes:
                differ = sorted(
                    k
                    for k in set(attributes) | set(self.attributes)
                    if attributes.get(k) != self.attributes.get(k)
                )
                raise ShardError(
                    f"{progress_path}: attributes differ from this run in {differ} "
                    f"(on disk {[attributes.get(k) for k in differ]}, now "
                    f"{[self.attributes.get(k) for k in differ]}); the shards on disk came from "
                    "another encoder or settings: delete the directory to start over"
                )
            for index, entry in enumerate(shards):
                path = self.out_dir / entry["file"]
                if (
                    entry["file"] != shard_name(index)
                    or not path.is_file()
                    or (path.stat().st_size != entry["bytes"])
                ):
                    raise ShardError(
                        f"{self.out_dir}: shard {entry['file']} listed in {PROGRESS} is missing "
                        "or has the wrong size; delete the directory and re-run prepare"
                    )
            self.columns = columns
            self.attributes = attributes  # same content; keep its key order for the manifest
            self.completed_shards = list(shards)
        # A shard renamed into place just before a crash, but never recorded: rewrite it.
        for path in self.out_dir.glob("shard-*.arrow"):
            if path.name not in {entry["file"] for entry in self.completed_shards}:
                path.unlink()


# --------------------------------------------------------------------------- reading


# Bounds of what Arrow and numpy can hold: a count of rows or bytes is an int64, a row's
# values one fixed-size list (int32 long); beyond them the readers would overflow.
_MAX_COUNT = 2**63 - 1
_MAX_ROW_VALUES = 2**31 - 1
Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dtype: Literal[tuple(sorted(_DTYPES))]  # type: ignore[valid-type]
    shape: list[Annotated[int, Field(ge=0)]]

    @model_validator(mode="after")
    def _fits_a_list(self) -> ColumnSpec:
        if math.prod(self.shape) > _MAX_ROW_VALUES:
            raise ValueError(f"shape: {self.shape} is more values per row than an Arrow "
                             f"list holds ({_MAX_ROW_VALUES})")
        return self


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    file: str
    num_rows: Count
    sha256: str
    bytes: Count

    @field_validator("file")
    @classmethod
    def _a_name_in_the_split(cls, name: str) -> str:
        if not name or Path(name).name != name:
            raise ValueError(f"must be a file name inside the split, got {name!r}")
        if len(name.encode("utf-8", "surrogatepass")) > 255:  # NAME_MAX: stat would fail
            raise ValueError(f"is longer than a file name can be (255 bytes), got {name[:40]!r}...")
        return name


class Manifest(BaseModel):
    """``manifest.json`` of a split (the module docstring shows one)."""

    model_config = ConfigDict(extra="allow", strict=True)
    schema_version: int
    num_rows: Count
    columns: dict[str, ColumnSpec]
    shards: list[ShardEntry]
    attributes: dict[str, Any]

    @field_validator("schema_version")
    @classmethod
    def _readable(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version is {version!r}, this slotsweep reads "
                             f"{SCHEMA_VERSION}")
        return version

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        for name in self.columns:  # JSON can spell a lone surrogate; Arrow names are UTF-8
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"columns: column name {name!r} is not UTF-8 text") from None
        id_column = self.columns.get("id")
        if id_column is None or (id_column.dtype, id_column.shape) != ("int64", []):
            raise ValueError("columns.id: column 'id' (int64, shape []) is required")
        total = sum(entry.num_rows for entry in self.shards)
        if total != self.num_rows:
            raise ValueError(f"num_rows: shards hold {total} rows, num_rows says "
                             f"{self.num_rows}")
        return self


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate ``manifest.json`` of a split (``path``: the directory or the file);
    a plain dict, as written, for the readers' fast paths."""
    path = Path(path)
    file = path if path.name == MANIFEST else path / MANIFEST
    if not file.is_file():
        hint = (
            f"an interrupted write left {PROGRESS}: re-run prepare to resume it"
            if (file.parent / PROGRESS).exists()
            else "prepare this split first, or check the path"
        )
        raise ShardError(f"{file}: no manifest; {hint}")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ShardError(f"{file}: not valid JSON ({str(err)[:200]}); re-run prepare") from err
    if not isinstance(manifest, dict):
        raise ShardError(f"{file}: top level must be a JSON object; re-run prepare for this "
                         "split")
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        from slotsweep.config import format_validation_error

        problems = format_validation_error(exc, str(file), Manifest).replace("\n", "; ")
        raise ShardError(f"{problems}; re-run prepare for this split") from None
    return manifest


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
