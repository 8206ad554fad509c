"""A sweep storage written by slotsweep before the package layout of December 2026
(commit 97db71b) resumes with the code of today.

data/storage-97db71b/ holds what that commit's code wrote (its make.py, its README): a
4-trial Optuna sweep whose driver was SIGKILLed after two trials had ended and the third
had checkpointed twice and been snapshotted by Tune. Its Tune state pickles our classes
under their old module paths (`slotsweep.sweep.OptunaSpace`, `slotsweep.sweep_spec.Sweep`,
`slotsweep.tracking.SweepTracker`, ...), and every path inside it is absolute: Tune's
searcher state keeps the storage path it was made with, so the storage is resumed where
it was written, as a user resumes a sweep, at MADE_AT (a folder this test owns).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from slotsweep.sweep.trial import RESENT
from tests.support.sweeps import check_consistent, ledger, mlflow_runs, params_sequence, run

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "storage-97db71b"
MADE_AT = Path("/tmp/slotsweep-97db71b")


@pytest.fixture
def old_sweep():
    """The old sweep file, its shards and its storage, back where they were written."""
    with FileLock(f"{MADE_AT}.lock"):
        shutil.rmtree(MADE_AT, ignore_errors=True)
        shutil.copytree(DATA / "data", MADE_AT / "data")
        shutil.copytree(DATA / "storage", MADE_AT / "old" / "storage")
        shutil.copy(DATA / "tiny.yaml", MADE_AT / "old" / "tiny.yaml")
        try:
            yield MADE_AT / "old" / "tiny.yaml"
        finally:
            shutil.rmtree(MADE_AT, ignore_errors=True)


def test_an_old_storage_resumes_where_it_stopped(old_sweep):
    storage = old_sweep.parent / "storage"
    before = {e["trial_id"]: e for e in ledger(storage)}
    assert len(before) == 2  # as made: two trials ended, the third was cut short
    _, _, runs_before = mlflow_runs(storage)
    cut_short = [r for r in runs_before if r.info.status == "RUNNING"]
    assert len(cut_short) == 1

    done = run(old_sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 trials" in done.stdout and "not finished" not in done.stdout

    # Tune's experiment was restored, not started over; nothing ran or was logged twice.
    instance = storage / "tiny" / "run-001"
    assert [p.name for p in instance.glob("tune-*") if p.is_dir()] == ["tune-000"]
    check_consistent(storage, 4)
    after = {e["trial_id"]: e for e in ledger(storage)}
    for trial_id, entry in before.items():
        assert after[trial_id] == entry
    # The restored Optuna searcher went on with its seeded sequence.
    reference = json.loads((DATA / "uninterrupted.json").read_text())["trials"]
    assert params_sequence(storage) == params_sequence(reference)

    # The cut-short trial went on in its own MLflow run, from its checkpoint: every
    # evaluation once, the ones before the kill included, none trained again.
    client, _, runs = mlflow_runs(storage)
    resumed = next(r for r in runs if r.info.run_id == cut_short[0].info.run_id)
    assert resumed.info.status == "FINISHED" and "slotsweep.resumed_at" in resumed.data.tags
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val/fg_ari")]
    assert steps == list(range(4, 25, 4))
    trial = resumed.data.tags["slotsweep.trial_id"]
    reports = [json.loads(line) for path in instance.glob(f"tune-000/*{trial}*/result.json")
               for line in path.read_text().splitlines()]
    # Tune's record ends at step 8; the step-12 checkpoint's result is sent again, marked.
    assert [r["step"] for r in reports if "step" in r] == steps
    assert [r["step"] for r in reports if r.get(RESENT)] == [12]
    same = next(e for e in reference if e["params"] == after[trial]["params"])
    assert after[trial]["metrics"]["val/fg_ari"] == pytest.approx(
        same["metrics"]["val/fg_ari"], abs=1e-6)  # the uninterrupted trajectory
