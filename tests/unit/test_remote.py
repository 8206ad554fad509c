"""Shards on storage reached through pyarrow's filesystem API, cached locally. Here the
storage is a `file://` URI (the S3 endpoint's turn is tests/e2e/test_remote_shards.py)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import slotsweep.data.remote as remote
from slotsweep.data.format import ShardError
from slotsweep.data.reader import ShardDataset
from slotsweep.data.remote import VERIFIED, local_split
from slotsweep.files import sha256_file, stale_temporaries


@pytest.fixture
def split(dsprites16, tmp_path):
    """A copy of the 64-row training split (3 shards) that a test may damage."""
    copy = tmp_path / "store" / "train"
    shutil.copytree(dsprites16 / "train", copy)
    return copy


@pytest.fixture
def hashes(monkeypatch):
    """The files the cache hashes, in order (sha256_file itself still runs)."""
    seen = []

    def counted(path):
        seen.append(os.path.basename(path))
        return sha256_file(path)

    monkeypatch.setattr(remote, "sha256_file", counted)
    return seen


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


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
    flip_a_byte(shard)
    again = local_split(uri, cache=cache)
    assert again == local
    assert shard.read_bytes() == (dsprites16 / "train" / shard.name).read_bytes()


def test_an_unchanged_cached_shard_costs_a_stat_not_a_hash(split, tmp_path, hashes):
    cache = tmp_path / "cache"
    local = local_split(split.as_uri(), cache=cache)
    shards = sorted(p.name for p in split.glob("shard-*.arrow"))
    records = json.loads((local / VERIFIED).read_text())
    assert sorted(records) == shards and len(shards) == 3
    inodes = {name: (local / name).stat().st_ino for name in shards}

    assert local_split(split.as_uri(), cache=cache) == local
    assert hashes == []  # verified when downloaded; unchanged since
    assert {name: (local / name).stat().st_ino for name in shards} == inodes  # not fetched


def test_a_touched_shard_is_hashed_again_and_kept(split, tmp_path, hashes):
    cache = tmp_path / "cache"
    local = local_split(split.as_uri(), cache=cache)
    touched = local / "shard-00001.arrow"
    inode = touched.stat().st_ino
    os.utime(touched, ns=(1, 1))  # same bytes, another stat

    local_split(split.as_uri(), cache=cache)
    assert hashes == ["shard-00001.arrow"]
    assert touched.stat().st_ino == inode  # the bytes matched: kept, not fetched again
    local_split(split.as_uri(), cache=cache)
    assert hashes == ["shard-00001.arrow"]  # its new stat was recorded


def test_a_changed_cached_shard_is_fetched_again(split, tmp_path, hashes):
    cache = tmp_path / "cache"
    local = local_split(split.as_uri(), cache=cache)
    changed = local / "shard-00002.arrow"
    flip_a_byte(changed)  # same size, other bytes

    local_split(split.as_uri(), cache=cache)
    assert hashes == ["shard-00002.arrow"]
    assert changed.read_bytes() == (split / changed.name).read_bytes()
    assert ShardDataset(local, verify_checksums=True)[63]["id"] == 63


def test_a_remote_shard_unlike_its_manifest_is_refused_and_not_cached(split, tmp_path):
    cache = tmp_path / "cache"
    flip_a_byte(split / "shard-00001.arrow")
    with pytest.raises(ShardError) as err:
        local_split(split.as_uri(), cache=cache)
    message = str(err.value)
    assert message.startswith(f"{split.as_uri()}/shard-00001.arrow: its bytes differ from")
    assert "nothing was cached" in message
    (local,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in local.glob("shard-*")) == ["shard-00000.arrow"]
    assert stale_temporaries(local) == []
    assert sorted(json.loads((local / VERIFIED).read_text())) == ["shard-00000.arrow"]


def test_a_missing_remote_shard_names_its_uri_and_keeps_the_others(split, tmp_path):
    cache = tmp_path / "cache"
    (split / "shard-00002.arrow").unlink()
    with pytest.raises(ShardError, match="shard-00002.arrow: no such file; check the URI"
                       ) as err:
        local_split(split.as_uri(), cache=cache)
    assert str(err.value).startswith(f"{split.as_uri()}/shard-00002.arrow")
    (local,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(json.loads((local / VERIFIED).read_text())) == [
        "shard-00000.arrow", "shard-00001.arrow"]


def test_a_bad_remote_manifest_names_its_uri_and_is_not_kept(split, tmp_path):
    cache = tmp_path / "cache"
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["num_rows"] += 1
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="num_rows") as err:
        local_split(split.as_uri(), cache=cache)
    assert str(err.value).startswith(f"{split.as_uri()}/manifest.json: ")
    (local,) = [p for p in cache.iterdir() if p.is_dir()]
    assert list(local.iterdir()) == []


def test_missing_remote_split_names_the_uri(tmp_path):
    uri = (tmp_path / "absent").as_uri()
    with pytest.raises(ShardError, match="absent/manifest.json: no such file; check the URI"):
        local_split(uri, cache=tmp_path / "cache")


def test_an_unknown_scheme_names_the_uri(tmp_path):
    with pytest.raises(ShardError, match="nosuch://bucket/split: cannot open this storage"
                       ) as err:
        local_split("nosuch://bucket/split?secret_key=hidden", cache=tmp_path / "cache")
    assert "hidden" not in str(err.value)  # query options may hold credentials


def test_local_paths_pass_through(tmp_path):
    assert local_split(tmp_path) == tmp_path


def test_cache_benchmark_smoke():
    from tests.support.benchmarks import smoke

    table = smoke("remote_cache.py")
    assert "| warm open, before: re-hash every shard (baseline) |" in table
    assert "| warm open, now: stat + verified.json |" in table
