"""Shards on storage reached through pyarrow's filesystem API, cached locally."""

from __future__ import annotations

import numpy as np
import pytest

from slotsweep.data.format import ShardError
from slotsweep.data.reader import ShardDataset
from slotsweep.data.remote import local_split


def test_file_uri_split_is_cached_verified_and_read(dsprites16, tmp_path):
    uri = (dsprites16 / "train").resolve().as_uri()  # file:///...: the stand-in for s3://
    cache = tmp_path / "cache"
    local = local_split(uri, cache=cache)
    assert local.parent == cache
    remote_ds, cached_ds = ShardDataset(dsprites16 / "train"), ShardDataset(local)
    assert len(cached_ds) == len(remote_ds) == 64
    np.testing.assert_array_equal(cached_ds[5]["image"], remote_ds[5]["image"])

    # A corrupted cache entry is detected and fetched again.
    shard = sorted(local.glob("shard-*.arrow"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    again = local_split(uri, cache=cache)
    assert again == local
    assert shard.read_bytes() == (dsprites16 / "train" / shard.name).read_bytes()


def test_missing_remote_split_names_the_uri(tmp_path):
    uri = (tmp_path / "absent").as_uri()
    with pytest.raises(ShardError, match="absent: no readable manifest.json"):
        local_split(uri, cache=tmp_path / "cache")


def test_local_paths_pass_through(tmp_path):
    assert local_split(tmp_path) == tmp_path
