"""Write TFRecord files of ``tf.train.Example`` protos, for tests and fixtures.

The package only reads them (slotsweep/data/tfrecord.py); this is the other half, kept
out of the installed package because nothing but tests writes DeepMind's format.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from gzip import open as gzip_open
from pathlib import Path
from typing import Any

import numpy as np

from slotsweep.data.sources.tfrecord import masked_crc32c


def write_tfrecord(
    path: str | os.PathLike, examples: Iterable[bytes | Mapping[str, Any]], gzip: bool = True
) -> Path:
    """Write records (bytes, or feature dicts for ``encode_example``); a test utility."""
    path = Path(path)
    opener = gzip_open if gzip else open
    with opener(path, "wb") as f:
        for example in examples:
            data = example if isinstance(example, bytes) else encode_example(example)
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", masked_crc32c(header)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))
    return path


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _encode_varint(len(payload)) + payload


def _encode_feature(value: Any, packed: bool) -> bytes:
    if isinstance(value, bytes):
        value = [value]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
        if all(len(v) == 1 for v in value):  # one byte per element: build it in numpy
            rows = np.empty((len(value), 3), dtype=np.uint8)
            rows[:, 0], rows[:, 1] = 0x0A, 1
            rows[:, 2] = np.frombuffer(b"".join(value), dtype=np.uint8)
            payload = rows.tobytes()
        else:
            payload = b"".join(_length_delimited(1, v) for v in value)
        return _length_delimited(1, payload)
    array = np.asarray(value).reshape(-1)
    if array.dtype.kind == "f":
        floats = array.astype("<f4")
        if packed:
            payload = _length_delimited(1, floats.tobytes()) if len(floats) else b""
        else:
            payload = b"".join(_key(1, 5) + f.tobytes() for f in floats)
        return _length_delimited(2, payload)
    if array.dtype.kind in "iub":
        ints = [int(v) for v in array]
        if packed:
            body = b"".join(_encode_varint(v) for v in ints)
            payload = _length_delimited(1, body) if ints else b""
        else:
            payload = b"".join(_key(1, 0) + _encode_varint(v) for v in ints)
        return _length_delimited(3, payload)
    raise TypeError(f"cannot encode {type(value).__name__} of dtype {array.dtype} as a Feature")


def encode_example(features: Mapping[str, Any], *, packed: bool = True) -> bytes:
    """Serialise {name: value} as a ``tf.train.Example``; a test utility.

    bytes or a list of bytes -> bytes_list, float arrays -> float_list, integer or bool
    arrays -> int64_list. ``packed=False`` writes repeated numbers one field each.
    """
    entries = b"".join(
        _length_delimited(
            1,
            _length_delimited(1, name.encode()) + _length_delimited(2, _encode_feature(v, packed)),
        )
        for name, v in features.items()
    )
    return _length_delimited(1, entries)
