"""The shard format: what `prepare` writes and training reads. No torch here: the
command line and the driver read manifests without importing it.

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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1


MANIFEST = "manifest.json"


PROGRESS = "progress.json"


# Fixed-width numeric types only: Arrow packs booleans into bits, which numpy cannot
# view without a copy (store masks as uint8).
DTYPES = frozenset(
    ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "float32", "float64"]
)


class ShardError(ValueError):
    """A shard set is missing, corrupt, or does not match what the caller expects."""


def shard_name(index: int) -> str:
    """File name of shard ``index`` inside a split directory."""
    return f"shard-{index:05d}.arrow"


def arrow_schema(columns: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
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


# Bounds of what Arrow and numpy can hold: a count of rows or bytes is an int64, a row's
# values one fixed-size list (int32 long); beyond them the readers would overflow.
_MAX_COUNT = 2**63 - 1


_MAX_ROW_VALUES = 2**31 - 1


Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dtype: Literal[tuple(sorted(DTYPES))]  # type: ignore[valid-type]
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
        from slotsweep.config_io import format_validation_error

        problems = format_validation_error(exc, str(file), Manifest).replace("\n", "; ")
        raise ShardError(f"{problems}; re-run prepare for this split") from None
    return manifest
