"""Shared fixtures: tiny synthetic shard sets and small trial configs."""

from __future__ import annotations

import pytest

from slotsweep.config import build_config
from slotsweep.data.sources.synthetic import write_dsprites

TINY_MODEL = {
    "resolution": 16, "num_slots": 3, "slot_size": 16, "mlp_hidden_size": 32,
    "encoder_channels": 16, "decoder_channels": 16, "decoder_layers": 2,
}


@pytest.fixture(scope="session")
def dsprites16(tmp_path_factory):
    """64 training and 16 validation scenes at 16x16, written once per session."""
    root = tmp_path_factory.mktemp("dsprites16")
    write_dsprites(root / "train", num=64, seed=0, start=0, resolution=16, rows_per_shard=24)
    write_dsprites(root / "val", num=16, seed=0, start=64, resolution=16)
    return root


@pytest.fixture
def tiny_config(dsprites16):
    """A factory of small, fast trial configs on the 16x16 shards."""

    def make(**sections):
        tree = {
            "model": dict(TINY_MODEL),
            "data": {"train": str(dsprites16 / "train"), "val": str(dsprites16 / "val")},
            "train": {"steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 2,
                      "checkpoint_every": 4, "device": "cpu"},
            "eval": {"every": 4, "batch_size": 8, "max_images": 16},
        }
        for name, values in sections.items():
            tree.setdefault(name, {}).update(values)
        return build_config(tree)

    return make


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A tiny COCO split (tests.support.coco.write_coco_dir), once per module."""
    from tests.support.coco import write_coco_dir

    return write_coco_dir(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def shards(dsprites16, tmp_path_factory):
    """The paper sweeps' smoke shards, images/ and features/
    (tests.support.paper_sweeps.write_paper_shards), once per module."""
    from tests.support.paper_sweeps import write_paper_shards

    return write_paper_shards(dsprites16, tmp_path_factory.mktemp("paper_sweeps"))
