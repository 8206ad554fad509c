"""Tests for the TFRecord reader and the DeepMind multi-dSprites importer."""

import gzip

import numpy as np
import pytest

from slotsweep.data.format import read_manifest
from slotsweep.data.reader import ShardDataset
from slotsweep.data.sources import multi_dsprites
from slotsweep.data.sources.dsprites import FIELD_INDEX, generate
from slotsweep.data.sources.multi_dsprites import import_multi_dsprites, read_multi_dsprites
from slotsweep.data.sources.tfrecord import crc32c, parse_example, read_tfrecord
from tests.support.tfrecords import encode_example, write_tfrecord

NUM = 12
NUM_ENTITIES = 5
SCALE = FIELD_INDEX["scale"]


def _one_byte_elements(array: np.ndarray) -> list[bytes]:
    raw = array.astype(np.uint8).tobytes()
    return [raw[i : i + 1] for i in range(len(raw))]


def to_deepmind(scenes: dict[str, np.ndarray]) -> list[dict]:
    """generate() output -> feature dicts in DeepMind's multi_dsprites schema."""
    examples = []
    for image, segmentation, objects in zip(
        scenes["image"], scenes["segmentation"], scenes["objects"], strict=True
    ):
        entities = np.zeros((NUM_ENTITIES, objects.shape[1]), dtype=np.float32)
        entities[1:] = objects  # entity 0 = background
        present = entities[:, SCALE] > 0
        background = image[segmentation == 0]
        color = entities[:, FIELD_INDEX["r"] : FIELD_INDEX["b"] + 1].copy()
        if len(background):
            color[0] = background[0] / 255.0
        mask = (segmentation[:, :, None] == np.arange(NUM_ENTITIES)) * 255  # [64, 64, E]
        feature = {
            name: entities[:, FIELD_INDEX[name]]
            for name in ("x", "y", "scale", "orientation", "visibility")
        }
        feature["shape"] = np.where(present, entities[:, FIELD_INDEX["shape"]] + 1, 0).astype(
            np.float32
        )
        feature["color"] = color.reshape(-1)
        feature["image"] = _one_byte_elements(image)
        feature["mask"] = _one_byte_elements(mask)
        examples.append(feature)
    return examples


@pytest.fixture(scope="module")
def scenes():
    return generate(NUM, seed=7)


@pytest.fixture(scope="module")
def examples(scenes):
    return [encode_example(e) for e in to_deepmind(scenes)]


@pytest.fixture
def gz_file(tmp_path, examples):
    return write_tfrecord(tmp_path / "multi_dsprites_colored_on_colored.tfrecords", examples)


def _assert_rows_equal(found: dict, scenes: dict, rows: slice) -> None:
    for name in ("id", "image", "segmentation", "objects"):
        assert found[name].dtype == scenes[name].dtype, name
        np.testing.assert_array_equal(found[name], scenes[name][rows], err_msg=name)


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C by its definition, one bit at a time (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_matches_reference():
    import google_crc32c

    # google-crc32c falls back to pure Python, ~100x slower, where it has no C build
    # (1.5 on Python 3.11): pyproject's floor must give the C one.
    assert google_crc32c.implementation == "c"
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 3, 255, 256, 300, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n
        assert crc32c(memoryview(data)) == crc32c(bytearray(data)) == crc32c(data)


def test_import_round_trips_exactly(gz_file, scenes, tmp_path):
    assert gz_file.read_bytes()[:2] == b"\x1f\x8b"
    out = import_multi_dsprites(gz_file, tmp_path / "shards", rows_per_shard=5)
    dataset = ShardDataset(out, verify_checksums=True)
    assert len(dataset) == NUM
    _assert_rows_equal(dataset.get_batch(np.arange(NUM)), scenes, slice(None))
    attributes = read_manifest(out)["attributes"]
    assert attributes["dataset"] == "deepmind-multi-dsprites"
    assert attributes["source"] == gz_file.name
    assert attributes["variant"] == "colored_on_colored"
    assert (attributes["start"], attributes["count"]) == (0, None)


def test_start_count_slices_and_batches(gz_file, scenes):
    batches = list(read_multi_dsprites(gz_file, start=3, count=4, batch_size=3))
    assert [len(b["id"]) for b in batches] == [3, 1]
    joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    _assert_rows_equal(joined, scenes, slice(3, 7))
    assert len(list(read_multi_dsprites(gz_file, start=NUM + 2))) == 0


def test_import_resumes_after_interruption(gz_file, scenes, tmp_path, monkeypatch):
    monkeypatch.setattr(multi_dsprites, "_BATCH", 5)
    out = tmp_path / "shards"

    def interrupt(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_multi_dsprites(gz_file, out, start=2, count=9, rows_per_shard=5, progress=interrupt)
    calls = []
    import_multi_dsprites(gz_file, out, start=2, count=9, rows_per_shard=5, progress=calls.append)
    assert calls == [5, 4]  # 5 rows resumed, then the remaining 4
    dataset = ShardDataset(out)
    _assert_rows_equal(dataset.get_batch(np.arange(len(dataset))), scenes, slice(2, 11))


def test_plain_file_reads_and_corruption_names_the_record(tmp_path, examples):
    path = write_tfrecord(tmp_path / "plain.tfrecords", examples[:4], gzip=False)
    assert list(read_tfrecord(path)) == examples[:4]
    data = bytearray(path.read_bytes())
    offset = sum(16 + len(e) for e in examples[:2]) + 12 + 100  # inside record 2's data
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"plain\.tfrecords: record 2: data fails its CRC"):
        list(read_tfrecord(path))
    assert len(list(read_tfrecord(path, count=2))) == 2  # records before it still read
    assert len(list(read_tfrecord(path, verify=False))) == 4


def test_truncated_file_is_reported(tmp_path, examples):
    path = tmp_path / "cut.tfrecords"
    full = write_tfrecord(tmp_path / "full.tfrecords", examples[:2], gzip=False).read_bytes()
    path.write_bytes(full[:-10])
    with pytest.raises(ValueError, match=r"record 1: file ends inside"):
        list(read_tfrecord(path))
    gz = tmp_path / "cut.tfrecords.gz"
    gz.write_bytes(gzip.compress(full)[:-30])
    with pytest.raises(ValueError, match=r"record \d"):
        list(read_tfrecord(gz))
    damaged = bytearray(gzip.compress(full))
    damaged[len(damaged) // 2] ^= 0xFF
    gz.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"cut\.tfrecords\.gz: record \d"):
        list(read_tfrecord(gz))


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_protobuf_packed_and_unpacked(packed):
    floats = np.array([0.5, -1.25, 3e-8, 0.0], dtype=np.float32)
    ints = np.array([0, 1, -7, 2**40, 300], dtype=np.int64)
    data = encode_example(
        {"f": floats, "i": ints, "b": [b"ab", b"", b"xyz"], "e": np.zeros(0, np.float32)},
        packed=packed,
    )
    features = parse_example(data)
    assert features["f"].kind == "float_list"
    np.testing.assert_array_equal(features["f"].values(), floats)
    np.testing.assert_array_equal(features["i"].values(), ints)
    assert features["b"].values() == [b"ab", b"", b"xyz"]
    np.testing.assert_array_equal(features["b"].as_uint8(), np.frombuffer(b"abxyz", np.uint8))
    assert len(features["e"].values()) == 0


def test_mixed_packed_chunks_and_unknown_fields():
    # FloatList with an unpacked value, then a packed run, plus an unknown varint field 9.
    floats = np.array([1.0, 2.0, 3.0], dtype="<f4")
    float_list = b"\x0d" + floats[:1].tobytes() + b"\x0a\x08" + floats[1:].tobytes()
    float_list += b"\x48\x05"
    feature = b"\x12" + bytes([len(float_list)]) + float_list
    entry = b"\x0a\x01f" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    example = b"\x0a" + bytes([len(features)]) + features
    np.testing.assert_array_equal(parse_example(example)["f"].values(), floats)


def test_bad_shape_ids_raise(tmp_path, scenes):
    example = to_deepmind({k: v[:1] for k, v in scenes.items()})[0]
    example["shape"] = np.full(NUM_ENTITIES, 7, dtype=np.float32)
    path = write_tfrecord(tmp_path / "bad.tfrecords", [example])
    with pytest.raises(ValueError, match=r"bad\.tfrecords: record 0: shape ids"):
        list(read_multi_dsprites(path))


def test_prepare_cli_imports_a_slice(gz_file, scenes, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "slotsweep.prepare", "multi-dsprites", "--tfrecord",
           str(gz_file), "--out", str(out), "--start", "2", "--count", "5"]
    subprocess.run(cmd, check=True, capture_output=True)
    _assert_rows_equal(ShardDataset(out).get_batch(np.arange(5)), scenes, slice(2, 7))
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "already complete" in again.stdout
