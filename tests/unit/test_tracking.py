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
