"""The sweep callback finds a trial's MLflow run once per driver (a real sqlite store, no
Ray): every result and checkpoint of a trial asks for its run while the trial waits."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from slotsweep.sweep.callback import TrackingCallback
from slotsweep.sweep.ledger import Ledger
from slotsweep.sweep.load import load_sweep
from slotsweep.sweep.tracking import SweepTracker
from tests.support.sweeps import sweep_file


def _callback(tmp_path, uri: str) -> TrackingCallback:
    sweep = load_sweep(str(sweep_file(tmp_path, tmp_path / "data")))
    tracker = SweepTracker(uri, "runs", "runs", "runs/run-001",
                           artifact_root=tmp_path / "artifacts")
    return TrackingCallback(sweep, tracker, Ledger(tmp_path / "run-001"), "data")


def test_a_trials_run_is_found_once_and_again_after_a_restore(tmp_path, monkeypatch):
    """Five asks for one trial's run build its config once and make one run; a pickled
    callback (Tune snapshots it) forgets the run ids, and a restored driver's callback
    finds the same run by its tag instead of making a second one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback = _callback(tmp_path, uri)
    built = []
    build = callback.sweep.trial_config
    monkeypatch.setattr(callback.sweep, "trial_config",
                        lambda params, **kw: built.append(params) or build(params, **kw))
    trial = SimpleNamespace(trial_id="t0", config={"loss.type": "none", "train.lr": 1e-3})

    run = callback._run(trial)
    assert all(callback._run(trial) == run for _ in range(4))
    assert len(built) == 1
    monkeypatch.undo()  # the counting wrapper does not pickle

    restored = pickle.loads(pickle.dumps(callback))
    assert restored._run_ids == {}
    resumed = _callback(tmp_path, uri)  # a new driver: a new tracker, nothing cached
    assert resumed._run(trial) == run
    other = SimpleNamespace(trial_id="t1", config={"loss.type": "none", "train.lr": 1e-2})
    assert resumed._run(other) != run
    client = MlflowClient(uri)
    runs = client.search_runs([callback.tracker.experiment_id],
                              "tags.`slotsweep.role` = 'trial'")
    assert sorted(r.data.tags["slotsweep.trial_id"] for r in runs) == ["t0", "t1"]
