"""Read TFRecord files of ``tf.train.Example`` protos without TensorFlow.

A TFRecord file (optionally GZIP-compressed as a whole) is a sequence of records::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

all little-endian. ``data`` here is a serialised ``tf.train.Example``, whose schema is
small and fixed (tensorflow/core/example/{example,feature}.proto)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

so a hand-written decoder of a few dozen lines replaces the protobuf runtime. Repeated
numbers are accepted packed and unpacked, as the protobuf wire format requires.

The framing and the decoder stay hand-written: the framing is two struct calls per
record, and the decoder reads the packed numbers of a 64x64 mask in one strided numpy
view, where protobuf's runtime would build a Python list of 4,096 ints (and would add a
dependency on TensorFlow's generated classes). CRC32C comes from google-crc32c, the
maintained C implementation (BENCHMARKS.md, "TFRecord read"). ``verify=False`` skips it.

Writing TFRecords (the framing and an ``Example`` encoder) is for tests only:
tests/support/tfrecords.py.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
_MASK_DELTA = 0xA282EAD8

# --------------------------------------------------------------------------- crc32c


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord (google-crc32c's C code)."""
    return google_crc32c.value(data if isinstance(data, bytes) else bytes(data))


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------- records


def _open(path: Path, compression: str | None) -> BinaryIO:
    if compression == "auto":
        with open(path, "rb") as f:
            compression = "gzip" if f.read(2) == GZIP_MAGIC else None
    if compression == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression in (None, "none", ""):
        return open(path, "rb")
    raise ValueError(f"{path}: compression must be 'auto', 'gzip' or None, got {compression!r}")


def _read(f: BinaryIO, size: int, path: Path, index: int) -> bytes:
    try:
        return f.read(size)
    except (OSError, EOFError, zlib.error) as err:  # gzip's errors for a damaged stream
        raise ValueError(
            f"{path}: record {index}: the compressed stream is damaged or truncated ({err}); "
            "download the file again"
        ) from err


def _read_exact(f: BinaryIO, size: int, path: Path, index: int, what: str) -> bytes:
    data = _read(f, size, path, index)
    if len(data) != size:
        raise ValueError(
            f"{path}: record {index}: file ends inside the {what} ({len(data)} of {size} "
            "bytes); the file is truncated: download it again"
        )
    return data


def read_tfrecord(
    path: str | os.PathLike,
    *,
    start: int = 0,
    count: int | None = None,
    compression: str | None = "auto",
    verify: bool = True,
) -> Iterator[bytes]:
    """Yield the payloads of records ``start .. start + count - 1`` of a TFRecord file.

    ``compression``: "auto" (GZIP when the file starts with the gzip magic bytes),
    "gzip" or None. ``verify`` checks both CRCs of every yielded record; a mismatch
    raises ValueError naming the file and the record index. Skipped records are read
    but not checked.
    """
    path = Path(path)
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"{path}: start and count must be >= 0, got {start}, {count}")
    stop = None if count is None else start + count
    with _open(path, compression) as f:
        index = 0
        while stop is None or index < stop:
            header = _read(f, _HEADER.size, path, index)
            if not header:
                return  # clean end of file
            if len(header) < _HEADER.size:
                raise ValueError(
                    f"{path}: record {index}: file ends inside the record header "
                    f"({len(header)} of {_HEADER.size} bytes); the file is truncated: "
                    "download it again"
                )
            length, length_crc = _HEADER.unpack(header)
            wanted = index >= start
            if wanted and verify and masked_crc32c(header[:8]) != length_crc:
                raise ValueError(
                    f"{path}: record {index}: the length field fails its CRC check; the "
                    "file is corrupt or not a TFRecord file: download it again"
                )
            body = _read_exact(f, length + _FOOTER.size, path, index, "record data")
            if wanted:
                data = body[:length]
                if verify and masked_crc32c(data) != _FOOTER.unpack(body[length:])[0]:
                    raise ValueError(
                        f"{path}: record {index}: data fails its CRC check; the file is "
                        "corrupt: download it again"
                    )
                yield data
            index += 1


# --------------------------------------------------------------------------- protobuf


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; value: int or bytes."""
    pos, end = 0, len(buf)
    value: int | bytes
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf field")
        yield number, wire, value


_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


@dataclass(frozen=True)
class Feature:
    """One ``tf.train.Feature``: its kind and its still-encoded list message."""

    kind: str  # "bytes_list" | "float_list" | "int64_list"
    payload: bytes

    def values(self) -> list[bytes] | np.ndarray:
        """list[bytes] for bytes_list, float32 [n] or int64 [n] arrays otherwise."""
        if self.kind == "bytes_list":
            return [v for number, wire, v in _fields(self.payload) if number == 1 and wire == 2]
        if self.kind == "float_list":
            return self._floats()
        return self._int64s()

    def as_uint8(self) -> np.ndarray:
        """A bytes_list's elements concatenated as uint8 [total bytes].

        DeepMind's multi_object_datasets store each pixel as its own one-byte element;
        that common case is decoded with one strided numpy view.
        """
        if self.kind != "bytes_list":
            raise ValueError(f"as_uint8 needs a bytes_list feature, this one is a {self.kind}")
        raw = np.frombuffer(self.payload, dtype=np.uint8)
        if len(raw) % 3 == 0 and np.all(raw[0::3] == 0x0A) and np.all(raw[1::3] == 1):
            return raw[2::3].copy()
        return np.frombuffer(b"".join(self.values()), dtype=np.uint8)

    def _floats(self) -> np.ndarray:
        parts = []
        for number, wire, value in _fields(self.payload):
            if number != 1:
                continue
            if wire not in (2, 5) or len(value) % 4:
                raise ValueError(f"float_list holds wire type {wire}, expected 2 or 5")
            parts.append(np.frombuffer(value, dtype="<f4"))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def _int64s(self) -> np.ndarray:
        out: list[int] = []
        for number, wire, value in _fields(self.payload):
            if number != 1:
                continue
            if wire == 0:
                out.append(value)
            elif wire == 2:
                pos = 0
                while pos < len(value):
                    v, pos = _varint(value, pos)
                    out.append(v)
            else:
                raise ValueError(f"int64_list holds wire type {wire}, expected 0 or 2")
        # Negative int64 are stored as their 64-bit two's complement.
        return np.array([v - (1 << 64) if v >= 1 << 63 else v for v in out], dtype=np.int64)


def parse_example(data: bytes) -> dict[str, Feature]:
    """Decode a serialised ``tf.train.Example`` into {feature name: Feature}.

    Raises ValueError for data that is not a well-formed Example.
    """
    features: dict[str, Feature] = {}
    for number, wire, features_msg in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(features_msg):
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = "", Feature("bytes_list", b"")  # protobuf defaults
            for n, w, v in _fields(entry):
                if n == 1 and w == 2:
                    key = v.decode("utf-8")
                elif n == 2 and w == 2:
                    for kind_number, kind_wire, payload in _fields(v):
                        if kind_number in _KINDS and kind_wire == 2:
                            feature = Feature(_KINDS[kind_number], payload)
            features[key] = feature  # a repeated key: the last entry wins, as in protobuf
    return features
