"""The driver: running, resuming and extending a sweep on Ray Tune.

Layout of a sweep's storage (`<storage>/<name>/`):

    mlflow.db, mlartifacts/        default MLflow store (all instances of the sweep;
                                   a local storage only: object storage needs a server)
    run-001/                       one instance; `--fresh` starts run-002, ...
        tune-000/                  the Tune experiment (restorable)
        tune-001/                  an extension (`--num-samples` raised after the end)
        ledger.jsonl (ledger/)     trials that ended: a resumed trial listed here
                                   reports its recorded result instead of training
        work/TRIAL_ID/             the trainer's checkpoints (on object storage, they
                                   stay on the node; Tune's checkpoints are shared)

The storage is a local (or NFS) folder or an object-storage prefix (`s3://bucket/sweeps`):
`Location` hides which (Tune reads either through pyarrow).

A rerun of the same command resumes the newest instance: Tune restores the newest
experiment (finished trials are not rerun, unfinished ones continue from their last
checkpoint, the Optuna searcher's state is restored), then, if more samples are asked
for than exist, a new Tune experiment runs only the missing trials with an Optuna
study warm-started by every earlier result.

What runs inside a trial's Ray worker is `trial` (with the `ledger` it reads: neither
imports MLflow nor Optuna); the search is `space`, MLflow is `callback` and `tracking`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from slotsweep.config import TrialConfig
from slotsweep.config_io import ConfigError
from slotsweep.data.format import MANIFEST, read_manifest
from slotsweep.data.reader import check_split
from slotsweep.data.sources.synthetic import ensure_synthetic
from slotsweep.metrics.pareto import ranked_front
from slotsweep.sweep.callback import TrackingCallback
from slotsweep.sweep.ledger import Ledger, TrialRecord, ended_with
from slotsweep.sweep.legacy import register_old_modules
from slotsweep.sweep.location import Location
from slotsweep.sweep.space import param_space, scheduler, search_algorithm, tune_metric
from slotsweep.sweep.spec import Sweep
from slotsweep.sweep.storage import atomic_local_uploads, check_storage
from slotsweep.sweep.tracking import (
    TAG_TRIAL,
    SweepTracker,
    check_tracking_server,
    default_tracking_uri,
)
from slotsweep.sweep.trial import REPLAYED, run_trial
from slotsweep.sweep.tune_logs import skip_tensorboard

log = logging.getLogger(__name__)
OUTCOMES = ("finished", "stopped early", "failed")
UNFINISHED = ("pending", "running", "paused")  # Tune's status of a trial a stop cut short


@dataclass
class SweepResult:
    name: str
    instance_dir: Location
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: list[TrialRecord] = field(default_factory=list)
    planned: int = 0  # trials this run aimed for: --num-samples, else the sweep file's

    def best(self, metric: str, mode: str) -> TrialRecord | None:
        scored = [t for t in self.trials if math.isfinite(t.metrics.get(metric, math.nan))]
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda t: t.metrics[metric])

    def front(self, directions: dict[str, str]) -> list[TrialRecord]:
        """The Pareto front of the trials that ended (finished or stopped early, not
        failed) with a value for every objective, best on the first objective first."""
        ended = {t.trial_id: t for t in self.trials if t.outcome in OUTCOMES[:2]}
        return [ended[k] for k in ranked_front({k: t.metrics for k, t in ended.items()},
                                               directions)]


def sweep_location(sweep: Sweep, storage: str | None) -> Location:
    """The sweep's folder: `--storage` (or $SLOTSWEEP_STORAGE), else the sweep file's."""
    return Location.of(storage or sweep.spec.storage) / sweep.name


def instance_dirs(sweep_dir: Location | Path) -> list[Location]:
    return _location(sweep_dir).children("run-*")


def _location(where: Location | Path) -> Location:
    """Callers outside the driver (the report, tests) may hold a local Path."""
    return where if isinstance(where, Location) else Location.of(where)


def pick_instance(sweep_dir: Location, fresh: bool) -> Location:
    existing = instance_dirs(sweep_dir)
    if existing and not fresh:
        return existing[-1]
    number = int(existing[-1].name.split("-")[1]) + 1 if existing else 1
    return sweep_dir / f"run-{number:03d}"


def dataset_id(config: TrialConfig) -> str:
    """`NAME:ROWS:DIGEST` of the training split's manifest (local, or read in object
    storage without fetching the shards), for the runs' `dataset_manifest` tag."""
    where = Location.of(config.data.train)
    try:
        if where.remote:
            manifest = json.loads((where / MANIFEST).read_text())
        elif (where.path / MANIFEST).is_file():
            manifest = read_manifest(where.path)
        else:
            return "unprepared"
        digest = "".join(s["sha256"][:8] for s in manifest["shards"])[:64]
        return f"{where.name}:{manifest['num_rows']}:{digest}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable"  # a trial names what is wrong when it opens the split


def experiments_of(instance: Location | Path) -> list[Location]:
    return _location(instance).children("tune-*")


def experiment_complete(experiment: Location) -> bool:
    """Whether a Tune experiment ran to its end: every trial it planned exists and has
    ended. A Ctrl-C'd `fit()` returns like a finished one, with trials pending or running
    (or, searches being lazy, not yet created); taking that for the end would start an
    extension experiment of fresh trials instead of resuming these."""
    trials = tune.ExperimentAnalysis(str(experiment)).trials
    if any(t.status.lower() in UNFINISHED for t in trials):
        return False
    plan = experiment.parent / f"{experiment.name}-plan.json"  # absent before 2026-11-26
    return not plan.exists() or len(trials) >= json.loads(plan.read_text())["trials"]


def collect(instance: Location | Path) -> list[TrialRecord]:
    """Every trial of every Tune experiment of this instance, with its last result."""
    instance = _location(instance)
    ledger = Ledger(instance).read()
    records: dict[str, TrialRecord] = {}
    copied: list[tuple[str, dict[str, Any]]] = []  # re-suggested copies: (id, config)
    for exp in experiments_of(instance):
        if not tune.Tuner.can_restore(str(exp)):
            continue
        for result in tune.ExperimentAnalysis(str(exp)).trials:
            entry = ledger.get(result.trial_id)
            if entry is None and (result.last_result or {}).get(REPLAYED):
                copied.append((result.trial_id, dict(result.config)))
                continue  # a copy of an ended trial: below
            metrics = dict(result.last_result or {})
            outcome = entry["outcome"] if entry else result.status.lower()
            if entry and entry.get("metrics"):
                metrics = {**metrics, **entry["metrics"]}
            records[result.trial_id] = TrialRecord(
                result.trial_id, dict(result.config), metrics, outcome,
                entry.get("error") if entry else None)
    for trial_id, params in copied:
        entry = ended_with(ledger, params)
        if entry is None:
            continue
        if entry["trial_id"] not in records:
            # The original ended (its ledger entry and MLflow run say so) but no Tune
            # snapshot holds it: it started and ended between two snapshots of a driver
            # that then died. The ledger is its only record; the copy stands in for it.
            trial_id = entry["trial_id"]
        # else: the search's own repeat of the original's parameters, whose ledger entry
        # (`TrackingCallback._record_repeat`) was lost with its driver: a trial of its own.
        records[trial_id] = TrialRecord(
            trial_id, dict(entry["params"]), dict(entry.get("metrics") or {}),
            entry["outcome"], entry.get("error"))
    return list(records.values())


def discard_unrecorded(tracker: SweepTracker, instance: Location,
                       records: list[TrialRecord] | None = None) -> list[str]:
    """Discard the MLflow runs of trials that neither a Tune experiment of `instance`
    (one that can be restored) nor the ledger knows; returns their trial ids.

    A driver killed after a trial started but before Tune's next snapshot of the
    experiment (or before its first: the experiment is then started over) leaves such a
    run: the rerun does not know the trial and starts its parameters again under a new
    id, so the old run would show the same trial twice, RUNNING forever. It ran at most
    the snapshot period (1 s) beyond what Tune recorded, and never ended (an ended trial
    is in the ledger, and its run is kept). `records`: `collect(instance)`, if the
    caller has it."""
    records = collect(instance) if records is None else records
    known = {r.trial_id for r in records} | set(Ledger(instance).read())
    discarded = []
    for run in tracker.trial_runs():
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id in known:
            continue
        tracker.discard_trial(run.info.run_id, reason=(
            f"trial {trial_id} started, but its driver died before Tune recorded it; "
            "the resumed sweep went on from Tune's last record of the experiment, "
            "which does not hold it"))
        discarded.append(trial_id)
    if discarded:
        log.warning("discarded the MLflow runs of %d trial(s) that Tune never recorded "
                    "(their driver died within a second of their start): %s",
                    len(discarded), ", ".join(discarded))
    return discarded


def check_data(config: TrialConfig) -> None:
    """Fail before Ray or the storage is touched when the base config's data is unusable:
    a missing or corrupt shard, a missing manifest, a wrong feature size, an empty split.
    (Data paths that a search space varies are checked when their trial starts.)"""
    from slotsweep.data.batches import Batches

    for path, is_eval in ((config.data.train, False), (config.data.val, True)):
        if "://" in str(path) or (config.data.synthetic and not Path(path).exists()):
            continue  # remote: checked when cached; synthetic: generated just below
        check_split(path)
        Batches.open(str(path), config.model, eval=is_eval)


def preflight(sweep: Sweep, *, storage: str | None, tracking_uri: str | None) -> None:
    """Everything that can fail before Ray starts or the storage is touched: the base
    config's data, the tracking server, the storage's room and permissions."""
    check_data(sweep.trial_config({}))
    sweep_dir = sweep_location(sweep, storage)
    tracking_default(sweep, sweep_dir, tracking_uri)
    check_tracking_server(tracking_uri or sweep.spec.tracking.uri or "")
    check_storage(sweep_dir)


def tracking_default(sweep: Sweep, sweep_dir: Location, tracking_uri: str | None) -> str:
    """The tracking URI: `--tracking-uri`, else the sweep file's, else SQLite beside a
    local storage. Object storage holds no SQLite database (it needs locks and in-place
    writes): there a tracking server must be named."""
    uri = tracking_uri or sweep.spec.tracking.uri
    if uri:
        return uri
    if sweep_dir.remote:
        raise ConfigError(
            f"{sweep.path}: tracking.uri: the sweep's storage {sweep_dir} is object "
            "storage, which cannot hold the default SQLite tracking store; name an MLflow "
            "server (--tracking-uri http://HOST:5000, $MLFLOW_TRACKING_URI, or tracking.uri)")
    return default_tracking_uri(sweep_dir.path)


def run_sweep(
    sweep: Sweep,
    *,
    num_samples: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    fresh: bool = False,
    verbose: int = 1,
) -> SweepResult:
    """Run or resume `sweep` on the connected Ray cluster; returns every trial's result.

    Resume the instance's newest Tune experiment if it has one; then, if trials are still
    missing (a new sweep, or `--num-samples` raised), run them in a new experiment whose
    search is warm-started by every earlier result; then settle the MLflow runs."""
    base = sweep.trial_config({})
    check_data(base)
    total = sweep.num_trials(num_samples)  # a grid: num_samples passes over the grid
    sweep_dir = sweep_location(sweep, storage)
    check_storage(sweep_dir)
    instance = pick_instance(sweep_dir, fresh)
    instance.mkdir()
    if base.data.synthetic:  # once, here, rather than racing in every trial
        ensure_synthetic(base.data, resolution=base.model.resolution)

    uri = tracking_default(sweep, sweep_dir, tracking_uri)
    # Artifacts: beside a local storage; with object storage, where the server says.
    artifacts = None if sweep_dir.remote else sweep_dir.path / "mlartifacts"
    tracker = SweepTracker(uri, sweep.spec.tracking.experiment or sweep.name, sweep.name,
                           f"{sweep.name}/{instance.name}", artifact_root=artifacts)
    parent = tracker.parent_run()
    tracker.client.log_text(parent, sweep.path.read_text(), "sweep.yaml")
    callback = TrackingCallback(sweep, tracker, Ledger(instance), dataset_id(base))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, instance=str(instance)),
        {"cpu": sweep.spec.resources.cpu, "gpu": sweep.spec.resources.gpu},
    )
    _configure_tune()

    before = collect(instance)
    discard_unrecorded(tracker, instance, before)
    callback.known = {r.trial_id for r in before}
    stopped = _resume(instance, trainable, callback)
    prior = collect(instance)
    callback.known = {r.trial_id for r in prior}
    if total > len(prior) and not stopped:  # a new sweep, or an extension (--num-samples)
        _extend(sweep, instance, trainable, callback, prior, total - len(prior), verbose)
    records = collect(instance)
    _settle_runs(tracker, records)
    result = SweepResult(sweep.name, instance, uri, tracker.experiment_id, parent, records,
                         planned=total)
    if sweep.spec.search.multi_objective:
        front = {t.trial_id for t in result.front(sweep.spec.search.directions())}
        tracker.tag_front({t.trial_id: t.trial_id in front for t in records})
    if len(records) >= total:
        tracker.end_sweep()
    return result


def _configure_tune() -> None:
    """Tune's settings for every sweep of this process (environment variables: Tune reads
    them when an experiment starts)."""
    # Snapshot the experiment state every second (Tune's default: >= 10 s, adaptive).
    # Staleness within that second is handled by the ledger (ended trials replay their
    # result) and by the trainer's own checkpoints (the newer one wins); snapshotting on
    # every controller step instead cost a third of a core of driver CPU on 2 cores
    # (benchmarks/sweep.py: 37% overhead against 12-20% at 1 s).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # With num_to_keep=2, Tune also snapshots whenever a trial has checkpointed twice since
    # the last snapshot, so that the snapshot never names a deleted checkpoint; a trial
    # that checkpoints every few seconds (the tests' tiny ones) makes it warn each time
    # that snapshots are frequent and advise fewer checkpoints. Those snapshots are wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    skip_tensorboard()  # its logger fsyncs after every result, in the driver's loop
    atomic_local_uploads()
    register_old_modules()  # the pickles of a storage written by an older layout


def _resume(instance: Location, trainable, callback: TrackingCallback) -> bool:
    """Resume the instance's newest Tune experiment, if there is one to resume; True if
    it stopped before its end (Ctrl-C: the next run resumes it again)."""
    experiments = experiments_of(instance)
    if not experiments:
        return False
    if not tune.Tuner.can_restore(str(experiments[-1])):
        experiments[-1].remove_tree()  # it never got its first snapshot: start over
        return False
    # resume_errored: a trial stopped by a storage fault continues from its checkpoint;
    # a trial that failed on its own replays its ledger entry or fails at once.
    TrackingCallback.current = callback  # the restored callback becomes this one
    try:
        tuner = tune.Tuner.restore(str(experiments[-1]), trainable,
                                   resume_unfinished=True, resume_errored=True)
    finally:
        TrackingCallback.current = None
    tuner.fit()
    return not experiment_complete(experiments[-1])


def _extend(sweep: Sweep, instance: Location, trainable, callback: TrackingCallback,
            prior: list[TrialRecord], missing: int, verbose: int) -> None:
    """Run `missing` more trials in a new Tune experiment of the instance, its search
    told every earlier result."""
    spec = sweep.spec
    name = f"tune-{len(experiments_of(instance)):03d}"
    (instance / f"{name}-plan.json").write(json.dumps({"trials": missing}))
    if prior:  # what the extension's search is told, for the record
        (instance / f"{name}-warm-start.json").write(json.dumps({
            "trial_ids": [r.trial_id for r in prior],
            "values": [[r.metrics.get(m) for m in spec.search.directions()]
                       if spec.search.multi_objective else r.metrics.get(spec.search.metric)
                       for r in prior],
        }))
    metric, mode = tune_metric(sweep)
    tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(sweep, prior, name), scheduler=scheduler(sweep),
            metric=metric, mode=mode, num_samples=math.ceil(missing / sweep.grid_size()),
            reuse_actors=True,  # a worker process per trial costs ~5 s of imports
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=str(instance), callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=verbose,
        ),
    ).fit()


def _settle_runs(tracker: SweepTracker, records: list[TrialRecord]) -> None:
    """No MLflow run stays RUNNING once the driver returns: an unfinished trial's run is
    "interrupted" (a rerun resumes it); one Tune ended without our ledger entry (an
    error, or a write lost with the driver) gets Tune's outcome."""
    runs = {r.data.tags.get(TAG_TRIAL): r for r in tracker.trial_runs()}
    for rec in records:
        run = runs.get(rec.trial_id)
        if run is None or run.info.status != "RUNNING":
            continue
        if rec.outcome in UNFINISHED:
            tracker.interrupt_trial(run.info.run_id)
        else:
            tracker.end_trial(run.info.run_id, outcome=rec.outcome if rec.outcome in OUTCOMES
                              else "failed", error=rec.error)
