"""MLflow reads that page through every run (a real sqlite store, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from slotsweep.reporting.trials import load_trials
from slotsweep.sweep import tracking
from slotsweep.sweep.tracking import SweepTracker, search_all


def test_searches_page_through_every_run(tmp_path, monkeypatch):
    """With pages of 7, 23 trial runs come back whole from every search that the sweep
    (resume, the ledger's checks) and the report make: they used to stop at the first
    page (1,000 runs for the sweep, 5,000 for the report)."""
    monkeypatch.setattr(tracking, "PAGE", 7)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "paged", "paged", "paged/run-001",
                           artifact_root=tmp_path / "artifacts")
    made = {tracker.trial_run(f"t{i:03d}", name=f"t{i}", params={"i": i}, tags={},
                              config_yaml="{}") for i in range(23)}
    client = MlflowClient(uri)
    assert len(search_all(client, [tracker.experiment_id])) == 24  # + the sweep's run
    fresh = SweepTracker(uri, "paged", "paged", "paged/run-001")  # a resumed driver
    assert {r.info.run_id for r in fresh.trial_runs()} == made
    assert fresh.trial_run("t022", name="t22", params={}, tags={}, config_yaml="{}") in made
    trials = load_trials(client, tracker.experiment_id, "paged/run-001")
    assert sorted(t.run_id for t in trials) == sorted(made)


def test_a_restored_callback_takes_the_running_drivers_state():
    """Tuner.restore unpickles the callback the first driver pickled; while a driver
    runs (`TrackingCallback.current`), the restored one tracks with its paths."""
    import pickle

    from slotsweep.sweep.callback import TrackingCallback

    first = TrackingCallback("sweep", "first tracker", Path("/first/ledger.jsonl"), "data")
    pickled = pickle.dumps(first)
    assert pickle.loads(pickled).ledger == Path("/first/ledger.jsonl")  # no driver: as it was
    now = TrackingCallback("sweep", "this tracker", Path("/now/ledger.jsonl"), "data")
    TrackingCallback.current = now
    try:
        restored = pickle.loads(pickled)
    finally:
        TrackingCallback.current = None
    assert (restored.ledger, restored.tracker) == (now.ledger, "this tracker")


def test_the_old_names_in_pickles_resolve():
    """Storages written before the package layout name these (tests/e2e/test_old_storage)."""
    import importlib
    import sys

    import slotsweep.sweep
    from slotsweep.sweep import legacy
    from slotsweep.sweep.callback import TrackingCallback
    from slotsweep.sweep.space import OptunaSpace

    assert slotsweep.sweep.OptunaSpace is OptunaSpace
    assert slotsweep.sweep.TrackingCallback is TrackingCallback
    with pytest.raises(AttributeError):
        slotsweep.sweep.NoSuchName  # noqa: B018
    legacy.register_old_modules()
    for old, new in legacy.OLD_MODULES.items():
        assert sys.modules[old] is importlib.import_module(new)


def test_results_are_queued_and_every_step_is_stored_once(tmp_path):
    """log_result queues (a trial's report waits for the driver) but stores a run's
    previous result before queueing the next, and ending the trial waits for the last:
    then MLflow holds every step of every metric once, and a resumed driver logs none
    of them again. A result MLflow refuses fails the trial's end instead of vanishing.
    The tracker pickles (Tune saves it) with results in flight, and Tune's snapshot of
    the experiment (the callback's get_state) waits until every queued result is in."""
    import pickle

    from mlflow.exceptions import MlflowException

    from slotsweep.sweep.callback import TrackingCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "queued", "queued", "queued/run-001",
                           artifact_root=tmp_path / "artifacts")
    run = tracker.trial_run("t0", name="t0", params={}, tags={}, config_yaml="{}")
    client = MlflowClient(uri)
    for step in (100, 200, 300):
        assert tracker.log_result(run, {"step": step, "val/mbo": step / 1000}, step=step,
                                  timestamp_ms=step)
        stored = {m.step for m in client.get_metric_history(run, "val/mbo")}
        assert stored >= {s for s in (100, 200) if s < step}  # the previous one, at least
    assert pickle.loads(pickle.dumps(tracker)).uri == uri
    TrackingCallback("sweep", tracker, tmp_path / "ledger", "data").get_state()
    assert sorted(m.step for m in client.get_metric_history(run, "val/mbo")) == [100, 200, 300]
    assert not tracker.log_result(run, {"step": 200}, step=200, timestamp_ms=1)
    tracker.end_trial(run, outcome="finished")
    for key in ("step", "val/mbo"):
        assert sorted(m.step for m in client.get_metric_history(run, key)) == [100, 200, 300]
    resumed = SweepTracker(uri, "queued", "queued", "queued/run-001")
    assert not resumed.log_result(run, {"step": 300}, step=300, timestamp_ms=2)

    other = tracker.trial_run("t1", name="t1", params={}, tags={}, config_yaml="{}")
    client.delete_run(other)  # MLflow refuses metrics for a deleted run
    assert tracker.log_result(other, {"step": 100}, step=100, timestamp_ms=3)
    with pytest.raises(MlflowException, match="active"):
        tracker.end_trial(other, outcome="finished")


def test_ending_a_trial_sets_status_and_end_time_and_leaves_others_logging(tmp_path):
    """A trial's run ends with its status and end time (what set_terminated would set)
    and its queued metrics stored; another trial's queued results still arrive after it."""
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "ends", "ends", "ends/run-001", artifact_root=tmp_path / "a")
    client = MlflowClient(uri)
    runs = {t: tracker.trial_run(t, name=t, params={}, tags={}, config_yaml="{}")
            for t in ("done", "stopped", "cut", "goes_on")}
    for run in runs.values():
        assert tracker.log_result(run, {"step": 2, "val/mbo": 0.5}, step=2, timestamp_ms=1)
    before = int(time.time() * 1000)
    tracker.end_trial(runs["done"], outcome="finished")
    tracker.end_trial(runs["stopped"], outcome="stopped early")
    tracker.interrupt_trial(runs["cut"])
    after = int(time.time() * 1000)
    assert tracker.log_result(runs["goes_on"], {"step": 4, "val/mbo": 0.6}, step=4,
                              timestamp_ms=2)
    tracker.wait()
    for trial, status in (("done", "FINISHED"), ("stopped", "KILLED"), ("cut", "KILLED")):
        info = client.get_run(runs[trial]).info
        assert info.status == status, trial
        assert info.end_time is not None and before <= info.end_time <= after, trial
        assert [m.step for m in client.get_metric_history(runs[trial], "val/mbo")] == [2]
    assert client.get_run(runs["goes_on"]).info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(runs["goes_on"], "val/mbo")] == [2, 4]
