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

CRC32C runs in numpy, vectorised over fixed-size chunks of a record and combined with
precomputed "append zero bytes" operators (the linearity of CRCs, as in zlib's
``crc32_combine``): about a millisecond for a 100 kB record. ``verify=False`` skips it.

``write_tfrecord`` and ``encode_example`` exist for tests and small fixtures.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
_MASK_DELTA = 0xA282EAD8
_gzip_open = gzip.open  # write_tfrecord's `gzip` argument shadows the module

# --------------------------------------------------------------------------- crc32c

_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reversed
_CHUNK = 64  # bytes per lane of the vectorised CRC


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1)
    return table.astype(np.uint32)


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _crc_raw_python(data: bytes, crc: int = 0) -> int:
    """CRC register after ``data`` starting from ``crc`` (no init or final xor)."""
    table = _TABLE_LIST
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


@cache
def _shift_tables(level: int) -> np.ndarray:
    """uint32 [4, 256]: the register after appending ``_CHUNK * 2**level`` zero bytes.

    The operator is linear over GF(2), so it is tabulated per input byte:
    shift(reg) = T[0][reg & 0xFF] ^ T[1][reg >> 8 & 0xFF] ^ T[2][...] ^ T[3][...].
    """
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)  # [32]
    if level == 0:
        images = basis.copy()
        for _ in range(_CHUNK):
            images = _TABLE[images & 0xFF] ^ (images >> 8)
    else:
        images = _apply_shift(_apply_shift(basis, level - 1), level - 1)
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1  # [256, 8]
    tables = np.empty((4, 256), dtype=np.uint32)
    for j in range(4):
        tables[j] = np.bitwise_xor.reduce(
            np.where(bits == 1, images[8 * j : 8 * j + 8], np.uint32(0)), axis=1
        )
    return tables


def _apply_shift(regs: np.ndarray, level: int) -> np.ndarray:
    t = _shift_tables(level)
    low = t[0][regs & 0xFF] ^ t[1][(regs >> 8) & 0xFF]
    return low ^ t[2][(regs >> 16) & 0xFF] ^ t[3][regs >> 24]


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, as used by TFRecord."""
    n = len(data)
    if n < 4 * _CHUNK:
        return _crc_raw_python(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    # The initial register 0xFFFFFFFF equals inverting the first four bytes and starting
    # from 0; from 0, leading zero bytes change nothing, so the data can be left-padded
    # to a power-of-two number of chunks that are reduced pairwise.
    num_chunks = 1 << int(np.ceil(np.log2(-(-n // _CHUNK))))
    buf = np.zeros(num_chunks * _CHUNK, dtype=np.uint8)
    buf[-n:] = np.frombuffer(data, dtype=np.uint8)
    buf[-n : -n + 4] ^= 0xFF
    chunks = buf.reshape(_CHUNK, num_chunks, order="F")  # column k = chunk k
    regs = np.zeros(num_chunks, dtype=np.uint32)  # [num_chunks]
    for row in chunks:
        regs = _TABLE[(regs ^ row) & 0xFF] ^ (regs >> 8)
    level = 0
    while len(regs) > 1:  # combine (earlier, later) = shift(earlier) ^ later
        regs = _apply_shift(regs[0::2], level) ^ regs[1::2]
        level += 1
    return int(regs[0]) ^ 0xFFFFFFFF


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


def write_tfrecord(
    path: str | os.PathLike, examples: Iterable[bytes | Mapping[str, Any]], gzip: bool = True
) -> Path:
    """Write records (bytes, or feature dicts for ``encode_example``); a test utility."""
    path = Path(path)
    opener = _gzip_open if gzip else open
    with opener(path, "wb") as f:
        for example in examples:
            data = example if isinstance(example, bytes) else encode_example(example)
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", masked_crc32c(header)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))
    return path



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
