"""A sweep's Tune experiments log result.json and progress.csv but no TensorBoard event
files (Tune's own callback assembly, no Ray cluster)."""

from __future__ import annotations

import os

import pytest
from ray.tune import constants
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.utils.callback import _create_default_callbacks

from slotsweep.sweep.tune_logs import (
    NO_TENSORBOARD,
    TUNE_CALLBACKS,
    NoTensorboardLogs,
    skip_tensorboard,
)

# Tune reads RAY_TUNE_CALLBACKS in newer releases (2.60 here), not at the floor, 2.41:
# there a sweep keeps writing event files, as it always did.
reads_callbacks = pytest.mark.skipif(
    not hasattr(constants, "RAY_TUNE_CALLBACKS_ENV_VAR"),
    reason="this Ray does not read RAY_TUNE_CALLBACKS")


@reads_callbacks
def test_tune_keeps_its_json_and_csv_logs_but_writes_no_event_files(monkeypatch):
    monkeypatch.setenv(TUNE_CALLBACKS, "")  # Tune reads "" as none; restored after
    kinds = {type(c) for c in _create_default_callbacks([])}
    assert TBXLoggerCallback in kinds  # tensorboardX is installed: Tune would add it
    skip_tensorboard()
    skip_tensorboard()  # every sweep of the process calls it: named once
    assert os.environ[TUNE_CALLBACKS] == NO_TENSORBOARD
    kinds = {type(c) for c in _create_default_callbacks([])}
    assert {CSVLoggerCallback, JsonLoggerCallback, NoTensorboardLogs} <= kinds
    assert TBXLoggerCallback not in kinds


def test_callbacks_a_user_named_stay(monkeypatch):
    monkeypatch.setenv(TUNE_CALLBACKS, "my_lab.callbacks.Slack")
    skip_tensorboard()
    assert os.environ[TUNE_CALLBACKS] == f"my_lab.callbacks.Slack,{NO_TENSORBOARD}"
