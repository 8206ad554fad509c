"""Running a sweep on Ray Tune: search, scheduling, resume, extension, tracking.

Layout of a sweep's storage (`<storage>/<name>/`):

    mlflow.db, mlartifacts/        default MLflow store (all instances of the sweep)
    run-001/                       one instance; `--fresh` starts run-002, ...
        tune-000/                  the Tune experiment (restorable)
        tune-001/                  an extension (`--num-samples` raised after the end)
        ledger.jsonl               trials that ended: a resumed trial listed here
                                   reports its recorded result instead of training

A rerun of the same command resumes the newest instance: Tune restores the newest
experiment (finished trials are not rerun, unfinished ones continue from their last
checkpoint, the Optuna searcher's state is restored), then, if more samples are asked
for than exist, a new Tune experiment runs only the missing trials with an Optuna
study warm-started by every earlier result.

What runs inside a trial's Ray worker (the trainable, and the ledger it reads) is in
`slotsweep.trial`, which imports neither MLflow nor Optuna.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from slotsweep.config import ConfigError, TrialConfig
from slotsweep.data.shards import MANIFEST, check_split, read_manifest
from slotsweep.data.synthetic import ensure_synthetic
from slotsweep.files import atomic_path, atomic_write
from slotsweep.sweep_spec import VARIANT, Param, Sweep
from slotsweep.tracking import TAG_TRIAL, SweepTracker, default_tracking_uri
from slotsweep.trial import (
    LEDGER,
    REPLAYED,
    append_ledger,
    ended_before,
    ended_with,
    read_ledger,
    run_trial,
)


def _atomic_local_uploads() -> None:
    """Make Tune's experiment-state uploads to a local/NFS storage path atomic per file.

    Tune writes its snapshot in a staging directory and copies it to the storage path in
    a background thread, overwriting files in place. A driver killed mid-copy left an
    empty `experiment_state-*.json`, and the next run silently restarted the experiment
    from scratch (seen in our SIGKILL tests). Here each file is copied to a temporary
    name and renamed over the old one, so a snapshot file is always whole. Remote
    filesystems (s3://, gs://) keep Ray's own upload: their object writes are atomic.
    """
    from pyarrow import fs as pafs
    from ray.train._internal import storage

    original = storage._upload_to_fs_path
    if getattr(original, "_slotsweep_atomic", False):
        return

    def upload(local_path, fs, fs_path, exclude=None):
        if not isinstance(fs, pafs.LocalFileSystem):
            return original(local_path, fs, fs_path, exclude)
        src, dst = Path(local_path), Path(fs_path)
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(src).as_posix() if src.is_dir() else file.name
            if exclude and any(fnmatch.fnmatch(rel, pat) for pat in exclude):
                continue
            target = dst if src.is_file() else dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(file, tmp)

    # A marker on the patched function, so a second call does not wrap it again.
    upload._slotsweep_atomic = True  # type: ignore[attr-defined]
    storage._upload_to_fs_path = upload


log = logging.getLogger(__name__)
OUTCOMES = ("finished", "stopped early", "failed")
UNFINISHED = ("pending", "running", "paused")  # Tune's status of a trial a stop cut short


# ----------------------------------------------------------------- search space


def _primitive(values: list[Any]) -> bool:
    """Optuna categoricals hold primitives; other choices (lists, dicts) go by index."""
    return all(isinstance(v, (bool, int, float, str)) or v is None for v in values)


def _suggest(trial: optuna.Trial, key: str, param: Param) -> Any:
    kind = param.kind
    if kind in ("choice", "grid"):
        values = getattr(param, kind)
        if _primitive(values):
            return trial.suggest_categorical(key, values)
        return values[trial.suggest_categorical(key + "#", list(range(len(values))))]
    low, high = getattr(param, kind)
    if kind == "int":
        return trial.suggest_int(key, low, high)
    return trial.suggest_float(key, low, high, log=kind == "loguniform")


class OptunaSpace:
    """A define-by-run space: conditional keys are suggested only when active.

    A class rather than a closure: Tune pickles the searcher (and so this) into its
    experiment state with the standard pickle.
    """

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.order = sweep.order()
        self.base = sweep.base_flat()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = dict(self.base)
        for key in self.order:
            param = self.sweep.spec.search_space[key]
            if param.active(values):
                values[key] = _suggest(trial, key, param)
        return {k: values[k] for k in self.order}


def optuna_distributions(sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, p in sweep.spec.search_space.items():
        kind = p.kind
        if kind in ("choice", "grid"):
            values = getattr(p, kind)
            if _primitive(values):
                out[key] = optuna.distributions.CategoricalDistribution(values)
            else:
                out[key + "#"] = optuna.distributions.CategoricalDistribution(
                    list(range(len(values))))
        elif kind == "int":
            assert p.int is not None  # p.kind names the distribution that is given
            out[key] = optuna.distributions.IntDistribution(*p.int)
        else:
            low, high = getattr(p, kind)
            out[key] = optuna.distributions.FloatDistribution(
                low, high, log=kind == "loguniform")
    return out


def _warm_study(sweep: Sweep, prior: list[TrialRecord], name: str) -> optuna.storages.BaseStorage:
    """An in-memory Optuna storage holding every earlier trial with its result."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name,
                                direction="maximize" if sweep.spec.search.mode == "max"
                                else "minimize")
    dists = optuna_distributions(sweep)
    for rec in prior:
        value = rec.metrics.get(sweep.spec.search.metric)
        params, used = {}, {}
        for key, v in active_params(sweep, rec.params).items():
            if key in dists:
                params[key], used[key] = v, dists[key]
            elif key + "#" in dists:
                choices = getattr(sweep.spec.search_space[key], sweep.spec.search_space[key].kind)
                params[key + "#"], used[key + "#"] = choices.index(v), dists[key + "#"]
        ok = value is not None and math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used, value=value if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
        ))
    return storage


def active_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """Drop conditional keys whose condition does not hold (their value is the base's)."""
    values = {**sweep.base_flat(), **params}
    return {k: v for k, v in params.items()
            if k in sweep.spec.search_space and sweep.spec.search_space[k].active(values)}


# ----------------------------------------------------------------- storage faults

# What a full, read-only or over-quota storage looks like from Python, Ray and sqlite.
# SQLite says "unable to open database file" (CANTOPEN) when it cannot create its journal
# beside a database it already has open: mid-sweep, that is a directory gone read-only.
STORAGE_SIGNS = {"No space left on device": "full", "database or disk is full": "full",
                 "Disk quota exceeded": "over quota", "Read-only file system": "read-only",
                 "attempt to write a readonly database": "read-only",
                 "unable to open database file": "read-only"}
MIN_FREE_MB = int(os.environ.get("SLOTSWEEP_MIN_FREE_MB", "50"))


class StorageFault(RuntimeError):
    """The sweep's storage cannot be written: the sweep stops, what is there is kept."""


def cause_chain(error: BaseException | None, limit: int = 10) -> Iterator[BaseException]:
    """`error`, then what caused it (`__cause__`, else `__context__`), at most `limit`:
    Tune and Ray wrap the exceptions raised in callbacks and trials."""
    for _ in range(limit):
        if error is None:
            return
        yield error
        error = error.__cause__ or error.__context__


def storage_fault(error: BaseException | str | None) -> str | None:
    """The storage sign in an error (or its cause chain, or a trial's error text)."""

    def sign_in(text: str) -> str | None:
        return next((f"is {what}: {s}" for s, what in STORAGE_SIGNS.items() if s in text),
                    None)

    if isinstance(error, str):
        return sign_in(error)
    for cause in cause_chain(error):
        if sign := sign_in(f"{type(cause).__name__}: {cause}"):
            return sign
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EROFS,
                                                          errno.EDQUOT):
            return f"is unwritable: {os.strerror(cause.errno)}"
    return None


def _probe_write(directory: Path) -> None:
    """Write, sync and remove one byte in `directory`; raises the OSError if it fails."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".slotsweep-probe-") as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())


def unwritable(directory: Path) -> str | None:
    """Why `directory` cannot be written now ("is read-only: ...", "is full: ..."), or
    None. For errors whose text does not say: SQLite reports a storage remounted
    read-only, or one that filled up, as "disk I/O error"."""
    try:
        _probe_write(directory)
    except OSError as exc:
        return storage_fault(exc) or f"cannot be written: {exc.strerror}"
    return None


def check_storage(path: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail before anything runs when `path` (or its nearest existing parent) cannot be
    written or has less than `min_free_mb` MB free. Leaves nothing behind."""
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        _probe_write(probe_dir)
    except OSError as exc:
        raise StorageFault(f"{probe_dir}: the sweep storage cannot be written "
                           f"({exc.strerror}); make it writable or pass --storage") from None
    free = shutil.disk_usage(probe_dir).free / 2**20
    if free < min_free_mb:
        raise StorageFault(f"{probe_dir}: the sweep storage has {free:.0f} MB free, less "
                           f"than {min_free_mb} MB (SLOTSWEEP_MIN_FREE_MB); free some space "
                           "or pass --storage")


def _stop_on_storage_faults(method):
    """A callback's write that fails because the storage is full or read-only stops the
    sweep (Tune re-raises callback errors): nothing is recorded as a trial failure."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StorageFault:
            raise
        except Exception as exc:
            sign = self.storage_sign(exc)
            if sign is None:
                raise
            raise StorageFault(f"{self.ledger.parent.parent}: the sweep storage {sign}"
                               ) from exc

    return wrapper


# ----------------------------------------------------------------- tracking


class TrackingCallback(Callback):
    """Mirrors trials into MLflow (idempotently) and records ended trials in the ledger."""

    def __init__(self, sweep: Sweep, tracker: SweepTracker, ledger: Path,
                 dataset_id: str) -> None:
        self.sweep, self.tracker, self.ledger, self.dataset_id = sweep, tracker, ledger, dataset_id

    def _run(self, trial) -> str:
        config = self.sweep.trial_config(trial.config)
        params = {k: v for k, v in config.flat().items()}
        if VARIANT in trial.config:  # not a config key: the name of the variant's overrides
            params[VARIANT] = trial.config[VARIANT]
        active = active_params(self.sweep, trial.config)
        name = f"{trial.trial_id} " + " ".join(f"{k.split('.')[-1]}={_short(v)}"
                                                for k, v in active.items())
        return self.tracker.trial_run(
            trial.trial_id, name=name, params=params, config_yaml=config.to_yaml(),
            tags={"dataset_manifest": self.dataset_id},
        )

    def storage_sign(self, error: BaseException | str | None) -> str | None:
        """Why the sweep's storage failed, if it did: the sign in the error, else what a
        probe write into this instance's folder says (for errors that do not name it)."""
        return storage_fault(error) or unwritable(self.ledger.parent)

    def _replay(self, trial) -> bool:
        return ended_before(self.ledger, trial.trial_id, trial.config) is not None

    @_stop_on_storage_faults
    def on_trial_start(self, iteration, trials, trial, **info):
        if not self._replay(trial):
            self._run(trial)

    @_stop_on_storage_faults
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "step" not in result or result.get(REPLAYED):
            return
        run = self._run(trial)
        metrics = _metrics(result)
        self.tracker.log_result(run, metrics, step=int(result["step"]),
                                timestamp_ms=int(result.get("timestamp", 0) * 1000))

    @_stop_on_storage_faults
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if (trial.last_result or {}).get(REPLAYED):
            return
        picture = Path(checkpoint.path) / "masks.png"
        if picture.is_file():
            step = int(trial.last_result.get("step", 0))
            self.tracker.log_artifact(self._run(trial), picture, f"masks/step-{step:08d}")

    def _end(self, trial, outcome: str, error: str | None = None) -> None:
        run = self._run(trial)
        self.tracker.end_trial(run, outcome=outcome, error=error)
        last = _metrics(trial.last_result or {})
        append_ledger(self.ledger, {"trial_id": trial.trial_id, "outcome": outcome,
                                    "params": trial.config, "metrics": last, "error": error})

    @_stop_on_storage_faults
    def on_trial_recover(self, iteration, trials, trial, **info):
        """Ray retries the trial (FailureConfig) from its last checkpoint, in the same run."""
        if self._replay(trial):
            return
        self.tracker.record_retry(self._run(trial), retries=int(trial.num_failures),
                                  error=_error_line(trial))

    @_stop_on_storage_faults
    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get(REPLAYED):
            return
        done = int(last.get("step", 0)) >= self.sweep.trial_config(trial.config).train.steps
        self._end(trial, "finished" if done else "stopped early")

    @_stop_on_storage_faults
    def on_trial_error(self, iteration, trials, trial, **info):
        if self._replay(trial):
            return
        error = _error_line(trial)
        sign = self.storage_sign(error)
        if sign is not None:  # not the trial's fault: stop, and resume it next time
            raise StorageFault(f"{self.ledger.parent.parent}: the sweep storage {sign} "
                               f"(trial {trial.trial_id} could not write its checkpoint)")
        self._end(trial, "failed", error)


def _error_line(trial) -> str | None:
    """The last line of a trial's error: `TrialFailed: NonFiniteLossError: step 3: ...`."""
    try:
        exc = trial.get_error()  # from the storage: synced there a little later
        if not exc and trial.error_file and Path(trial.error_file).is_file():
            exc = Path(trial.error_file).read_text()  # Ray's local copy, written at once
        return str(exc).strip().splitlines()[-1] if exc else None
    except Exception:  # noqa: BLE001 - the error file may be unreadable; keep going
        return "trial failed (see the trial's error.txt)"


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trainer's own metrics out of a Tune result (Tune adds its bookkeeping)."""
    return {k: v for k, v in result.items()
            if (k.startswith(("train/", "val/", "time/", "probe/")) or k in ("lr", "step"))
            and isinstance(v, (int, float))}


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------- the driver


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    outcome: str
    error: str | None = None


@dataclass
class SweepResult:
    name: str
    instance_dir: Path
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


def instance_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("run-*") if p.is_dir())


def pick_instance(sweep_dir: Path, fresh: bool) -> Path:
    existing = instance_dirs(sweep_dir)
    if existing and not fresh:
        return existing[-1]
    number = int(existing[-1].name.split("-")[1]) + 1 if existing else 1
    return sweep_dir / f"run-{number:03d}"


def _scheduler(sweep: Sweep):
    s = sweep.spec.scheduler
    if s.type == "none":
        return FIFOScheduler()
    steps = sweep.trial_config({}).train.steps
    return ASHAScheduler(time_attr="step", max_t=steps, grace_period=min(s.grace_period, steps),
                         reduction_factor=s.reduction_factor)


def _search(sweep: Sweep, prior: list[TrialRecord], tune_name: str):
    s = sweep.spec.search
    if s.algorithm == "optuna":
        seed = s.seed + len(prior)  # an extension must not replay the first random draws
        alg = OptunaSearch(
            space=OptunaSpace(sweep), metric=s.metric, mode=s.mode, seed=seed,
            study_name=tune_name, storage=_warm_study(sweep, prior, tune_name),
        )
        return ConcurrencyLimiter(alg, s.max_concurrent) if s.max_concurrent else alg
    return BasicVariantGenerator(random_state=s.seed + len(prior),
                                 max_concurrent=s.max_concurrent)


def _param_space(sweep: Sweep) -> dict[str, Any] | None:
    """For random/grid search: Tune's own distributions (no conditionals there)."""
    if sweep.spec.search.algorithm == "optuna":
        return None
    space = {}
    for key, p in sweep.spec.search_space.items():
        kind = p.kind
        # p.kind names the one distribution given: the asserts below hold.
        if kind == "grid":
            assert p.grid is not None
            space[key] = tune.grid_search(p.grid)
        elif kind == "choice":
            assert p.choice is not None
            space[key] = tune.choice(p.choice)
        elif kind == "int":
            assert p.int is not None
            space[key] = tune.randint(p.int[0], p.int[1] + 1)
        elif kind == "uniform":
            assert p.uniform is not None
            space[key] = tune.uniform(*p.uniform)
        else:
            assert p.loguniform is not None
            space[key] = tune.loguniform(*p.loguniform)
    return space


def dataset_id(config: TrialConfig) -> str:
    path = Path(config.data.train)
    if not (path / MANIFEST).is_file():
        return "unprepared"
    manifest = read_manifest(path)
    digest = "".join(s["sha256"][:8] for s in manifest["shards"])[:64]
    return f"{path.name}:{manifest['num_rows']}:{digest}"


def experiments_of(instance: Path) -> list[Path]:
    return sorted(p for p in instance.glob("tune-*") if p.is_dir())


def experiment_complete(experiment: Path) -> bool:
    """Whether a Tune experiment ran to its end: every trial it planned exists and has
    ended. A Ctrl-C'd `fit()` returns like a finished one, with trials pending or running
    (or, searches being lazy, not yet created); taking that for the end would start an
    extension experiment of fresh trials instead of resuming these."""
    trials = tune.ExperimentAnalysis(str(experiment)).trials
    if any(t.status.lower() in UNFINISHED for t in trials):
        return False
    plan = experiment.with_name(f"{experiment.name}-plan.json")  # absent before 2026-11-26
    return not plan.is_file() or len(trials) >= json.loads(plan.read_text())["trials"]


def collect(instance: Path) -> list[TrialRecord]:
    """Every trial of every Tune experiment of this instance, with its last result."""
    ledger = read_ledger(instance / LEDGER)
    records: dict[str, TrialRecord] = {}
    copied: list[dict[str, Any]] = []  # the configs of re-suggested copies
    for exp in experiments_of(instance):
        if not tune.Tuner.can_restore(str(exp)):
            continue
        for result in tune.ExperimentAnalysis(str(exp)).trials:
            entry = ledger.get(result.trial_id)
            if entry is None and (result.last_result or {}).get(REPLAYED):
                copied.append(dict(result.config))
                continue  # a re-suggested copy of an ended trial, not a trial of its own
            metrics = dict(result.last_result or {})
            outcome = entry["outcome"] if entry else result.status.lower()
            if entry and entry.get("metrics"):
                metrics = {**metrics, **entry["metrics"]}
            records[result.trial_id] = TrialRecord(
                result.trial_id, dict(result.config), metrics, outcome,
                entry.get("error") if entry else None)
    for params in copied:
        # The original ended (its ledger entry and MLflow run say so) but no Tune snapshot
        # holds it: it started and ended between two snapshots of a driver that then died.
        # The ledger is then its only record, and the copy stands in for it.
        entry = ended_with(ledger, params)
        if entry is not None and entry["trial_id"] not in records:
            records[entry["trial_id"]] = TrialRecord(
                entry["trial_id"], dict(entry["params"]), dict(entry.get("metrics") or {}),
                entry["outcome"], entry.get("error"))
    return list(records.values())


def discard_unrecorded(tracker: SweepTracker, instance: Path) -> list[str]:
    """Discard the MLflow runs of trials that neither a Tune experiment of `instance`
    (one that can be restored) nor the ledger knows; returns their trial ids.

    A driver killed after a trial started but before Tune's next snapshot of the
    experiment (or before its first: the experiment is then started over) leaves such a
    run: the rerun does not know the trial and starts its parameters again under a new
    id, so the old run would show the same trial twice, RUNNING forever. It ran at most
    the snapshot period (1 s) beyond what Tune recorded, and never ended (an ended trial
    is in the ledger, and its run is kept)."""
    known = {r.trial_id for r in collect(instance)} | set(read_ledger(instance / LEDGER))
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
    from slotsweep.batches import Batches

    for path, is_eval in ((config.data.train, False), (config.data.val, True)):
        if "://" in str(path) or (config.data.synthetic and not Path(path).exists()):
            continue  # remote: checked when cached; synthetic: generated just below
        check_split(path)
        Batches.open(str(path), config.model, eval=is_eval)


def run_sweep(
    sweep: Sweep,
    *,
    num_samples: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    fresh: bool = False,
    verbose: int = 1,
) -> SweepResult:
    """Run or resume `sweep` on the connected Ray cluster; returns every trial's result."""
    spec = sweep.spec
    base = sweep.trial_config({})
    check_data(base)
    total = sweep.num_trials(num_samples)  # a grid: num_samples passes over the grid
    sweep_dir = Path(storage or spec.storage).resolve() / sweep.name
    check_storage(sweep_dir)
    instance = pick_instance(sweep_dir, fresh)
    instance.mkdir(parents=True, exist_ok=True)
    if base.data.synthetic:  # once, here, rather than racing in every trial
        ensure_synthetic(base.data, resolution=base.model.resolution)

    uri = tracking_uri or spec.tracking.uri or default_tracking_uri(sweep_dir)
    tracker = SweepTracker(uri, spec.tracking.experiment or sweep.name, sweep.name,
                           f"{sweep.name}/{instance.name}", artifact_root=sweep_dir / "mlartifacts")
    parent = tracker.parent_run()
    tracker.client.log_text(parent, sweep.path.read_text(), "sweep.yaml")
    ledger = instance / LEDGER
    callback = TrackingCallback(sweep, tracker, ledger, dataset_id(base))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, ledger=str(ledger),
                             work=str(instance / "work")),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
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
    _atomic_local_uploads()

    experiments = experiments_of(instance)
    discard_unrecorded(tracker, instance)
    stopped = False  # Ctrl-C: end here; the next run resumes the same experiment
    if experiments and tune.Tuner.can_restore(str(experiments[-1])):
        # resume_errored: a trial stopped by a storage fault continues from its checkpoint;
        # a trial that failed on its own replays its ledger entry or fails at once.
        tuner = tune.Tuner.restore(str(experiments[-1]), trainable, resume_unfinished=True,
                                   resume_errored=True)
        tuner.fit()
        stopped = not experiment_complete(experiments[-1])
    elif experiments:  # an experiment dir that never got its first snapshot: start over
        shutil.rmtree(experiments[-1])

    prior = collect(instance)
    missing = total - len(prior)
    if missing > 0 and not stopped:  # a new sweep, or an extension (--num-samples)
        name = f"tune-{len(experiments_of(instance)):03d}"
        atomic_write(instance / f"{name}-plan.json", json.dumps({"trials": missing}))
        if prior:  # what the extension's search is told, for the record
            atomic_write(instance / f"{name}-warm-start.json", json.dumps({
                "trial_ids": [r.trial_id for r in prior],
                "values": [r.metrics.get(spec.search.metric) for r in prior],
            }))
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(sweep),
            tune_config=tune.TuneConfig(
                search_alg=_search(sweep, prior, name), scheduler=_scheduler(sweep),
                metric=spec.search.metric, mode=spec.search.mode,
                num_samples=math.ceil(missing / sweep.grid_size()),
                reuse_actors=True,  # a worker process per trial costs ~5 s of imports
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(instance), callbacks=[callback],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                verbose=verbose,
            ),
        )
        tuner.fit()

    records = collect(instance)
    runs = {r.data.tags.get(TAG_TRIAL): r for r in tracker.trial_runs()}
    for rec in records:
        run = runs.get(rec.trial_id)
        if run is None or run.info.status != "RUNNING":
            continue
        if rec.outcome in UNFINISHED:  # Ctrl-C: it goes on when the sweep is rerun
            tracker.interrupt_trial(run.info.run_id)
        else:  # ended in Tune without our ledger entry (errored, or a lost write)
            tracker.end_trial(run.info.run_id, outcome=rec.outcome if rec.outcome in OUTCOMES
                              else "failed", error=rec.error)
    if len(records) >= total:
        tracker.end_sweep()
    return SweepResult(sweep.name, instance, uri, tracker.experiment_id, parent, records,
                       planned=total)


def connect(address: str | None, *, num_cpus: int | None = None) -> str:
    """Join a running cluster (`auto`, `ray://...`, host:port) or start a local one.

    Default: RAY_ADDRESS if set, else the cluster that `ray start` began on this machine
    (a `ray up` head node) while it is still up, else a new local instance. Another
    sweep's own local instance is never joined: it ends with that sweep's driver, and
    would take this sweep's trials with it. Returns what was joined.
    """
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or _ray_start_cluster() or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    if address == "local":
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(**kwargs)
    return address


def _ray_start_cluster() -> str | None:
    """The GCS address that the last `ray start` on this machine recorded, if its GCS
    still runs here (Ray's own rule for `ray.init()`, plus a liveness check, since a
    killed cluster leaves the record behind)."""
    try:
        from ray._private.services import find_gcs_addresses
        from ray._private.utils import read_ray_address

        recorded = read_ray_address()
        return recorded if recorded and recorded in find_gcs_addresses() else None
    except Exception:  # noqa: BLE001 - private helpers moved: start a local instance
        return None


def check_resources(sweep: Sweep, *, started_locally: bool) -> None:
    """Fail before any trial starts when no node could ever run one."""
    need = sweep.spec.resources
    have = ray.cluster_resources()
    if need.gpu > 0 and have.get("GPU", 0) == 0 and started_locally:
        raise ConfigError(
            f"{sweep.path}: resources.gpu: {need.gpu} GPU per trial, but this Ray cluster "
            "has no GPU; run it on the CPUs with --gpus-per-trial 0 --set train.device=cpu "
            "(or set resources.gpu: 0 and train.device: cpu), or on a GPU cluster"
        )
    if need.cpu > have.get("CPU", 0) and started_locally:
        raise ConfigError(
            f"{sweep.path}: resources.cpu: {need.cpu} CPUs per trial, but this Ray cluster "
            f"has {have.get('CPU', 0):g}; lower it (--cpus-per-trial N)"
        )
