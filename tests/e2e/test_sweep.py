"""End-to-end sweeps on a real local Ray cluster with a real MLflow (sqlite) store."""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import time

import pytest

from slotsweep.sweep.trial import REPLAYED
from tests.support.sweeps import (
    check_consistent,
    cli,
    end_session,
    instance_dir,
    ledger,
    mlflow_runs,
    params_sequence,
    reported_steps,
    run,
    run_and_kill,
    sweep_file,
    trial_results,
)

pytestmark = pytest.mark.slow


def test_sweep_finds_best_trial_and_tracks_every_trial(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16)
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = tmp_path / "storage"
    results, trials = check_consistent(storage, 3)
    finals = {r.data.tags["slotsweep.trial_id"]: r.data.metrics["val/fg_ari"] for r in trials}
    best = max(finals, key=finals.get)
    assert f"best trial {best}: FG-ARI {finals[best]:.3f}" in done.stdout
    assert f"against the best trivial baseline: FG-ARI {finals[best]:.3f} vs" in done.stdout
    assert "trivial baselines" in done.stdout and "blocks 2x2" in done.stdout
    assert done.stdout.rstrip().endswith("(Ray: local)")  # no worker line after the summary
    assert "snapshotting has been triggered" not in done.stderr  # wanted snapshots, no advice
    for r in trials:
        assert r.data.params["loss.type"] in ("none", "cosine")
        assert r.data.params["model.slot_size"] == "16"
        assert r.data.tags["slotsweep.outcome"] == "finished"
        assert r.data.tags["dataset_manifest"].startswith("train:64:")
        assert r.data.metrics["step"] == 8
        assert math.isfinite(r.data.metrics["train/recon"])
    client = mlflow_runs(storage)[0]
    arts = [a.path for a in client.list_artifacts(trials[0].info.run_id)]
    assert "config.yaml" in arts and "masks" in arts

    again = run(path)  # a finished sweep: nothing runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert trial_results(storage) == results


def test_asha_stops_trials_early(tmp_path, dsprites16):
    path = sweep_file(
        tmp_path, dsprites16, search={"num_samples": 6, "max_concurrent": 2, "seed": 1},
        scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 3},
    )
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, trials = check_consistent(tmp_path / "storage", 6)
    stopped = [r for r in trials if r.data.tags["slotsweep.outcome"] == "stopped early"]
    assert stopped, "ASHA stopped no trial"
    for r in stopped:
        assert r.info.status == "KILLED" and r.data.metrics["step"] < 8


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dsprites16):
    """The reference: the same sweep run once without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    assert run(sweep_file(root, dsprites16)).returncode == 0
    return root / "storage"


@pytest.mark.parametrize("moment", ["during the first trial", "mid-sweep", "after the last"])
def test_resume_after_driver_sigkill(tmp_path, dsprites16, uninterrupted, moment):
    path = sweep_file(tmp_path, dsprites16)
    storage = tmp_path / "storage"
    until = {
        "during the first trial": lambda: reported_steps(storage) >= 2,
        "mid-sweep": lambda: len(ledger(storage)) >= 1 and reported_steps(storage) >= 6,
        "after the last": lambda: len(ledger(storage)) >= 3,
    }[moment]
    run_and_kill(path, until)
    before = ledger(storage)
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_consistent(storage, 3)
    after = {e["trial_id"]: e for e in ledger(storage)}
    for entry in before:  # nothing that had ended ran again
        assert after[entry["trial_id"]]["metrics"] == entry["metrics"]
    # The Optuna search continued its seeded sequence: the same trials as uninterrupted.
    assert params_sequence(storage) == params_sequence(uninterrupted)
    assert len([p for p in instance_dir(storage).glob("tune-*") if p.is_dir()]) == 1


def ctrl_c(path, until, log) -> tuple[int, str]:
    """Run the sweep CLI, send its driver SIGINT (what Ctrl-C sends) once `until()` holds;
    (exit code, output)."""
    with log.open("w") as out:
        proc = subprocess.Popen(cli(path), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not until() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.kill(proc.pid, signal.SIGINT)
        returncode = proc.wait(timeout=180)
    finally:
        end_session(proc.pid)
    return returncode, log.read_text()


def test_ctrl_c_says_how_to_resume_and_the_rerun_completes(tmp_path, dsprites16,
                                                           uninterrupted):
    path = sweep_file(tmp_path, dsprites16)
    storage = tmp_path / "storage"
    returncode, text = ctrl_c(path, lambda: reported_steps(storage) >= 2, tmp_path / "1.log")
    assert returncode == 130, text[-3000:]  # not 0: the sweep did not complete
    assert re.search(r"\b[123] of 3 trials not finished: rerun the same command to resume",
                     text), text[-3000:]
    # MLflow: an ended trial keeps its outcome; a cut-short one is "interrupted" (KILLED),
    # not "failed", and holds no outcome while it runs again.
    ended = {e["trial_id"] for e in ledger(storage)}
    cut = [r for r in mlflow_runs(storage)[2] if r.data.tags["slotsweep.trial_id"] not in ended]
    assert cut, "the interruption cut no trial short"
    for r in cut:
        assert r.data.tags.get("slotsweep.outcome") == "interrupted", r.data.tags
        assert r.info.status == "KILLED"
    first_stop_ms = time.time() * 1000

    # Ctrl-C again, in the run that resumes: it stops too, and starts no new experiment
    # of fresh trials (it did: a resumed fit() cut short looked like a finished one).
    reported = reported_steps(storage)
    returncode, text = ctrl_c(path, lambda: reported_steps(storage) > reported,
                              tmp_path / "2.log")
    assert returncode == 130, text[-3000:]
    assert [p.name for p in instance_dir(storage).glob("tune-*") if p.is_dir()] == ["tune-000"]

    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not finished" not in done.stdout
    _, trials = check_consistent(storage, 3)
    assert [r.data.tags["slotsweep.outcome"] for r in trials] == ["finished"] * 3
    assert params_sequence(storage) == params_sequence(uninterrupted)
    # A resumed trial's run says when a driver took it over (the report's pace leaves the
    # pause out); a trial that ended in the first run was never resumed.
    cut_ids = {r.data.tags["slotsweep.trial_id"] for r in cut}
    for r in trials:
        resumed = r.data.tags.get("slotsweep.resumed_at")
        if r.data.tags["slotsweep.trial_id"] in cut_ids:
            assert resumed is not None and int(resumed) > first_stop_ms, r.data.tags
        elif r.data.tags["slotsweep.trial_id"] in ended:
            assert resumed is None, r.data.tags


def test_fewer_samples_than_the_file_is_a_complete_run(tmp_path, dsprites16):
    # The file asks for 3; a run asked for 2 that finishes them is complete, not
    # "interrupted" (it said "1 of 3 trials not finished" and exited 130).
    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 3, "max_concurrent": 1})
    done = run(path, "--num-samples", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not finished" not in done.stdout and "so far" not in done.stdout
    assert "2 trials in" in done.stdout
    check_consistent(tmp_path / "storage", 2)


def test_extending_a_finished_sweep_runs_only_new_trials(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 2, "max_concurrent": 1})
    assert run(path).returncode == 0
    storage = tmp_path / "storage"
    first = trial_results(storage)
    first_runs = {r.info.run_id: r.data.metrics for r in mlflow_runs(storage)[2]}
    done = run(path, "--num-samples", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    results, trials = check_consistent(storage, 4)
    for trial_id, rows in first.items():  # old trials untouched
        assert results[trial_id] == rows
    assert {r.info.run_id for r in trials} >= set(first_runs)
    exps = sorted(p for p in instance_dir(storage).glob("tune-*") if p.is_dir())
    assert [p.name for p in exps] == ["tune-000", "tune-001"]
    # The extension's Optuna study was told every earlier trial's result: read the
    # searcher state Tune saved for the new experiment (our own pickle, trusted).
    state_file = sorted(exps[1].glob("searcher-state-*.pkl"))[-1]
    with state_file.open("rb") as f:
        searcher = pickle.load(f)
    study_trials = searcher["_ot_study"].trials
    told = [t for t in study_trials if t.number < 2]
    assert len(study_trials) == 4 and len(told) == 2
    old_values = sorted(first_runs[r]["val/fg_ari"] for r in first_runs)
    assert sorted(t.value for t in told) == pytest.approx(old_values)
    assert all(t.state.name == "COMPLETE" for t in study_trials)


def test_a_trial_run_that_tune_never_recorded_is_discarded(tmp_path, dsprites16):
    """What a driver killed within a second of a trial's start leaves behind: an MLflow
    run (with a first result) of a trial that no Tune snapshot holds. The random kills in
    test_faults reach that moment only by chance; here it is set up directly. The rerun
    discards the run, so MLflow holds exactly one run per trial that Tune knows."""
    from slotsweep.sweep.tracking import SweepTracker, default_tracking_uri

    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 2, "max_concurrent": 1})
    storage = tmp_path / "storage"
    sweep_dir = storage / "tiny"
    (sweep_dir / "run-001").mkdir(parents=True)
    dead = SweepTracker(default_tracking_uri(sweep_dir), "tiny", "tiny", "tiny/run-001",
                        artifact_root=sweep_dir / "mlartifacts")
    orphan = dead.trial_run("0rphan00", name="0rphan00 type=none",
                            params={"loss.type": "none"}, tags={}, config_yaml="{}\n")
    dead.log_result(orphan, {"val/fg_ari": 0.1, "step": 2}, step=2, timestamp_ms=1)

    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "discarded the MLflow runs of 1 trial(s)" in done.stderr
    assert "0rphan00" in done.stderr
    results, trials = check_consistent(storage, 2)  # one run per trial, none for 0rphan00
    assert "0rphan00" not in results
    gone = dead.client.get_run(orphan)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags["slotsweep.outcome"] == "superseded"
    assert "driver died" in gone.data.tags["slotsweep.error"]
    assert gone.data.metrics["val/fg_ari"] == 0.1  # soft-deleted: kept, restorable


def test_a_trial_that_ended_unseen_by_tune_keeps_its_record(tmp_path, dsprites16):
    """A trial that started and ended between two of Tune's snapshots, after which the
    driver died: the ledger and MLflow hold it, no Tune experiment does (set up here by
    removing the experiment). The rerun's search suggests its parameters again; the copy
    replays the ledger's result instead of training, and the trial counts once, under its
    own id, with its own result."""
    from slotsweep.sweep.driver import collect

    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 1, "max_concurrent": 1})
    storage = tmp_path / "storage"
    assert run(path).returncode == 0
    instance = instance_dir(storage)
    (entry,) = ledger(storage)
    for tune_file in instance.glob("tune-*"):
        shutil.rmtree(tune_file) if tune_file.is_dir() else tune_file.unlink()

    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    (copy,) = trial_results(storage)  # the re-suggested copy, in the new experiment
    assert copy != entry["trial_id"]
    assert all(row.get(REPLAYED) for row in trial_results(storage)[copy])
    assert not (instance / "work" / copy).exists(), "the copy trained instead of replaying"
    (record,) = collect(instance)
    assert (record.trial_id, record.outcome) == (entry["trial_id"], "finished")
    assert record.metrics["val/fg_ari"] == entry["metrics"]["val/fg_ari"]
    assert f"best trial {entry['trial_id']}: FG-ARI" in done.stdout
    _, trials = check_consistent(storage, 1)
    assert trials[0].data.tags["slotsweep.trial_id"] == entry["trial_id"]
    assert trials[0].info.status == "FINISHED"


def test_a_search_that_repeats_parameters_counts_each_repeat_as_a_trial(tmp_path, dsprites16):
    """A small discrete space makes Optuna suggest ended parameters again: the repeat
    replays the recorded result (trials are deterministic) and is a trial of its own. It
    was taken for a lost trial's stand-in: the sweep looked unfinished for ever."""
    path = sweep_file(tmp_path, dsprites16, search_space={
        "loss.type": {"choice": ["cosine"]}, "loss.beta": {"choice": [0.1]},
        "train.lr": {"choice": [1e-3]}})  # the defaults' keys, each with one value
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not finished" not in done.stdout and "3 trials in" in done.stdout
    storage = tmp_path / "storage"
    _, trials = check_consistent(storage, 3)
    entries = ledger(storage)
    original = next(e for e in entries if "same_as" not in e)
    repeats = [e for e in entries if "same_as" in e]
    assert len(repeats) == 2 and {e["same_as"] for e in repeats} == {original["trial_id"]}
    by_id = {r.data.tags["slotsweep.trial_id"]: r for r in trials}
    for e in repeats:
        run_ = by_id[e["trial_id"]]
        assert run_.info.status == "FINISHED" and run_.data.tags["slotsweep.outcome"] == "finished"
        assert run_.data.tags["slotsweep.same_as"] == original["trial_id"]
        assert run_.data.metrics["val/fg_ari"] == by_id[original["trial_id"]].data.metrics[
            "val/fg_ari"]
    again = run(path)  # complete: nothing runs again, nothing is extended
    assert again.returncode == 0 and "not finished" not in again.stdout
    assert [p.name for p in instance_dir(storage).glob("tune-*") if p.is_dir()] == ["tune-000"]


def test_fresh_starts_a_new_instance_and_keeps_the_old(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 1})
    assert run(path).returncode == 0
    assert run(path, "--fresh").returncode == 0
    storage = tmp_path / "storage"
    assert [p.name for p in sorted((storage / "tiny").glob("run-*"))] == ["run-001", "run-002"]
    _, parents, trials = mlflow_runs(storage)
    assert len(parents) == 2 and len(trials) == 2


def test_gpu_request_on_cpu_cluster_fails_before_any_trial(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16, resources={"cpu": 1, "gpu": 1})
    done = run(path)
    assert done.returncode == 2
    assert f"{path}: resources.gpu:" in done.stderr and "no GPU" in done.stderr
    assert not (tmp_path / "storage").exists()


def test_sweep_tracks_to_a_real_mlflow_server_and_resumes_there(tmp_path, dsprites16):
    """The cluster's setting (cluster.yaml: a tracking server on the head node): trials
    reach a real `mlflow server` over HTTP, and a rerun adds no run and no step."""
    from mlflow.tracking import MlflowClient

    from tests.support.browser import mlflow_server

    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 1, "max_concurrent": 1,
                                                    "seed": 0})
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(backend, tmp_path / "server.log") as (url, _):
        done = run(path, "--tracking-uri", url)
        assert done.returncode == 0, done.stderr[-3000:]
        again = run(path, "--tracking-uri", url)
        assert again.returncode == 0, again.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id])
        trials = [r for r in runs if r.data.tags.get("slotsweep.role") == "trial"]
        assert len(runs) == 2 and len(trials) == 1  # one parent, one run per trial
        for r in trials:
            assert r.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/fg_ari")]
            assert steps == [2, 4, 6, 8]
    assert not (tmp_path / "storage" / "tiny" / "mlflow.db").exists()  # all of it went there


def test_an_unreachable_tracking_server_is_refused_before_ray_starts(tmp_path, dsprites16):
    from tests.support.browser import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = sweep_file(tmp_path, dsprites16)
    done = run(path, "--tracking-uri", url)
    assert done.returncode == 2
    assert f"error: cannot reach the MLflow tracking server at {url}" in done.stderr
    assert "Started a local Ray instance" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "storage").exists()
