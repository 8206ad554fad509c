"""Which of Tune's own per-trial logs a sweep writes: result.json and progress.csv (the
tests and `placement` read them), not TensorBoard event files.

Tune adds its TensorBoard logger to every experiment when tensorboardX is installed;
that logger flushes the trial's event file after every result (tensorboardX fsyncs it),
in the driver loop that each trial's `tune.report` waits on.
A sweep tracks in MLflow and never reads those files. Tune skips its own TensorBoard
logger when one is already in the callbacks; `skip_tensorboard` names this one in
RAY_TUNE_CALLBACKS, which Tune reads for new and restored experiments alike. (Ray
releases that do not read it, such as the floor 2.41, keep writing the event files.)
"""

from __future__ import annotations

import os

from ray.tune.logger import LoggerCallback, TBXLoggerCallback


class NoTensorboardLogs(TBXLoggerCallback):
    """Takes the place of Tune's TensorBoard logger and writes nothing."""

    def __init__(self) -> None:  # no tensorboardX writer (nor import)
        LoggerCallback.__init__(self)

    log_trial_start = LoggerCallback.log_trial_start
    log_trial_result = LoggerCallback.log_trial_result
    log_trial_end = LoggerCallback.log_trial_end


TUNE_CALLBACKS = "RAY_TUNE_CALLBACKS"  # Tune's variable: callback classes by import path
NO_TENSORBOARD = f"{__name__}.{NoTensorboardLogs.__name__}"


def skip_tensorboard() -> None:
    """Name `NoTensorboardLogs` in RAY_TUNE_CALLBACKS (after any callbacks a user named
    there) for the experiments this process starts or restores."""
    named = [c.strip() for c in os.environ.get(TUNE_CALLBACKS, "").split(",") if c.strip()]
    if NO_TENSORBOARD not in named:
        os.environ[TUNE_CALLBACKS] = ",".join([*named, NO_TENSORBOARD])
