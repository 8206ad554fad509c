"""The shared trainer: `fit(config, report=...)` — pure PyTorch, no Ray, no MLflow.

Every sweep trial and the single-run CLI run this. It seeds everything, trains with
Adam under a warmup + exponential-decay schedule, evaluates on the validation shards
with deterministic slot initialisation, writes self-describing checkpoints atomically,
and resumes from the latest one so that a resumed run continues the same trajectory.
Results leave only through `report(metrics, checkpoint_dir)`.

On a GPU the step never waits for the host: loss terms are summed on the device and read
at logging intervals, batches arrive in pinned memory (or are gathered from the split
staged in device memory), Adam is fused, and bf16 autocast / torch.compile are flags
(`train.precision`, `train.compile`) that run on the CPU too.

The command line is `slotsweep/train.py` (`python -m slotsweep.train CONFIG`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from slotsweep.config import TrainConfig, TrialConfig
from slotsweep.data.batches import Batches, free_device_bytes, stage_on_device, to_model_inputs
from slotsweep.data.sources.synthetic import default_workers, ensure_synthetic
from slotsweep.losses import compute_losses
from slotsweep.models import build_model
from slotsweep.training import checkpoint
from slotsweep.training.devices import pick_device
from slotsweep.training.evaluate import evaluate

Report = Callable[[dict[str, float], str | None], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf; the message names the step and every loss term."""


class OutOfMemoryError(MemoryError):
    """A step needed more device memory than there is; names the step and batch size."""


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):  # CUDA (and other accelerators)
        return True
    text = str(exc)  # the CPU allocator raises a plain RuntimeError
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower())


def get_lr(step: int, train: TrainConfig) -> float:
    """Linear warmup, then lr × decay_rate^(t / decay_steps) (Locatello et al.).

    t counts from step 0 (Slot Attention, the authors) or from the end of warmup
    (DINOSAUR), per `train.decay_after_warmup`.
    """
    warmup = min(1.0, (step + 1) / train.warmup_steps) if train.warmup_steps else 1.0
    t = max(0, step - train.warmup_steps) if train.decay_after_warmup else step
    return train.lr * warmup * train.decay_rate ** (t / train.decay_steps)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Window:
    """Sums of loss terms since the last read, kept on the device (no sync per step).

    It also remembers the first step whose loss was not finite, with its terms, so the
    error can name them even though it is only checked at logging points.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()
        self.first_bad = torch.tensor(-1, device=device)
        self.bad_terms: torch.Tensor | None = None
        self.names: list[str] = []

    def reset(self) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        if not self.names:
            self.names = list(terms)
        values = torch.stack([terms[n].detach().float() for n in self.names])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        bad = ~torch.isfinite(values).all() & (self.first_bad < 0)
        self.first_bad = self.first_bad.masked_fill(bad, step)  # a scalar: no host copy
        prev = values if self.bad_terms is None else self.bad_terms
        self.bad_terms = torch.where(bad, values, prev)

    def check(self) -> None:
        step = int(self.first_bad)
        if step >= 0:
            assert self.bad_terms is not None  # set by the add() that set first_bad
            values = ", ".join(
                f"{n}={v:.6g}" for n, v in zip(self.names, self.bad_terms.tolist(), strict=True)
            )
            raise NonFiniteLossError(f"non-finite loss at step {step}: {values}")

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        assert self.sums is not None  # count > 0: add() has run since reset()
        values = (self.sums / self.count).tolist()
        self.reset()
        return {f"train/{n}": v for n, v in zip(self.names, values, strict=True)}


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device):
    """Adam; fused into one kernel per step on CUDA (same update, fewer launches)."""
    fused = True if device.type == "cuda" else None  # None: torch's default for the CPU
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def training_batches(
    train_set: Batches, config: TrialConfig, device: torch.device, *, start: int,
    log: Callable[[str], None] | None = None,
):
    """Endless training batches from step `start`: from the split staged in device
    memory when `data.stage` says so, otherwise streamed from the shards."""
    tc, data = config.train, config.data
    nbytes = train_set.nbytes()
    if stage_on_device(data, nbytes=nbytes, device=device, free_bytes=free_device_bytes(device)):
        staged = train_set.stage(device)
        if log:
            log(f"staged the training split on {device} ({nbytes / 1e9:.2f} GB)")
        return train_set.staged_batches(
            staged, start=start, batch_size=tc.batch_size, seed=config.seed
        )
    return train_set.train_batches(
        start=start, batch_size=tc.batch_size, seed=config.seed,
        num_workers=data.num_workers, pin_memory=device.type == "cuda",
    )


def train_step(model, optimizer, batch, config: TrialConfig, step: int, device: torch.device):
    """One optimisation step; returns the loss terms as device tensors (no sync)."""
    for group in optimizer.param_groups:
        group["lr"] = get_lr(step, config.train)
    inputs, target, _ = to_model_inputs(batch, config.model, device)
    with torch.autocast(device.type, torch.bfloat16, enabled=config.train.precision == "bf16"):
        outputs = model(inputs)
    terms = compute_losses(outputs, target, config.loss, step=step)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    optimizer.step()
    return terms


def _state(model, optimizer, step: int, elapsed: float, device: torch.device) -> dict:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed,
        "rng_torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore(path: Path, model, optimizer, device: torch.device) -> tuple[int, float]:
    state = checkpoint.load(path, map_location=device)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the saved run's device may have differed
            group["fused"] = optimizer.defaults["fused"]
    except (KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise checkpoint.CheckpointError(
            f"{path}: checkpoint does not match this config's model ({first})"
        ) from None
    torch.set_rng_state(state["rng_torch"].cpu())
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
    return int(state["step"]), float(state.get("elapsed_s", 0.0))


def fit(
    config: TrialConfig,
    report: Report | None = None,
    *,
    workdir: str | Path,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, float]:
    """Train `config` to `config.train.steps`; returns the last evaluation's metrics.

    Checkpoints go to `workdir/checkpoints/`; training resumes from `resume_from` or,
    if not given, from the latest checkpoint there. `report(metrics, checkpoint_dir)`
    is called after every evaluation with the checkpoint just written.

    One loop to read top to bottom (about 60 lines, on purpose): what happens at a step
    (train, log, evaluate, checkpoint, report) is decided and done in one place.
    """
    ckpt_root = Path(workdir) / "checkpoints"
    seed_everything(config.seed)
    device = pick_device(config.train.device)
    train_set, val_set = _open_splits(config)
    model = build_model(config.model, config.loss).to(device)
    optimizer = make_optimizer(model, config.train.lr, device)
    config_yaml = config.to_yaml()

    step, elapsed = 0, 0.0
    start_from = Path(resume_from) if resume_from else checkpoint.latest(ckpt_root)
    if start_from is not None:
        step, elapsed = _restore(start_from, model, optimizer, device)
        if log:
            log(f"resumed from {start_from} at step {step}")
        if step >= config.train.steps:  # nothing left to train: what it ended with
            return checkpoint.reported(start_from) or {}
    forward = torch.compile(model) if config.train.compile else model

    tc = config.train
    batches = training_batches(train_set, config, device, start=step, log=log)
    window = _Window(device)
    metrics: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    picture: bytes | None = None
    tick, tick_step = time.perf_counter(), step
    model.train()
    while step < tc.steps:
        window.add(step, _guarded_step(forward, optimizer, next(batches), config, step, device))
        step += 1
        is_eval = step % config.eval.every == 0 or step == tc.steps
        is_ckpt = is_eval or step % tc.checkpoint_every == 0
        if not (is_eval or is_ckpt or step % tc.log_every == 0):
            continue
        window.check()  # before anything is saved: never checkpoint a NaN model
        now = time.perf_counter()
        elapsed += now - tick
        rate = (step - tick_step) / max(now - tick, 1e-9)
        tick, tick_step = now, step
        if step % tc.log_every == 0 or is_eval:
            metrics.update(window.means())
            metrics.update({"step": step, "lr": get_lr(step - 1, tc),
                            "time/steps_per_s": rate, "time/elapsed_s": elapsed})
        if is_eval:
            last_eval, picture = _evaluate_and_probe(model, val_set, config, step, device)
            metrics.update(last_eval)
            tick = time.perf_counter()  # evaluation time is not training time
        if log and (step % tc.log_every == 0 or is_eval):
            log(progress_line(metrics, tc.steps))
        if is_ckpt:
            files = {"masks.png": picture} if is_eval and picture else {}
            if is_eval:  # what was reported with it, for a caller that must re-send it
                files[checkpoint.REPORTED] = json.dumps(metrics, sort_keys=True).encode()
            saved = checkpoint.save(ckpt_root, step,
                                    _state(model, optimizer, step, elapsed, device),
                                    config_yaml, files=files)
            if is_eval and report is not None:
                report(dict(metrics), str(saved))
    return {**metrics, **last_eval}


def _open_splits(config: TrialConfig) -> tuple[Batches, Batches]:
    """The training and validation splits (the synthetic set generated first if it is
    missing); a probe needs the object properties, so their absence fails here."""
    if config.data.synthetic:
        # As many generating processes as this trainer has threads: inside a Ray trial,
        # the CPUs it was given (Ray sets OMP_NUM_THREADS), not the whole node.
        ensure_synthetic(config.data, resolution=config.model.resolution,
                         workers=min(default_workers(), torch.get_num_threads()))
    train_set = Batches.open(config.data.train, config.model, eval=False)
    val_set = Batches.open(config.data.val, config.model, eval=True)
    if config.eval.probe:
        from slotsweep.data.reader import ShardDataset

        for split in (config.data.train, config.data.val):
            if "objects" not in ShardDataset(split).columns:
                raise ValueError(f"eval.probe: {split} has no objects column (the probe "
                                 "predicts object properties; synthetic dSprites has them)")
    return train_set, val_set


def _guarded_step(model, optimizer, batch, config: TrialConfig, step: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """`train_step`, with running out of memory said as what to change."""
    try:
        return train_step(model, optimizer, batch, config, step, device)
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not _is_oom(exc):
            raise
        raise OutOfMemoryError(
            f"out of {device.type} memory at step {step + 1} with train.batch_size="
            f"{config.train.batch_size} ({str(exc).splitlines()[0][:200]}); lower "
            "train.batch_size or model sizes, or give each trial more memory"
            + (" (a larger resources.gpu share)" if device.type == "cuda" else "")
        ) from None


def _evaluate_and_probe(model, val_set: Batches, config: TrialConfig, step: int,
                        device: torch.device) -> tuple[dict[str, float], bytes | None]:
    """The evaluation's metrics and mask picture; at the last step, with the probe's
    scores when the config asks for the probe."""
    metrics, picture = evaluate(model, val_set, config, step=step, device=device)
    if config.eval.probe and step == config.train.steps:  # the final model only
        from slotsweep.training.probe import probe_model

        metrics.update(probe_model(model, config, device, seed=config.seed))
        model.train()
    return metrics, picture


def progress_line(m: dict[str, float], total: int) -> str:
    """`step 1200/5000 | loss 0.0123 (recon 0.012, covariance 3e-4) | lr 2.0e-04 | ...`"""
    terms = ", ".join(
        f"{k.removeprefix('train/')} {v:.4g}"
        for k, v in m.items()
        if k.startswith("train/") and k != "train/loss"
    )
    parts = [f"step {m.get('step', 0):>{len(str(total))}}/{total}"]
    if "train/loss" in m:
        parts.append(f"loss {m['train/loss']:.4g}" + (f" ({terms})" if terms else ""))
    parts += [f"lr {m.get('lr', math.nan):.1e}", f"{m.get('time/steps_per_s', 0):.2f} steps/s"]
    if "val/fg_ari" in m:
        parts.append(f"FG-ARI {m['val/fg_ari']:.3f} mBO {m['val/mbo']:.3f}")
    return " | ".join(parts)
