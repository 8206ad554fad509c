"""The trial side of a sweep: the Tune trainable that runs in a Ray worker, and the
ledger of ended trials it reads.

Kept apart from `slotsweep.sweep` (the driver: search, tracking, resume), so that a
trial's worker process imports torch and Ray Tune but not MLflow or Optuna: ~1 s less
for every worker a sweep starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Checkpoint

from slotsweep.config_io import ConfigError
from slotsweep.data.format import ShardError
from slotsweep.sweep.ledger import Ledger
from slotsweep.sweep.location import Location
from slotsweep.sweep.placement import placement
from slotsweep.sweep.spec import Sweep
from slotsweep.training import checkpoint as ckpt
from slotsweep.training.loop import NonFiniteLossError, OutOfMemoryError, fit

RESENT = "slotsweep/resent"  # a result sent again from the trial's checkpoint
REPLAYED = "slotsweep/replayed"  # a ledger entry's result, handed to Tune without training


def run_trial(params: dict[str, Any], *, sweep: Sweep, instance: str) -> None:
    """The Tune trainable: build the TrialConfig, resume, and run the shared trainer.
    `instance`: the sweep instance's folder (local path or URI)."""
    ctx = tune.get_context()
    recorded = Ledger(instance).ended_before(ctx.get_trial_id(), params)
    if recorded is not None:
        # This trial (or one with exactly these parameters) ended before the driver died,
        # after Tune's last snapshot: do not train again; hand Tune the recorded result.
        tune.report({**recorded["metrics"], REPLAYED: 1})
        return
    config = sweep.trial_config(params)
    shared = Location.of(instance) / "work" / ctx.get_trial_id()
    workdir = trainer_workdir(shared)
    restored = tune.get_checkpoint()
    local = ckpt.latest(workdir / "checkpoints")
    resume_from = local
    if restored is not None:
        try:
            restored_dir = Path(restored.to_directory(str(workdir / "restored")))
            restored_step = int(ckpt.load(restored_dir)["step"])
        except (OSError, ckpt.CheckpointError) as exc:
            # A stale snapshot can name a checkpoint that num_to_keep already deleted.
            print(f"Tune's checkpoint {restored.path} is unusable ({exc}); "
                  f"resuming from {local or 'the start'}", flush=True)
        else:
            local_step = int(ckpt.load(local)["step"]) if local else -1
            # The trial's own newer checkpoint (same trajectory) beats a stale snapshot.
            resume_from = local if local_step > restored_step else restored_dir

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, **placement(config.train.device)}, checkpoint=checkpoint)

    resent = ckpt.reported(local) if local is not None and resume_from is local else None
    if resent is not None:
        # Tune's record (absent, unusable or older) ends before the trial's own last
        # evaluation (the driver died before it took that report in): send it again, so
        # the step is not missing, nor the whole result when that was the trial's last
        # step (then `fit` has nothing left to do). MLflow logs a step once; Tune's log
        # may hold it twice.
        report({**resent, RESENT: 1}, str(local))

    failed = shared / FAILED
    if failed.exists():
        # A retry (FailureConfig) of a trial whose error does not depend on the worker:
        # training again would fail the same way, so fail at once with the same message.
        raise TrialFailed(json.loads(failed.read_text())["error"])
    try:
        fit(config, report, workdir=workdir, resume_from=resume_from,
            log=lambda s: print(s, flush=True))
    except DETERMINISTIC as exc:
        message = f"{type(exc).__name__}: {exc}"
        shared.mkdir()
        failed.write(json.dumps({"error": message}))
        raise TrialFailed(message) from None


def trainer_workdir(shared: Location) -> Path:
    """Where the trainer keeps its own checkpoints. On a local (or NFS) storage, the
    trial's folder there, so that a resumed trial finds them after the driver restarts.
    On object storage, a folder on this node's disk: the trainer writes plain files, and
    Tune uploads each checkpoint it reports to the storage, where any node resumes it."""
    if not shared.remote:
        return shared.path
    root = Path(os.environ.get("SLOTSWEEP_WORK", Path.home() / ".cache/slotsweep/work"))
    return root / hashlib.sha256(shared.parent.uri.encode()).hexdigest()[:16] / shared.name


class TrialFailed(RuntimeError):
    """A trial's own error (NaN loss, bad data, out of memory): retrying cannot help."""


FAILED = "failed.json"
DETERMINISTIC = (NonFiniteLossError, OutOfMemoryError, ShardError, ConfigError,
                 ckpt.CheckpointError)
