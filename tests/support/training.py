"""Helpers shared by tests/unit/test_train.py and its end-to-end half."""

from __future__ import annotations

import torch

from slotsweep.training import checkpoint


def _params(workdir):
    return checkpoint.load(checkpoint.latest(workdir / "checkpoints"))["model"]


def _finite_params(workdir):
    return all(torch.isfinite(v).all() for v in _params(workdir).values())
