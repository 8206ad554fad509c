"""Arrow shards: round trip, zero-copy reads, DataLoader workers, corruption, resume."""

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from slotsweep.data.format import MANIFEST, PROGRESS, ShardError, read_manifest
from slotsweep.data.reader import ShardDataset, collate, verify
from slotsweep.data.writer import ShardWriter

NUM_ROWS = 10
ROWS_PER_SHARD = 4  # shards of 4, 4 and a partial 2
ATTRIBUTES = {"encoder": "toy", "token_grid": [2, 3], "object_fields": ["x", "y", "scale"]}


def make_rows(start: int, stop: int) -> dict[str, np.ndarray]:
    """Deterministic rows [start, stop) with every conventional column and dtype."""
    rng = np.random.default_rng(start)
    n = stop - start
    return {
        "id": np.arange(start, stop, dtype=np.int64),
        "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        "features": rng.standard_normal((n, 6, 5)).astype(np.float16),
        "segmentation": rng.integers(-1, 4, (n, 8, 8), dtype=np.int16),
        "objects": rng.standard_normal((n, 3, 3)).astype(np.float32),
    }


def write_split(out_dir, batch_size: int = 3) -> dict[str, np.ndarray]:
    """Write NUM_ROWS rows in uneven batches; return all rows for comparison."""
    with ShardWriter(out_dir, rows_per_shard=ROWS_PER_SHARD, attributes=ATTRIBUTES) as writer:
        for start in range(0, NUM_ROWS, batch_size):
            writer.write(make_rows(start, min(start + batch_size, NUM_ROWS)))
    return {
        name: np.concatenate(
            [
                make_rows(s, min(s + batch_size, NUM_ROWS))[name]
                for s in range(0, NUM_ROWS, batch_size)
            ]
        )
        for name in make_rows(0, 1)
    }


@pytest.fixture
def split(tmp_path):
    out = tmp_path / "train"
    rows = write_split(out)
    return out, rows


def test_round_trip_every_column(split):
    out, rows = split
    manifest = verify(out)
    assert [s["num_rows"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["num_rows"] == NUM_ROWS
    assert manifest["columns"]["features"] == {"dtype": "float16", "shape": [6, 5]}
    assert manifest["attributes"] == ATTRIBUTES
    assert not (out / PROGRESS).exists()
    ds = ShardDataset(out)
    assert len(ds) == NUM_ROWS
    for i in range(NUM_ROWS):
        item = ds[i]
        for name, expected in rows.items():
            assert item[name].dtype == expected.dtype
            np.testing.assert_array_equal(item[name], expected[i])
    assert (rows["segmentation"] < 0).any()
    np.testing.assert_array_equal(ds[-1]["id"], NUM_ROWS - 1)
    with pytest.raises(IndexError):
        ds[NUM_ROWS]


def test_reads_are_zero_copy_and_read_only(split):
    out, _ = split
    ds = ShardDataset(out)
    allocated = pa.total_allocated_bytes()
    features = ds[5]["features"]
    # Memory-mapped data never passes through Arrow's allocator.
    assert pa.total_allocated_bytes() == allocated
    assert not features.flags.owndata and not features.flags.writeable
    base = features
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, pa.Array)
    with pytest.raises(ValueError):
        features[0, 0] = 1


def test_get_batch_equals_items(split):
    out, _ = split
    ds = ShardDataset(out, columns=["id", "features"])
    indices = [9, 0, 5, 5, 3, -2]
    batch = ds.get_batch(indices)
    assert set(batch) == {"id", "features"}
    for j, i in enumerate(indices):
        for name in batch:
            np.testing.assert_array_equal(batch[name][j], ds[i][name])
    assert ds.get_batch([])["features"].shape == (0, 6, 5)


def test_dataloader_workers_match_direct_access(split):
    out, _ = split
    ds = ShardDataset(out)
    ds[0]  # open a map in this process: it must not travel to the workers
    assert len(pickle.dumps(ds)) < 10_000
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert batches[0]["image"].dtype == torch.uint8 and batches[0]["image"].shape == (3, 8, 8, 3)
    for name in ("id", "image", "features", "segmentation", "objects"):
        got = torch.cat([b[name] for b in batches]).numpy()
        np.testing.assert_array_equal(got, np.stack([ds[i][name] for i in range(len(ds))]))


def test_shard_subset(split):
    out, rows = split
    ds = ShardDataset(out, shards=[2, 0])
    assert len(ds) == 6
    assert [int(ds[i]["id"]) for i in range(len(ds))] == [8, 9, 0, 1, 2, 3]
    with pytest.raises(ShardError, match="shards="):
        ShardDataset(out, shards=[3])


def test_expect_shapes(split):
    out, _ = split
    ShardDataset(out, expect_shapes={"features": (None, 5), "image": (8, 8, 3)})
    with pytest.raises(ShardError, match=r"'features'.*\(6, 5\).*\(196, 768\)"):
        ShardDataset(out, expect_shapes={"features": (196, 768)})
    with pytest.raises(ShardError, match="no column 'depth'"):
        ShardDataset(out, columns=["id", "depth"])


def test_corrupt_shard_fails_verify(split):
    out, _ = split
    path = out / "shard-00001.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-00001.arrow.*sha256"):
        verify(out)
    with pytest.raises(ShardError, match="shard-00001.arrow"):
        ShardDataset(out, verify_checksums=True)


def test_prepare_verify_names_the_bad_shard(split, capsys):
    from slotsweep.prepare import main

    out, _ = split
    assert main(["verify", str(out)]) == 0
    assert "each as its manifest says" in capsys.readouterr().out
    path = out / "shard-00001.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 2
    assert "shard-00001.arrow fails its sha256 check" in capsys.readouterr().err


def test_truncated_shard_fails_on_open(split):
    out, _ = split
    path = out / "shard-00001.arrow"
    path.write_bytes(path.read_bytes()[:-100])
    ds = ShardDataset(out)  # shards open lazily
    np.testing.assert_array_equal(ds[0]["id"], 0)
    with pytest.raises(ShardError, match="shard-00001.arrow.*truncated or corrupt.*verify"):
        ds[4]
    with pytest.raises(ShardError, match="shard-00001.arrow.*bytes"):
        verify(out)


def test_missing_shard(split):
    out, _ = split
    (out / "shard-00002.arrow").unlink()
    with pytest.raises(ShardError, match="shard-00002.arrow is missing"):
        verify(out)
    with pytest.raises(ShardError, match="shard-00002.arrow is missing"):
        ShardDataset(out)[9]


def test_missing_or_bad_manifest(split, tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        ShardDataset(tmp_path / "nowhere")
    out, _ = split
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 2}))
    with pytest.raises(ShardError, match="manifest.json.*schema_version"):
        read_manifest(out)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json.*JSON"):
        read_manifest(out)


def test_mismatched_batch_names_the_column(tmp_path):
    with ShardWriter(tmp_path / "s", rows_per_shard=4) as writer:
        writer.write(make_rows(0, 2))
        bad = make_rows(2, 4)
        bad["features"] = bad["features"].astype(np.float32)
        with pytest.raises(ShardError, match="column 'features'.*float16"):
            writer.write(bad)
        bad = make_rows(2, 4)
        del bad["objects"]
        with pytest.raises(ShardError, match=r"missing \['objects'\]"):
            writer.write(bad)
        writer.write(make_rows(2, 4))
    assert read_manifest(tmp_path / "s")["num_rows"] == 4
    with pytest.raises(ShardError, match="'id' is required"):
        ShardWriter(tmp_path / "t").write({"image": np.zeros((1, 2, 2, 3), np.uint8)})
    with pytest.raises(ShardError, match="resume=True"):
        ShardWriter(tmp_path / "s")


def test_resume_after_crash_is_byte_identical(tmp_path):
    straight = tmp_path / "straight"
    write_split(straight, batch_size=2)

    resumed = tmp_path / "resumed"
    with (
        pytest.raises(RuntimeError),
        ShardWriter(resumed, rows_per_shard=ROWS_PER_SHARD, attributes=ATTRIBUTES) as writer,
    ):
        for start in range(0, NUM_ROWS, 2):  # 2.5 shards, then the producer dies
            writer.write(make_rows(start, start + 2))
        raise RuntimeError("simulated crash")
    assert not (resumed / MANIFEST).exists()
    assert [s["file"] for s in writer.completed_shards] == [
        "shard-00000.arrow",
        "shard-00001.arrow",
    ]
    # Debris of a crash inside the next shard write: a temp file and an unrecorded shard.
    (resumed / "shard-00002.arrow.tmp").write_bytes(b"partial")
    (resumed / "shard-00002.arrow").write_bytes(b"renamed but not recorded")

    with pytest.raises(ShardError, match="attributes differ.*encoder"):
        ShardWriter(
            resumed,
            rows_per_shard=ROWS_PER_SHARD,
            resume=True,
            attributes={**ATTRIBUTES, "encoder": "other"},
        )
    with ShardWriter(
        resumed, rows_per_shard=ROWS_PER_SHARD, attributes=ATTRIBUTES, resume=True
    ) as writer:
        assert writer.rows_done == 8
        for start in range(writer.rows_done, NUM_ROWS, 2):
            writer.write(make_rows(start, start + 2))

    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    assert names == [MANIFEST, "shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow"]
    for name in names:
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    verify(resumed)
