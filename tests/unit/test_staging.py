"""Training data staged in device memory: the same batches as streaming, bit for bit.

Staging targets a GPU; these tests stage to the CPU, which runs the same code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slotsweep.config import DataConfig
from slotsweep.config_io import ConfigError
from slotsweep.data.batches import Batches, stage_on_device
from slotsweep.data.reader import ShardDataset
from slotsweep.data.writer import ShardWriter


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """40 rows of 16 x 8 float16 tokens in shards of 16 (so batches straddle shards)."""
    path = tmp_path_factory.mktemp("features") / "train"
    rng = np.random.default_rng(0)
    with ShardWriter(path, rows_per_shard=16) as writer:
        writer.write({"id": np.arange(40, dtype=np.int64),
                      "features": rng.standard_normal((40, 16, 8)).astype(np.float16)})
    return path


@pytest.mark.parametrize("which", ["images", "features"])
def test_staged_batches_equal_streamed_batches(dsprites16, features, which):
    if which == "images":
        shards = ShardDataset(dsprites16 / "train", columns=["image", "segmentation"])
    else:
        shards = ShardDataset(features, columns=["features"])
    batches = Batches(shards)
    staged = batches.stage(torch.device("cpu"))
    assert batches.nbytes() == sum(t.numel() * t.element_size() for t in staged.values())
    batch_size = 12  # 64 or 40 rows: the epochs drop a partial batch
    streamed = batches.train_batches(start=3, batch_size=batch_size, seed=5)
    gathered = Batches(shards).staged_batches(staged, start=3, batch_size=batch_size, seed=5)
    for _ in range(3 * len(batches) // batch_size):  # three epochs, starting mid-epoch
        a, b = next(streamed), next(gathered)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_staging_copies_in_chunks(features, monkeypatch):
    monkeypatch.setattr("slotsweep.data.batches._STAGE_CHUNK_BYTES", 16 * 8 * 2 * 7)  # 7 rows
    batches = Batches(ShardDataset(features, columns=["features"]))
    staged = batches.stage(torch.device("cpu"))["features"]
    expected = torch.from_numpy(batches.shards.get_batch(np.arange(40))["features"])
    assert torch.equal(staged, expected)


GB = 10**9


@pytest.mark.parametrize(
    ("stage", "device", "free", "expected"),
    [
        ("auto", "cpu", None, False),  # the page cache already serves the CPU
        ("auto", "cuda", 80 * GB, True),  # 35 GB of COCO tokens on an 80 GB card
        ("auto", "cuda", 40 * GB, False),  # more than half the free memory: stream
        ("stream", "cuda", 80 * GB, False),
        ("device", "cpu", None, True),
        ("device", "cuda", 80 * GB, True),
    ],
)
def test_stage_decision(stage, device, free, expected):
    data = DataConfig(stage=stage)
    assert stage_on_device(data, nbytes=35 * GB, device=torch.device(device),
                           free_bytes=free) is expected


def test_forced_staging_that_does_not_fit_says_what_to_do():
    data = DataConfig(stage="device", stage_memory_fraction=0.5)
    with pytest.raises(ConfigError, match=r"data.stage: 'device'.*35.00 GB.*use data.stage"):
        stage_on_device(data, nbytes=35 * GB, device=torch.device("cuda"), free_bytes=40 * GB)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_equal_plain_batches(dsprites16):
    batches = Batches(ShardDataset(dsprites16 / "train", columns=["image"]))
    plain = batches.train_batches(start=0, batch_size=8, seed=0)
    pinned = batches.train_batches(start=0, batch_size=8, seed=0, pin_memory=True)
    for _ in range(3):
        a, b = next(plain), next(pinned)
        assert b["image"].is_pinned() and torch.equal(a["image"], b["image"])
