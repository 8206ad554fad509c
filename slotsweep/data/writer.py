"""Writing a split's shards (`ShardWriter`): atomically, resumably, with sha256 sums in
the manifest. The format is in `slotsweep.data.format`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slotsweep.data.format import (
    DTYPES,
    MANIFEST,
    PROGRESS,
    SCHEMA_VERSION,
    ShardError,
    arrow_schema,
    shard_name,
)
from slotsweep.files import atomic_path, atomic_write, sha256_file, stale_temporaries


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


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
            if a.dtype.name not in DTYPES or not a.dtype.isnative:
                raise ShardError(
                    f"{where}: column {name!r} has dtype {a.dtype.str}; use one of "
                    f"{sorted(DTYPES)} in native byte order (booleans as uint8)"
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
        schema = arrow_schema(self.columns)
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
