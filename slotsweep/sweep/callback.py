"""The Tune callback of a sweep: it mirrors every trial into MLflow (idempotently: a
resumed driver logs nothing twice) and records each trial that ends in the ledger."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ray.tune import Callback

from slotsweep.sweep.ledger import Ledger, ended_with
from slotsweep.sweep.space import active_params
from slotsweep.sweep.spec import VARIANT, Sweep
from slotsweep.sweep.storage import StorageFault, storage_fault, unwritable
from slotsweep.sweep.tracking import TAG_SAME_AS, SweepTracker
from slotsweep.sweep.trial import REPLAYED


def stop_on_storage_faults(method):
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
            raise StorageFault(f"{self.ledger.instance.parent}: the sweep storage {sign}"
                               ) from exc

    return wrapper


class TrackingCallback(Callback):
    """Mirrors trials into MLflow (idempotently) and records ended trials in the ledger."""

    # `Tuner.restore` brings back the RunConfig it pickled, callbacks and all: without
    # this, a resumed sweep would track with the first driver's callback, i.e. its
    # storage paths and tracking URI, even after the storage moved or `--tracking-uri`
    # changed. While a driver sets `current`, a callback unpickled takes its state.
    current: ClassVar[TrackingCallback | None] = None

    def __init__(self, sweep: Sweep, tracker: SweepTracker, ledger: Ledger,
                 dataset_id: str) -> None:
        self.sweep, self.tracker, self.ledger, self.dataset_id = sweep, tracker, ledger, dataset_id
        # Trials Tune's records of this instance held when the driver started them (the
        # driver sets it): what tells a search's repeat from a lost trial's stand-in.
        self.known: set[str] = set()
        self._run_ids: dict[str, str] = {}  # trial id -> MLflow run id, in this driver

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_run_ids": {}}  # a run id is looked up again after restore

    def __setstate__(self, state: dict[str, Any]) -> None:
        live = TrackingCallback.current
        self.__dict__.update(state if live is None else live.__dict__)
        self.__dict__.setdefault("_run_ids", {})  # pickled before the field existed

    def get_state(self) -> None:
        """Tune calls this before each snapshot of the experiment: results queued for
        MLflow are stored first, so no snapshot names a checkpoint whose metrics a dying
        driver could lose (a trial resumed from it would not send them again)."""
        self.tracker.wait()

    def _run(self, trial) -> str:
        """The trial's MLflow run id, found or created once per trial in this driver:
        every result and checkpoint asks for it, and building the run's config YAML
        each time cost the driver ~6 ms per report while the trial waited on it."""
        if trial.trial_id not in self._run_ids:
            self._run_ids[trial.trial_id] = self._find_or_create_run(trial)
        return self._run_ids[trial.trial_id]

    def _find_or_create_run(self, trial) -> str:
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
        sign = storage_fault(error)
        if sign is None and not self.ledger.instance.remote:
            sign = unwritable(self.ledger.instance.path)
        return sign

    def _replay(self, trial) -> bool:
        return self.ledger.ended_before(trial.trial_id, trial.config) is not None

    @stop_on_storage_faults
    def on_trial_start(self, iteration, trials, trial, **info):
        if not self._replay(trial):
            self._run(trial)

    @stop_on_storage_faults
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "step" not in result or result.get(REPLAYED):
            return
        run = self._run(trial)
        metrics = _metrics(result)
        self.tracker.log_result(run, metrics, step=int(result["step"]),
                                timestamp_ms=int(result.get("timestamp", 0) * 1000))

    @stop_on_storage_faults
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if (trial.last_result or {}).get(REPLAYED):
            return
        step = int(trial.last_result.get("step", 0))
        with _picture(checkpoint) as picture:
            if picture is not None:
                self.tracker.log_artifact(self._run(trial), picture, f"masks/step-{step:08d}")

    def _end(self, trial, outcome: str, error: str | None = None) -> None:
        run = self._run(trial)
        self.tracker.end_trial(run, outcome=outcome, error=error)
        last = _metrics(trial.last_result or {})
        self.ledger.append({"trial_id": trial.trial_id, "outcome": outcome,
                            "params": trial.config, "metrics": last, "error": error})

    @stop_on_storage_faults
    def on_trial_recover(self, iteration, trials, trial, **info):
        """Ray retries the trial (FailureConfig) from its last checkpoint, in the same run."""
        if self._replay(trial):
            return
        self.tracker.record_retry(self._run(trial), retries=int(trial.num_failures),
                                  error=_error_line(trial))

    def _repeat_of(self, trial, trials) -> dict[str, Any] | None:
        """For a trial that replayed a ledger entry: that entry, when the trial is the
        search's own repeat of parameters that another trial Tune knows ended with (a
        small discrete space makes Optuna suggest some twice); None when it replayed its
        own entry, or stands in for a trial that Tune lost with a driver (the ledger is
        then that trial's record, and `driver.collect` gives it this trial's result)."""
        entries = self.ledger.read()
        original = None if trial.trial_id in entries else ended_with(entries, trial.config)
        if original is None:
            return None
        known = self.known | {t.trial_id for t in trials if t is not trial}
        return original if original["trial_id"] in known else None

    def _record_repeat(self, trial, original: dict[str, Any]) -> None:
        """A repeat is a trial of its own: its own run (with the result it replayed, and
        which trial it repeats) and ledger entry. It trained nothing: trials are
        deterministic given their parameters."""
        run = self._run(trial)
        self.tracker.client.set_tag(run, TAG_SAME_AS, original["trial_id"])
        metrics = dict(original.get("metrics") or {})
        if "step" in metrics:
            self.tracker.log_result(run, metrics, step=int(metrics["step"]),
                                    timestamp_ms=int(time.time() * 1000))
        self.tracker.end_trial(run, outcome=original["outcome"], error=original.get("error"))
        self.ledger.append({"trial_id": trial.trial_id, "outcome": original["outcome"],
                            "params": trial.config, "metrics": metrics,
                            "error": original.get("error"), "same_as": original["trial_id"]})

    @stop_on_storage_faults
    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get(REPLAYED):
            original = self._repeat_of(trial, trials)
            if original is not None:
                self._record_repeat(trial, original)
            return
        done = int(last.get("step", 0)) >= self.sweep.trial_config(trial.config).train.steps
        self._end(trial, "finished" if done else "stopped early")

    @stop_on_storage_faults
    def on_trial_error(self, iteration, trials, trial, **info):
        if self._replay(trial):
            return
        error = _error_line(trial)
        sign = self.storage_sign(error)
        if sign is not None:  # not the trial's fault: stop, and resume it next time
            raise StorageFault(f"{self.ledger.instance.parent}: the sweep storage {sign} "
                               f"(trial {trial.trial_id} could not write its checkpoint)")
        self._end(trial, "failed", error)


@contextlib.contextmanager
def _picture(checkpoint) -> Iterator[Path | None]:
    """The checkpoint's mask picture as a local file, if it has one: the file itself on a
    local storage, a temporary copy when the checkpoint is in object storage."""
    from pyarrow import fs as pafs

    key = f"{checkpoint.path.rstrip('/')}/masks.png"
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield Path(key) if Path(key).is_file() else None
        return
    if checkpoint.filesystem.get_file_info(key).type != pafs.FileType.File:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="slotsweep-picture-") as tmp:
        local = Path(tmp) / "masks.png"
        with checkpoint.filesystem.open_input_stream(key) as fin:
            local.write_bytes(fin.read())
        yield local


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
