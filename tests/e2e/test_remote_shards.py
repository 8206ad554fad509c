"""Shards read from `s3://` through the node-local verified cache, against a real S3
endpoint (`moto_server`, a process of its own): the rows, one download per node, the
cache's reuse, and every bad remote input a ShardError naming the URI."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest

from slotsweep.data.format import ShardError
from slotsweep.data.reader import ShardDataset
from slotsweep.data.remote import VERIFIED, local_split
from slotsweep.data.writer import ShardWriter
from slotsweep.files import sha256_file, stale_temporaries
from tests.support.servers import iam_credentials, make_bucket, s3_server
from tests.support.shard_cache import open_at_once
from tests.support.sweeps import end_session

pytestmark = pytest.mark.slow

BUCKET = "slotsweep-shards"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def s3(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload(env: dict[str, str], split: Path, prefix: str, *, skip: str = "",
           damage: str = "") -> str:
    """Put every file of `split` under s3://BUCKET/prefix (but `skip`; `damage` with one
    byte flipped, same size); the split's URI."""
    client = s3(env)
    for file in sorted(split.iterdir()):
        if file.name == skip:
            continue
        data = bytearray(file.read_bytes())
        if file.name == damage:
            data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{file.name}", Body=bytes(data))
    return f"s3://{BUCKET}/{prefix}"


def gets(log: Path, prefix: str) -> Counter[str]:
    """The GET requests moto_server logged for files under `prefix`, by file name."""
    pattern = re.compile(rf'"GET /{BUCKET}/{re.escape(prefix)}/([^ ?]+)[ ?]')
    return Counter(m.group(1) for line in _ANSI.sub("", log.read_text()).splitlines()
                   if (m := pattern.search(line)))


def moto_pid(env: dict[str, str]) -> int:
    """PID of the moto_server this process started for `env` (to end it mid-sweep)."""
    port = env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        moto = any(arg.endswith(b"moto_server") for arg in cmd)  # [python, .../moto_server]
        if parent == os.getpid() and moto and port.encode() in cmd:
            return int(proc.name)
    raise AssertionError(f"no moto_server child on port {port}")


def use(monkeypatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def assert_same_rows(local: Path, original: Path) -> None:
    cached, expected = ShardDataset(local), ShardDataset(original)
    assert len(cached) == len(expected) > 0
    rows = np.arange(len(expected))
    for column, values in expected.get_batch(rows).items():
        np.testing.assert_array_equal(cached.get_batch(rows)[column], values)


def assert_nothing_partial(local: Path) -> None:
    """Every shard file in the cache is verified; no temporary is left."""
    assert stale_temporaries(local) == []
    records = json.loads((local / VERIFIED).read_text()) if (local / VERIFIED).exists() else {}
    manifest = json.loads((local / "manifest.json").read_text())
    sums = {e["file"]: e["sha256"] for e in manifest["shards"]}
    assert sorted(p.name for p in local.glob("shard-*")) == sorted(records)
    for name in records:
        assert sha256_file(local / name) == sums[name]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with s3_server(log) as env:
        make_bucket(env, BUCKET)
        yield env, log


def test_s3_split_reads_the_rows_of_the_local_one(server, dsprites16, tmp_path, monkeypatch):
    env, log = server
    use(monkeypatch, env)  # pyarrow reads AWS_ENDPOINT_URL and the credentials
    uri = upload(env, dsprites16 / "train", "rows/train")
    local = local_split(uri, cache=tmp_path)
    assert_same_rows(local, dsprites16 / "train")
    assert_nothing_partial(local)
    assert json.loads((local / "source.json").read_text()) == {"uri": uri}


def test_one_download_per_node_then_the_cache(server, dsprites16, tmp_path, monkeypatch):
    env, log = server
    use(monkeypatch, env)
    uri = upload(env, dsprites16 / "train", "node/train")
    shards = sorted(p.name for p in (dsprites16 / "train").glob("shard-*.arrow"))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=open_at_once, args=(uri, str(tmp_path), barrier, results))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    assert [proc.exitcode for proc in procs] == [0] * 4
    paths = {results.get(timeout=10) for _ in procs}
    assert len(paths) == 1
    local = Path(paths.pop())
    # Each process read the manifest; each shard came down once (shards < one 4 MiB GET).
    assert gets(log, "node/train") == Counter({"manifest.json": 4} | dict.fromkeys(shards, 1))

    assert local_split(uri, cache=tmp_path) == local  # cached: no shard fetched again
    assert gets(log, "node/train") == Counter({"manifest.json": 5} | dict.fromkeys(shards, 1))

    changed = local / shards[1]
    data = bytearray(changed.read_bytes())
    data[100] ^= 0xFF
    changed.write_bytes(bytes(data))
    local_split(uri, cache=tmp_path)
    assert gets(log, "node/train") == Counter(
        {"manifest.json": 6, shards[1]: 2} | dict.fromkeys(shards[::2], 1))
    assert_same_rows(local, dsprites16 / "train")


def test_a_missing_bucket_or_key_names_the_uri(server, dsprites16, tmp_path, monkeypatch):
    env, _ = server
    use(monkeypatch, env)
    with pytest.raises(ShardError) as err:
        local_split("s3://no-such-bucket/train", cache=tmp_path)
    assert str(err.value).startswith("s3://no-such-bucket/train/manifest.json: bucket "
                                     "'no-such-bucket' does not exist")
    with pytest.raises(ShardError) as err:
        local_split(f"s3://{BUCKET}/absent/train", cache=tmp_path)
    assert str(err.value).startswith(f"s3://{BUCKET}/absent/train/manifest.json: no such "
                                     "file; check the URI, or upload the whole split")

    uri = upload(env, dsprites16 / "train", "holey/train", skip="shard-00001.arrow")
    with pytest.raises(ShardError) as err:
        local_split(uri, cache=tmp_path)
    assert str(err.value).startswith(f"{uri}/shard-00001.arrow: no such file")
    (local,) = [p for p in tmp_path.iterdir() if p.is_dir() and any(p.iterdir())]
    assert_nothing_partial(local)
    assert sorted(p.name for p in local.glob("shard-*")) == ["shard-00000.arrow"]


def test_a_shard_unlike_its_manifest_is_refused_and_not_kept(server, dsprites16, tmp_path,
                                                            monkeypatch):
    env, _ = server
    use(monkeypatch, env)
    uri = upload(env, dsprites16 / "train", "damaged/train", damage="shard-00002.arrow")
    with pytest.raises(ShardError) as err:
        local_split(uri, cache=tmp_path)
    assert str(err.value).startswith(f"{uri}/shard-00002.arrow: its bytes differ from the "
                                     "manifest's sha256")
    (local,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert_nothing_partial(local)
    assert not (local / "shard-00002.arrow").exists()

    upload(env, dsprites16 / "train", "damaged/train")  # repaired at the source
    assert_same_rows(local_split(uri, cache=tmp_path), dsprites16 / "train")


def test_wrong_credentials_are_named(dsprites16, tmp_path, monkeypatch):
    """moto checks signatures only with IAM auth on: the first 3 requests (making a user,
    its key and its policy) go unchecked, every later one needs that key."""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")
    with s3_server(tmp_path / "moto.log") as env:
        env = iam_credentials(env, "reader")
        make_bucket(env, BUCKET)
        uri = upload(env, dsprites16 / "val", "auth/val")

        for key_id, secret in ((env["AWS_ACCESS_KEY_ID"], "wrong"), ("AKIAWRONGKEY", "wrong")):
            use(monkeypatch, env | {"AWS_ACCESS_KEY_ID": key_id,
                                    "AWS_SECRET_ACCESS_KEY": secret})
            with pytest.raises(ShardError) as err:
                local_split(uri, cache=tmp_path / "cache")
            assert str(err.value).startswith(f"{uri}/manifest.json: access denied")
            assert "check the credentials" in str(err.value)
            assert not list((tmp_path / "cache").glob("*/*"))  # nothing cached
        use(monkeypatch, env)
        assert_same_rows(local_split(uri, cache=tmp_path / "cache"), dsprites16 / "val")


@pytest.fixture(scope="module")
def big_split(tmp_path_factory):
    """12 shards of 4 MiB: long enough a download to end the server during it."""
    root = tmp_path_factory.mktemp("big") / "train"
    rng = np.random.default_rng(0)
    with ShardWriter(root, rows_per_shard=64) as writer:
        for start in range(0, 768, 64):
            writer.write({"id": np.arange(start, start + 64, dtype=np.int64),
                          "features": rng.standard_normal((64, 64, 512)).astype(np.float16)})
    return root


def _wait_for_a_verified_shard(local: Path, done: threading.Event) -> None:
    while not done.is_set():
        records = local / VERIFIED
        if records.exists() and json.loads(records.read_text()):
            return
        time.sleep(0.005)
    raise AssertionError("the download ended before the server could be ended during it")


def test_endpoint_gone_mid_download_keeps_what_finished_and_rerun_resumes(
        big_split, tmp_path, monkeypatch, caplog):
    first, second = tmp_path / "moto1.log", tmp_path / "moto2.log"
    with s3_server(first) as env:
        use(monkeypatch, env)
        make_bucket(env, BUCKET)
        uri = upload(env, big_split, "big/train")
        local = tmp_path / "cache"
        outcome: list[BaseException | Path] = []
        done = threading.Event()

        def open_split() -> None:
            try:
                outcome.append(local_split(uri, cache=local))
            except BaseException as exc:
                outcome.append(exc)
            done.set()

        thread = threading.Thread(target=open_split)
        thread.start()
        (cache,) = _until(lambda: [p for p in local.glob("*") if p.is_dir()])
        _wait_for_a_verified_shard(cache, done)
        end_session(moto_pid(env))
        thread.join(timeout=300)
    (error,) = outcome
    assert isinstance(error, ShardError), error
    assert re.match(rf"{uri}/shard-\d{{5}}\.arrow: cannot reach the storage at "
                    rf"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']}", str(error)), error
    assert_nothing_partial(cache)
    kept = set(json.loads((cache / VERIFIED).read_text()))
    assert 1 <= len(kept) < 12

    with pytest.raises(ShardError, match=f"^{uri}/manifest.json: cannot reach the storage"):
        local_split(uri, cache=local)  # before open: gone, and no whole copy to fall back on

    with s3_server(second) as env:  # the store is back (a new endpoint, the same split)
        use(monkeypatch, env)
        make_bucket(env, BUCKET)
        upload(env, big_split, "big/train")
        assert local_split(uri, cache=local) == cache
        fetched = gets(second, "big/train")
        shards = {p.name for p in big_split.glob("shard-*.arrow")}
        assert set(fetched) - {"manifest.json"} == shards - kept  # only what was missing
        assert_same_rows(cache, big_split)
        end_session(moto_pid(env))
        with caplog.at_level("WARNING", logger="slotsweep.data.remote"):
            assert local_split(uri, cache=local) == cache  # gone again: the whole copy serves
        assert "cannot reach the storage" in caplog.text and str(cache) in caplog.text


def _until(found, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)
    return value
