"""Tune's experiment-state uploads to a local storage (real pyarrow filesystem, no Ray
cluster): each file is replaced atomically, and a file unchanged since this process last
copied it is not copied again (Tune re-uploads the whole folder every second)."""

from __future__ import annotations

import os

from pyarrow import fs as pafs
from ray.train._internal import storage as ray_storage

from slotsweep.sweep.storage import atomic_local_uploads


def test_only_changed_or_missing_files_are_copied_again(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_storage, "_upload_to_fs_path", ray_storage._upload_to_fs_path)
    atomic_local_uploads()
    upload = ray_storage._upload_to_fs_path
    staging, target = tmp_path / "staging", tmp_path / "storage" / "tune-000"
    (staging / "trial_a").mkdir(parents=True)
    files = {"experiment_state.json": "{}", "trial_a/result.json": '{"step": 1}\n',
             "trial_a/params.json": '{"lr": 0.1}', "trial_a/progress.csv": "step\n1\n",
             "skipped.tmp": "x"}
    for rel, text in files.items():
        (staging / rel).write_text(text)
        os.utime(staging / rel, ns=(1, 1))  # settled long ago (a fresh file is recopied)

    def inodes() -> dict[str, int]:
        return {p.relative_to(target).as_posix(): p.stat().st_ino
                for p in target.rglob("*") if p.is_file()}

    upload(str(staging), pafs.LocalFileSystem(), str(target), exclude=["*.tmp"])
    first = inodes()
    assert sorted(first) == ["experiment_state.json", "trial_a/params.json",
                             "trial_a/progress.csv", "trial_a/result.json"]
    with (staging / "trial_a/result.json").open("a") as f:  # a new result appended
        f.write('{"step": 2}\n')
    (staging / "experiment_state.json").write_text("[]")  # same size, rewritten
    os.utime(staging / "experiment_state.json", ns=(1, 1))
    (target / "trial_a/params.json").unlink()  # gone from the storage: copied again
    (staging / "trial_b").mkdir()
    (staging / "trial_b/params.json").write_text('{"lr": 0.2}')
    for rel in ("trial_a/result.json", "trial_b/params.json"):
        os.utime(staging / rel, ns=(2, 2))

    upload(str(staging), pafs.LocalFileSystem(), str(target), exclude=["*.tmp"])
    second = inodes()
    assert (target / "trial_a/result.json").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert (target / "experiment_state.json").read_text() == "[]"
    assert (target / "trial_a/params.json").read_text() == '{"lr": 0.1}'
    assert (target / "trial_b/params.json").read_text() == '{"lr": 0.2}'
    # A copy replaces its target (a new inode); the unchanged file was left alone.
    replaced = {rel for rel in first if second[rel] != first[rel]}
    assert replaced - {"trial_a/params.json"} == {"experiment_state.json",
                                                  "trial_a/result.json"}

    upload(str(staging), pafs.LocalFileSystem(), str(target), exclude=["*.tmp"])
    assert inodes() == second  # nothing changed: nothing copied
    assert not list(target.rglob("*.tmp"))


def test_a_file_written_just_before_its_copy_is_copied_again(tmp_path, monkeypatch):
    """Timestamps have a clock tick's grain: a same-size rewrite within that tick would
    keep the signature, so a file that had not settled is never trusted to be unchanged."""
    monkeypatch.setattr(ray_storage, "_upload_to_fs_path", ray_storage._upload_to_fs_path)
    atomic_local_uploads()
    upload = ray_storage._upload_to_fs_path
    staging, target = tmp_path / "staging", tmp_path / "storage"
    staging.mkdir()
    (staging / "experiment_state.json").write_text('{"a": 1}')  # just written
    upload(str(staging), pafs.LocalFileSystem(), str(target))
    first = (target / "experiment_state.json").stat().st_ino
    upload(str(staging), pafs.LocalFileSystem(), str(target))
    second = (target / "experiment_state.json").stat().st_ino
    assert second != first  # copied again: it had not settled at the first copy
