"""A sweep's storage as a local folder or an object-storage prefix (`Location`), and the
ledger on each (the bucket's side runs against a real S3 endpoint in
tests/e2e/test_remote_storage.py)."""

from __future__ import annotations

import json

import pytest

from slotsweep.sweep.ledger import LEDGER, Ledger
from slotsweep.sweep.location import Location
from slotsweep.sweep.trial import trainer_workdir


def test_a_local_location_reads_writes_and_lists(tmp_path):
    root = Location.of(tmp_path / "sweeps") / "tiny"
    assert not root.remote and root.children("run-*") == []
    (root / "run-002" / "tune-000-plan.json").write('{"trials": 3}')
    (root / "run-001").mkdir()
    (root / "notes.txt").write("x")
    assert [c.name for c in root.children("run-*")] == ["run-001", "run-002"]
    assert [c.name for c in root.children("*", dirs=False)] == ["notes.txt"]
    assert json.loads((root / "run-002" / "tune-000-plan.json").read_text()) == {"trials": 3}
    (root / "notes.txt").remove()
    assert not (root / "notes.txt").exists()
    (root / "run-002").remove_tree()
    assert [c.name for c in root.children("run-*")] == ["run-001"]
    with pytest.raises(FileNotFoundError):
        (root / "absent.json").read_bytes()


def test_uris_join_and_split_without_touching_a_store():
    where = Location.of("s3://bucket/sweeps/") / "tiny" / "run-001"
    assert where.remote and str(where) == "s3://bucket/sweeps/tiny/run-001"
    assert where.name == "run-001" and str(where.parent) == "s3://bucket/sweeps/tiny"
    assert not Location.of("file:///tmp/x").remote
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        Location.of("s3://bucket/sweeps?endpoint_override=localhost:9000")
    with pytest.raises(ValueError, match="not a local path"):
        _ = where.path


def test_the_local_ledger_is_the_jsonl_file_older_sweeps_wrote(tmp_path):
    instance = Location.of(tmp_path)
    ledger = Ledger(instance)
    entry = {"trial_id": "a1", "params": {"lr": 0.1}, "outcome": "finished", "metrics": {}}
    ledger.append(entry)
    assert json.loads((tmp_path / LEDGER).read_text()) == entry
    assert ledger.read() == {"a1": entry}
    assert ledger.ended_before("b2", {"lr": 0.1}) == entry  # the same parameters
    assert ledger.ended_before("b2", {"lr": 0.2}) is None


def test_trainer_checkpoints_stay_on_the_node_only_for_object_storage(tmp_path, monkeypatch):
    local = Location.of(tmp_path) / "work" / "t1"
    assert trainer_workdir(local) == tmp_path / "work" / "t1"
    monkeypatch.setenv("SLOTSWEEP_WORK", str(tmp_path / "node"))
    one = trainer_workdir(Location.of("s3://b/sweeps/tiny/run-001/work/t1"))
    other = trainer_workdir(Location.of("s3://b/sweeps/tiny/run-001/work/t2"))
    assert one.parent.parent == tmp_path / "node" and (one.name, other.name) == ("t1", "t2")
    assert one.parent == other.parent  # one folder per sweep instance
