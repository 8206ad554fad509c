"""TFRecord read throughput: CRC32C through google-crc32c against the numpy CRC it replaced.

Reads the same file of DeepMind-sized records (a 64x64x3 image and six 64x64 masks as
one-byte elements: ~110 kB per record, as in multi_dsprites_colored_on_colored) with
`read_tfrecord`, checking both CRCs of every record, three ways in one run:
  - numpy CRC32C: the vectorised numpy implementation slotsweep had before (kept here,
    verbatim in behaviour, as the baseline);
  - google-crc32c: the C implementation the reader uses now;
  - no verification (`verify=False`): the framing and the read alone.
Each row also parses every record as an Example, so the last column is what the importer
pays per record. Every CRC is cross-checked against the other implementation first.

    python benchmarks/tfrecord.py [--records 500]
    python benchmarks/tfrecord.py --smoke     # 16 records; CI runs it
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.tfrecords

from slotsweep.data.sources import tfrecord
from tests.support.tfrecords import encode_example, write_tfrecord  # noqa: E402

# ----------------------------------------------------------- the numpy baseline
_POLY = 0x82F63B78  # Castagnoli, bit-reversed
_CHUNK = 64  # bytes per lane


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1)
    return table.astype(np.uint32)


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _crc_raw_python(data: bytes, crc: int) -> int:
    for byte in data:
        crc = _TABLE_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


@cache
def _shift_tables(level: int) -> np.ndarray:
    """[4, 256]: the register after appending _CHUNK * 2**level zero bytes, per byte."""
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    if level == 0:
        images = basis.copy()
        for _ in range(_CHUNK):
            images = _TABLE[images & 0xFF] ^ (images >> 8)
    else:
        images = _apply_shift(_apply_shift(basis, level - 1), level - 1)
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    tables = np.empty((4, 256), dtype=np.uint32)
    for j in range(4):
        tables[j] = np.bitwise_xor.reduce(
            np.where(bits == 1, images[8 * j : 8 * j + 8], np.uint32(0)), axis=1)
    return tables


def _apply_shift(regs: np.ndarray, level: int) -> np.ndarray:
    t = _shift_tables(level)
    return (t[0][regs & 0xFF] ^ t[1][(regs >> 8) & 0xFF]
            ^ t[2][(regs >> 16) & 0xFF] ^ t[3][regs >> 24])


def numpy_crc32c(data) -> int:
    n = len(data)
    if n < 4 * _CHUNK:
        return _crc_raw_python(bytes(data), 0xFFFFFFFF) ^ 0xFFFFFFFF
    num_chunks = 1 << int(np.ceil(np.log2(-(-n // _CHUNK))))
    buf = np.zeros(num_chunks * _CHUNK, dtype=np.uint8)
    buf[-n:] = np.frombuffer(data, dtype=np.uint8)
    buf[-n : -n + 4] ^= 0xFF
    regs = np.zeros(num_chunks, dtype=np.uint32)
    for row in buf.reshape(_CHUNK, num_chunks, order="F"):
        regs = _TABLE[(regs ^ row) & 0xFF] ^ (regs >> 8)
    level = 0
    while len(regs) > 1:
        regs = _apply_shift(regs[0::2], level) ^ regs[1::2]
        level += 1
    return int(regs[0]) ^ 0xFFFFFFFF


def numpy_masked(data) -> int:
    crc = numpy_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------- the run


def records(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8).tobytes()
        masks = rng.integers(0, 2, (6, 64, 64, 1), dtype=np.uint8) * 255
        out.append(encode_example({
            "image": [image[i : i + 1] for i in range(len(image))],
            "mask": [bytes([v]) for v in masks.reshape(-1)],
            "visibility": np.ones(6, dtype=np.float32),
        }))
    return out


def read_all(path: Path, verify: bool) -> int:
    count = 0
    for data in tfrecord.read_tfrecord(path, verify=verify):
        tfrecord.parse_example(data)
        count += 1
    return count


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="16 records, one repeat: CI")
    args = parser.parse_args()
    if args.smoke:
        args.records, args.repeats = 16, 1
    data = records(args.records)
    for d in data[:8] + [b"", b"123456789"]:
        assert numpy_crc32c(d) == tfrecord.crc32c(d), "the two CRC32C implementations differ"
    size = sum(len(d) for d in data)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tfrecord(Path(tmp) / "bench.tfrecords", data, gzip=False)
        read_all(path, verify=False)  # warm the page cache
        library = tfrecord.masked_crc32c
        rows = []
        for name, masked, verify in (("numpy CRC32C (before)", numpy_masked, True),
                                     ("google-crc32c (now)", library, True),
                                     ("no verification", library, False)):
            tfrecord.masked_crc32c = masked
            try:
                assert read_all(path, verify) == args.records
                rows.append((name, best_of(args.repeats, lambda v=verify: read_all(path, v))))
            finally:
                tfrecord.masked_crc32c = library
    if args.smoke:
        print("SMOKE RUN: sizes too small to measure anything")
    print(f"{args.records} records, {size / args.records / 1e3:.0f} kB each, "
          f"best of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"{platform.python_version()}")
    print("| reader | s | MB/s | ms/record |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {size / seconds / 1e6:.0f} | "
              f"{seconds / args.records * 1e3:.3f} |")


if __name__ == "__main__":
    main()
