"""Bad input fails early and clearly, and touches nothing already computed.

Every case runs the real command line (`slotsweep.run` / `slotsweep.train`) against a
storage directory (or work directory) that already holds finished results, and checks:
a non-zero exit, a one-paragraph error (no traceback) naming the file and the key,
shard or row, and the directory's hash unchanged. The malformed sweep files and trial
configs are files in tests/bad_inputs/ whose first line says what the error must match;
broken shard sets and checkpoints are made here from good ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from slotsweep.data.format import MANIFEST
from slotsweep.data.writer import ShardWriter
from tests.support.sweeps import run, sweep_file

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"
REPO = Path(__file__).resolve().parents[2]


def tree_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes (and every directory's name)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path}: first line must be '# expect: REGEX'"
    return first.removeprefix("# expect: ")


def check_refused(proc: subprocess.CompletedProcess, pattern: str, names: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    message = err.splitlines()[-1]  # Ray/MLflow may log above; ours is the last line
    assert message.startswith("error: "), err[-2000:]
    assert names in message, (names, message)
    assert re.search(pattern, message), (pattern, message)


@pytest.fixture(scope="module")
def storage(tmp_path_factory, dsprites16):
    """A storage directory holding a finished sweep: what bad input must not touch."""
    root = tmp_path_factory.mktemp("existing")
    assert run(sweep_file(root, dsprites16, search={"num_samples": 1})).returncode == 0
    return root / "storage"


def run_sweep_cli(path: Path, storage: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slotsweep.run", str(path), "--storage", str(storage),
           "--address", "local", "--num-cpus", "2", "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("path", sorted((CORPUS / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_malformed_sweep_file(path, storage, tmp_path):
    before = tree_hash(storage)
    proc = run_sweep_cli(path, storage, tmp_path)
    check_refused(proc, expected(path), path.name)
    assert tree_hash(storage) == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dsprites16):
    """A work directory with a finished training run in it (checkpoints and all)."""
    from slotsweep.config import build_config
    from slotsweep.training.loop import fit
    from tests.conftest import TINY_MODEL

    workdir = tmp_path_factory.mktemp("finished-run")
    config = build_config({
        "model": dict(TINY_MODEL),
        "data": {"train": str(dsprites16 / "train"), "val": str(dsprites16 / "val")},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "device": "cpu"},
        "eval": {"every": 4, "max_images": 16},
    })
    fit(config, workdir=workdir, log=None)
    (workdir / "config.yaml").write_text(config.to_yaml())
    return workdir


@pytest.mark.parametrize("path", sorted((CORPUS / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_malformed_trial_config(path, finished_run):
    before = tree_hash(finished_run)
    proc = subprocess.run([sys.executable, "-m", "slotsweep.train", str(path), "--workdir",
                           str(finished_run)], capture_output=True, text=True, timeout=300)
    check_refused(proc, expected(path), path.name)
    assert tree_hash(finished_run) == before


# ------------------------------------------------------------------- broken shard sets


def _features(path: Path, *, dim: int = 8, rows: int = 32) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(path, rows_per_shard=16) as writer:
        writer.write({"id": np.arange(rows, dtype=np.int64),
                          "features": rng.standard_normal((rows, 16, dim)).astype(np.float16),
                      "segmentation": rng.integers(0, 3, (rows, 4, 4)).astype(np.int16)})
    return path


def _first_shard(split: Path) -> Path:
    return split / json.loads((split / MANIFEST).read_text())["shards"][0]["file"]


def truncated(split: Path) -> str:
    shard = _first_shard(split)
    shard.write_bytes(shard.read_bytes()[:-100])
    return f"shard {shard.name} has"


def wrong_checksum(split: Path) -> str:
    shard = _first_shard(split)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    shard.write_bytes(bytes(data))
    return f"shard {shard.name} fails its sha256 check"


def missing_manifest(split: Path) -> str:
    (split / MANIFEST).unlink()
    return "no manifest"


def missing_shard(split: Path) -> str:
    shard = _first_shard(split)
    shard.unlink()
    return f"shard {shard.name} is missing"


def wrong_feature_size(split: Path) -> str:
    shutil.rmtree(split)
    _features(split, dim=6)
    return "features"


def empty_split(split: Path) -> str:
    manifest = json.loads((split / MANIFEST).read_text())  # a manifest that lists no rows
    for entry in manifest["shards"]:
        (split / entry["file"]).unlink()
    manifest.update(shards=[], num_rows=0)
    (split / MANIFEST).write_text(json.dumps(manifest))
    return "empty"


@pytest.mark.parametrize("damage", [truncated, wrong_checksum, missing_manifest, missing_shard,
                                    wrong_feature_size, empty_split], ids=lambda f: f.__name__)
def test_broken_shard_set(damage, storage, tmp_path):
    data = tmp_path / "data"
    _features(data / "train")
    _features(data / "val")
    says = damage(data / "train")
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump({
        "config": {
            "model": {"encoder": "features", "decoder": "mlp_patch", "feature_dim": 8,
                      "num_patches": 16, "slot_size": 8, "mlp_hidden_size": 8, "num_slots": 2,
                      "decoder_hidden": [16]},
            "data": {"train": str(data / "train"), "val": str(data / "val")},
            "train": {"steps": 4, "batch_size": 8, "device": "cpu"},
        },
        "search_space": {"train.lr": {"loguniform": [1e-4, 1e-3]}},
        "search": {"num_samples": 1},
    }))
    before = tree_hash(storage)
    proc = run_sweep_cli(path, storage, tmp_path)
    check_refused(proc, re.escape(says), str(data / "train"))
    assert tree_hash(storage) == before
    assert "Ray" not in proc.stderr  # refused before a Ray instance was started


# ------------------------------------------------------------------ corrupt checkpoints


def _damage_checkpoint(workdir: Path, how: str) -> Path:
    last = sorted((workdir / "checkpoints").glob("step-*"))[-1]
    state = last / "state.pt"
    if how == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    elif how == "garbage":
        state.write_bytes(b"\x00not a checkpoint\xff" * 10)
    else:  # a pickle that would run code if loaded without weights_only
        import pickle

        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        state.write_bytes(pickle.dumps({"model": Evil()}))
    return last


@pytest.mark.parametrize("how", ["truncated", "garbage", "pickled code"])
def test_corrupt_checkpoint(how, finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    broken = _damage_checkpoint(workdir, how)
    config = workdir / "config.yaml"
    tree = yaml.safe_load(config.read_text())
    tree["train"]["steps"] = 8  # ask for more steps: it must resume from the broken one
    config.write_text(yaml.safe_dump(tree))
    before = tree_hash(workdir)
    proc = subprocess.run([sys.executable, "-m", "slotsweep.train", str(config), "--workdir",
                           str(workdir)], capture_output=True, text=True, timeout=300)
    check_refused(proc, r"state\.pt", str(broken))
    assert "pwned" not in proc.stdout + proc.stderr  # no code ran
    assert tree_hash(workdir) == before


@pytest.mark.parametrize("args, words", [
    (["coco", "--images", "{tmp}/none", "--annotations", "{tmp}/a.json"],
     "none: no such folder (--images"),
    (["coco", "--images", "{tmp}", "--annotations", "{tmp}/none.json"],
     "none.json: no such file (--annotations"),
    (["features", "--in", "{tmp}/none"], "none"),
    (["multi-dsprites", "--tfrecord", "{tmp}/none.tfrecords"],
     "none.tfrecords: no such file (--tfrecord)"),
])
def test_prepare_checks_its_inputs_before_loading_weights(args, words, tmp_path, capsys):
    """A mistyped path fails at once, naming the path and the flag, before the default
    pretrained encoder is fetched (a 300 MB download where there is a network; a second
    error, about the network, where there is none, as here)."""
    from slotsweep.prepare import main

    args = [a.format(tmp=tmp_path) for a in args]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err, err
    assert "weights" not in err and "huggingface" not in err.lower()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("resources, words", [
    ({"cpu": 1, "gpu": 1}, "resources.gpu: 1.0 GPU per trial, but this Ray cluster has no GPU; "
                           "run it on the CPUs with --gpus-per-trial 0"),
    ({"cpu": 512, "gpu": 0}, "resources.cpu: 512.0 CPUs per trial, but this Ray cluster has"),
])
def test_a_sweep_no_local_node_could_run_is_refused(resources, words, tmp_path, dsprites16):
    """Before any trial is queued forever: the sweep file, the key and the way out (the
    flags it names run a GPU sweep on CPUs in test_paper_sweeps)."""
    path = sweep_file(tmp_path, dsprites16, resources=resources,
                      search={"num_samples": 1, "max_concurrent": 1, "seed": 0})
    done = run(path)
    assert done.returncode == 2 and f"error: {path}: {words}" in done.stderr, done.stderr
    assert not list((tmp_path / "storage").glob("*/run-*/ledger.jsonl"))  # nothing ran


@pytest.mark.parametrize("args", [["dsprites", "--train", "0"], ["dsprites", "--val", "-3"],
                                  ["multi-dsprites", "--tfrecord", "x", "--count", "0"]])
def test_prepare_refuses_empty_splits(args, tmp_path, capsys):
    """Zero scenes used to end in 'no batch was written, so there is no schema'."""
    from slotsweep.prepare import main

    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
