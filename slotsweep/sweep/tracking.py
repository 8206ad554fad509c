"""MLflow tracking for sweeps: one parent run per sweep, one nested run per trial.

Why not Ray's `MLflowLoggerCallback`: it keeps its trial → run map in memory, so after
a restore every resumed trial got a second run and the first stayed RUNNING forever
(../shared/ENVIRONMENT.md). Here every lookup goes through MLflow itself: a trial's run
is found by its `trial_id` tag, and a metric step is logged only if it is beyond the
last step MLflow already holds for that run. Resuming therefore never duplicates a run
or a metric step, however the driver died.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

TAG_SWEEP = "slotsweep.sweep"
TAG_INSTANCE = "slotsweep.instance"
TAG_TRIAL = "slotsweep.trial_id"
TAG_ROLE = "slotsweep.role"
TAG_OUTCOME = "slotsweep.outcome"
TAG_ERROR = "slotsweep.error"
TAG_RETRIES = "slotsweep.retries"
TAG_RETRY_ERROR = "slotsweep.retry_error"
TAG_RESUMED_AT = "slotsweep.resumed_at"  # ms: when this driver took the trial over
TAG_SAME_AS = "slotsweep.same_as"  # a repeat of an ended trial's parameters: that trial
TAG_FRONT = "slotsweep.pareto_front"  # "true" / "false": a multi-objective sweep's front

TAG_WORKDIR = "slotsweep.workdir"  # a single `slotsweep train` run: its checkpoint folder

PAGE = 1000  # runs per search request; every search pages through all of them


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
               **kwargs: Any) -> list:
    """Every run that matches, however many: MLflow answers a page at a time."""
    runs: list = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  max_results=PAGE, page_token=token, **kwargs)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def default_tracking_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir.resolve() / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = 10.0) -> None:
    """An http(s) tracking URI must answer before a sweep starts: MLflow's client retries
    an unreachable server for minutes and then fails deep inside the sweep. Any HTTP
    answer (even 401 from an authenticating proxy) counts as reachable."""
    import urllib.error
    import urllib.request

    from slotsweep.config_io import ConfigError

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it (mlflow "
            "server --host 127.0.0.1 ...), fix --tracking-uri / $MLFLOW_TRACKING_URI, or "
            "unset them for the sqlite store in the sweep's storage") from None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None = None) -> str:
    """The id of experiment `name`, created if it does not exist yet."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (artifact_root / name).resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(
        name, artifact_location=location,
        # MLflow 3's UI opens GenAI pages for an experiment of unknown kind.
        tags={"mlflow.experimentKind": "custom_model_development"},
    )


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Params in batches of 100 (MLflow's limit per request)."""
    batch = [Param(k, _param_value(v)) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[start:start + 100])


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], *, step: int,
                 timestamp_ms: int, synchronous: bool = True) -> list:
    """The finite numbers of `metrics` at `step`, in batches of 500; queued unless `synchronous`."""
    batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)
             and math.isfinite(float(v))]
    return [client.log_batch(run_id, metrics=batch[start:start + 500], synchronous=synchronous)
            for start in range(0, len(batch), 500)]


def _logged_step(client: MlflowClient, run_id: str) -> int:
    """The last step MLflow holds for a run (-1: none), read from its `step` metric."""
    history = client.get_metric_history(run_id, "step")
    return max((int(m.value) for m in history), default=-1)


class SweepTracker:
    """Idempotent MLflow bookkeeping for one sweep instance (safe to re-create)."""

    def __init__(self, uri: str, experiment: str, sweep: str, instance: str,
                 artifact_root: Path | None = None) -> None:
        self.uri, self.experiment, self.sweep, self.instance = uri, experiment, sweep, instance
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent: str | None = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._queued: dict[str, list] = {}  # run id -> its last result's logging operations

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: keep only the settings.
        return {**self.__dict__, "_client": None, "_experiment_id": None, "_parent": None,
                "_runs": {}, "_last_step": {}, "_queued": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = experiment_id(self.client, self.experiment,
                                                self.artifact_root)
        return self._experiment_id

    def _find(self, *tags: str) -> list:
        return search_all(self.client, [self.experiment_id], " and ".join(tags))

    def parent_run(self) -> str:
        if self._parent is None:
            runs = self._find(f"tags.`{TAG_INSTANCE}` = '{self.instance}'",
                              f"tags.`{TAG_ROLE}` = 'sweep'")
            if runs:
                self._parent = runs[0].info.run_id
            else:
                run = self.client.create_run(self.experiment_id, run_name=self.instance, tags={
                    TAG_SWEEP: self.sweep, TAG_INSTANCE: self.instance, TAG_ROLE: "sweep",
                    "git_commit": git_commit(),
                })
                self._parent = run.info.run_id
            if self.client.get_run(self._parent).info.status != "RUNNING":
                self.client.update_run(self._parent, status="RUNNING")
        return self._parent

    def trial_run(self, trial_id: str, *, name: str, params: dict[str, Any],
                  tags: dict[str, str], config_yaml: str) -> str:
        """The trial's run: found by tag, or created with params, tags and its config."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        runs = self._find(f"tags.`{TAG_INSTANCE}` = '{self.instance}'",
                          f"tags.`{TAG_TRIAL}` = '{trial_id}'")
        if runs:
            # A run an earlier driver made: the sweep was resumed. The time marks the
            # pause in the run's metric timestamps, which the report's pace leaves out.
            run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            if TAG_OUTCOME in runs[0].data.tags:  # e.g. "interrupted": it runs again now
                self.client.delete_tag(run_id, TAG_OUTCOME)
            self.client.set_tag(run_id, TAG_RESUMED_AT, str(int(time.time() * 1000)))
        else:
            all_tags = {MLFLOW_PARENT_RUN_ID: self.parent_run(), MLFLOW_RUN_NAME: name,
                        TAG_SWEEP: self.sweep, TAG_INSTANCE: self.instance,
                        TAG_TRIAL: trial_id, TAG_ROLE: "trial", "git_commit": git_commit(),
                        **tags}
            run_id = self.client.create_run(self.experiment_id, run_name=name,
                                            tags=all_tags).info.run_id
            _log_params(self.client, run_id, params)
            self.client.log_text(run_id, config_yaml, "config.yaml")
            self._last_step[run_id] = -1  # a new run: no step to look up
        self._runs[trial_id] = run_id
        return run_id

    def last_step(self, run_id: str) -> int:
        if run_id not in self._last_step:
            self._last_step[run_id] = _logged_step(self.client, run_id)
        return self._last_step[run_id]

    def log_result(self, run_id: str, metrics: dict[str, Any], *, step: int,
                   timestamp_ms: int) -> bool:
        """Log one evaluation's metrics at `step` unless MLflow already has that step:
        queued (a trial's report waits for the driver), once the run's previous one is in."""
        if step <= self.last_step(run_id):
            return False
        self.wait(run_id)
        self._queued[run_id] = _log_metrics(self.client, run_id, metrics, step=step,
                                            timestamp_ms=timestamp_ms, synchronous=False)
        self._last_step[run_id] = step
        return True

    def wait(self, run_id: str | None = None) -> None:
        """Until the run's (None: every run's) queued metrics are stored; raises what failed."""
        for run in [run_id] if run_id else list(self._queued):
            for operation in self._queued.pop(run, []):
                operation.wait()

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def _end(self, run_id: str, status: str) -> None:
        # set_terminated less its async-queue shut-down: ~1 s in Tune's loop (a join)
        self.client._tracking_client.store.update_run_info(
            run_id, RunStatus.from_string(status), int(time.time() * 1000), None)

    def end_trial(self, run_id: str, *, outcome: str, error: str | None = None) -> None:
        """outcome: finished | stopped early | failed."""
        self.wait(run_id)
        tags = [RunTag(TAG_OUTCOME, outcome)]
        if error:
            tags.append(RunTag(TAG_ERROR, error[:4000]))
        self.client.log_batch(run_id, tags=tags)
        self._end(run_id, {"failed": "FAILED", "stopped early": "KILLED"}.get(outcome, "FINISHED"))

    def interrupt_trial(self, run_id: str) -> None:
        """The sweep stopped (Ctrl-C) with this trial unfinished: KILLED in MLflow's UI,
        outcome "interrupted" until a rerun resumes it (which clears the outcome)."""
        self.wait(run_id)
        self.client.set_tag(run_id, TAG_OUTCOME, "interrupted")
        self._end(run_id, "KILLED")

    def discard_trial(self, run_id: str, *, reason: str) -> None:
        """A run for a trial that no Tune experiment recorded (its driver died first):
        outcome "superseded", KILLED, then deleted (MLflow's soft delete: out of searches
        and the UI's default view, restorable with `mlflow runs restore`)."""
        self.client.log_batch(run_id, tags=[RunTag(TAG_OUTCOME, "superseded"),
                                            RunTag(TAG_ERROR, reason[:4000])])
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status="KILLED")
        self.client.delete_run(run_id)

    def record_retry(self, run_id: str, *, retries: int, error: str | None) -> None:
        """Ray restarted the trial from its checkpoint: same run, a retry count and why."""
        tags = [RunTag(TAG_RETRIES, str(retries))]
        if error:
            tags.append(RunTag(TAG_RETRY_ERROR, error[:4000]))
        self.client.log_batch(run_id, tags=tags)

    def tag_front(self, front: dict[str, bool]) -> None:
        """Tag each trial's run with whether it is on the Pareto front (trial id → bool);
        a rerun that moves the front re-tags every run it names."""
        for run in self.trial_runs():
            on = front.get(run.data.tags.get(TAG_TRIAL, ""))
            if on is not None and run.data.tags.get(TAG_FRONT) != str(on).lower():
                self.client.set_tag(run.info.run_id, TAG_FRONT, str(on).lower())

    def end_sweep(self, *, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run(), status=status)  # drains MLflow's queue

    def trial_runs(self) -> list:
        """Every trial run of this sweep instance."""
        return self._find(f"tags.`{TAG_INSTANCE}` = '{self.instance}'",
                          f"tags.`{TAG_ROLE}` = 'trial'")


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class RunTracker:
    """MLflow for one `slotsweep train` run (no sweep, no Ray): one MLflow run per
    workdir, found again by its tag when a rerun resumes from the workdir's checkpoint,
    so a resumed run continues its MLflow run and logs no step twice. Its `report` is the
    trainer's report callback."""

    def __init__(self, uri: str, experiment: str, workdir: Path, *, name: str,
                 params: dict[str, Any], config_yaml: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = experiment_id(self.client, experiment)
        workdir_tag = str(Path(workdir).resolve())
        found = search_all(self.client, [self.experiment_id],
                           f"tags.`{TAG_WORKDIR}` = '{workdir_tag}'")
        if found:  # a rerun: MLflow params cannot change, so the params stay the first
            # start's config, and config.yaml (rewritten below) is this start's
            self.run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags={
                TAG_WORKDIR: workdir_tag, TAG_ROLE: "train", "git_commit": git_commit(),
            }).info.run_id
            _log_params(self.client, self.run_id, params)
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        self.last_step = _logged_step(self.client, self.run_id)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        step = int(metrics.get("step", 0))
        if step <= self.last_step:  # resumed: MLflow has this step already
            return
        _log_metrics(self.client, self.run_id, metrics, step=step,
                     timestamp_ms=int(time.time() * 1000))
        self.last_step = step
        picture = Path(checkpoint_dir) / "masks.png" if checkpoint_dir else None
        if picture is not None and picture.is_file():
            self.client.log_artifact(self.run_id, str(picture), f"masks/step-{step:08d}")

    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED, or KILLED (interrupted: a rerun continues the run)."""
        self.client.set_terminated(self.run_id, status=status)


# ------------------------------------------------------------- reading runs back


@dataclass
class TrialRun:
    """A trial's MLflow run as read back (the report's input)."""

    trial_id: str
    run_id: str
    name: str
    status: str  # finished | stopped early | failed | running | interrupted | superseded
    error: str | None
    params: dict[str, str]  # as MLflow holds them: text
    metrics: dict[str, float]  # last values
    history: dict[str, list[Metric]]  # the metrics asked for: every logged point
    resumed_at: int | None  # ms: when a resumed driver took the trial over


def open_experiment(uri: str, name: str) -> tuple[MlflowClient, str | None]:
    """A client for the store at `uri` (checked first if it is a server) and the id of
    experiment `name` there, None if the store has no such experiment."""
    check_tracking_server(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    return client, None if found is None else found.experiment_id


def read_trial_runs(client: MlflowClient, experiment_id: str, instance: str | None,
                    histories: tuple[str, ...] = ()) -> list[TrialRun]:
    """Every trial run of a sweep instance (`sweep/run-001`; every instance if None),
    with the full history of each metric named in `histories` that the run has."""
    query = f"tags.`{TAG_ROLE}` = 'trial'" + (
        f" and tags.`{TAG_INSTANCE}` = '{instance}'" if instance else "")
    out = []
    for run in search_all(client, [experiment_id], query):
        tags = run.data.tags
        # Runs that ended before outcome tags existed: MLflow's own status says enough.
        status = tags.get(TAG_OUTCOME) or (
            "running" if run.info.status == "RUNNING" else
            {"FAILED": "failed", "KILLED": "stopped early"}.get(run.info.status, "finished"))
        resumed = tags.get(TAG_RESUMED_AT)
        out.append(TrialRun(
            trial_id=tags.get(TAG_TRIAL, run.info.run_id[:8]), run_id=run.info.run_id,
            name=tags.get(MLFLOW_RUN_NAME, ""), status=status, error=tags.get(TAG_ERROR),
            params=dict(run.data.params), metrics=dict(run.data.metrics),
            history={key: client.get_metric_history(run.info.run_id, key)
                     for key in histories if key in run.data.metrics},
            resumed_at=int(resumed) if resumed else None))
    return out


def latest_picture(client: MlflowClient, run_id: str, folder: str = "masks"
                   ) -> tuple[bytes | None, str | None]:
    """The newest picture a run logged under `folder/step-*/`, and its artifact path."""
    try:
        steps = client.list_artifacts(run_id, folder)
    except Exception:  # noqa: BLE001 - an unreachable artifact store: no picture
        return None, None
    if not steps:
        return None, None
    latest = sorted(steps, key=lambda f: f.path)[-1].path
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, latest, tmp))
        files = sorted(local.rglob("*.png")) if local.is_dir() else [local]
        return (files[0].read_bytes(), f"{latest}/{files[0].name}") if files else (None, None)
