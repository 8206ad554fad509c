"""Self-describing training checkpoints, written atomically, loaded without pickle code.

A checkpoint is a directory `step-00001000/` holding `state.pt` (model, optimizer,
step, RNG state) and `config.yaml` (the resolved trial config). It is written under a
temporary name and renamed when complete, so a crash never leaves a half checkpoint
where `latest()` would find it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from slotsweep.files import TMP_SUFFIX, atomic_path

STATE = "state.pt"
CONFIG = "config.yaml"
REPORTED = "reported.json"  # in an evaluation's checkpoint: the metrics reported with it
_PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names its path."""


def save(
    root: str | Path, step: int, state: dict[str, Any], config_yaml: str, *, keep: int = 2,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write `root/step-NNNNNNNN/` atomically (plus any extra `files`, e.g. a mask
    picture); keep the newest `keep`. Returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    for stale in [*root.glob(f".{_PREFIX}*{TMP_SUFFIX}"), *root.glob(".tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # a crash's half checkpoint (one writer)
    if final.exists():  # the same step written again after a resume: replace it
        shutil.rmtree(final)
    with atomic_path(final) as tmp:  # a directory: its files are synced, then it is renamed
        tmp.mkdir()
        torch.save(state, tmp / STATE)
        (tmp / CONFIG).write_text(config_yaml)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
    for old in all_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def all_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(root: str | Path) -> Path | None:
    found = all_checkpoints(root)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """The checkpoint that `path` names: a step-N directory itself, or the latest one in a
    checkpoints/ directory or in a run's folder (the trainer's workdir, which holds
    checkpoints/)."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    for root in (path, path / "checkpoints"):
        if (found := latest(root)) is not None:
            return found
    what = "no such directory" if not path.is_dir() else (
        f"no checkpoint here ({_PREFIX}N/{STATE}, or checkpoints/{_PREFIX}N/{STATE})")
    raise CheckpointError(f"{path}: {what}")


def reported(path: str | Path) -> dict[str, Any] | None:
    """The metrics reported with the evaluation checkpoint at `path`, or None for a
    checkpoint that no evaluation wrote."""
    file = Path(path) / REPORTED
    return json.loads(file.read_text()) if file.is_file() else None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load `path/state.pt` with `weights_only=True`: tensors and plain data only."""
    file = Path(path) / STATE
    if not file.is_file():
        raise CheckpointError(f"{file}: no checkpoint state here (expected {STATE})")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, wrong format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{file}: cannot load checkpoint ({first}); delete this checkpoint directory "
            "to resume from an earlier one"
        ) from None
