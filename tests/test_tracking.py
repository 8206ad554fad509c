"""MLflow reads that page through every run (a real sqlite store, no Ray)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from slotsweep import tracking
from slotsweep.reporting.report import load_trials
from slotsweep.tracking import SweepTracker, search_all


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
