"""Feature-prediction probe (paper Sec. 4.2.2, Table 2; Dittadi et al. 2021).

From a frozen model's slots, an MLP with one hidden layer predicts each object's shape
(3 classes), colour (r, g, b), scale, x and y. Predictions are matched to the visible
ground-truth objects of each image by the Hungarian algorithm on the per-pair loss
(`scipy.optimize.linear_sum_assignment`), and the probe trains on the matched pairs.
Reported on a held-out split: shape accuracy and R² for the rest. Seeded; normalisation
statistics come from the training split only.

The command line is `slotsweep/probe.py` (`python -m slotsweep.probe CHECKPOINT`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from tqdm import tqdm

from slotsweep.data.sources.dsprites import FIELD_INDEX

NUM_SHAPES = 3
TARGETS = ("r", "g", "b", "scale", "x", "y")  # regressed, R² each


def match(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of rows (objects) to columns (slots)."""
    return linear_sum_assignment(cost)


@dataclass
class ProbeData:
    """Slots [N, K, D] and each image's visible objects: shape [N, O] (int), targets
    [N, O, 6], visible [N, O] (bool)."""

    slots: np.ndarray
    shape: np.ndarray
    targets: np.ndarray
    visible: np.ndarray

    @classmethod
    def from_objects(cls, slots: np.ndarray, objects: np.ndarray) -> ProbeData:
        """`objects` float32 [N, O, F] in the generator's OBJECT_FIELDS layout."""
        cols = [FIELD_INDEX[name] for name in TARGETS]
        return cls(slots=slots.astype(np.float32),
                   shape=objects[..., FIELD_INDEX["shape"]].astype(np.int64),
                   targets=objects[..., cols].astype(np.float32),
                   visible=objects[..., FIELD_INDEX["visible"]] > 0)


class Probe(nn.Module):
    def __init__(self, slot_size: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(slot_size, hidden), nn.ReLU(),
                                 nn.Linear(hidden, NUM_SHAPES + len(TARGETS)))

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(slots)  # (..., 3 + 6)
        return out[..., :NUM_SHAPES], out[..., NUM_SHAPES:]


def _pair_cost(logits, regs, shape, targets, *, with_shape: bool) -> torch.Tensor:
    """Per image: cost [O, K] of predicting object o with slot k (CE + MSE)."""
    mse = ((regs[None, :, :] - targets[:, None, :]) ** 2).mean(-1)  # (O, K)
    if not with_shape:
        return mse
    return mse - F.log_softmax(logits, -1)[:, shape].T


def _matched(probe, data: ProbeData, mean, std, idx, *, with_shape: bool = True):
    """Training matches on the whole loss. Evaluation matches on the continuous
    properties only, so shape accuracy is not inflated by picking, among K slots, one
    that happens to predict the right class."""
    """Predictions of the matched slots for the visible objects of images `idx`."""
    slots = torch.from_numpy(data.slots[idx])
    logits, regs = probe(slots)  # (B, K, 3), (B, K, 6)
    targets = (torch.from_numpy(data.targets[idx]) - mean) / std
    out: tuple[list[torch.Tensor], ...] = ([], [], [], [])
    for b in range(len(idx)):
        vis = np.flatnonzero(data.visible[idx[b]])
        if vis.size == 0:
            continue
        shape = torch.from_numpy(data.shape[idx[b], vis])
        cost = _pair_cost(logits[b], regs[b], shape, targets[b, vis], with_shape=with_shape)
        rows, cols = match(cost.detach().numpy())
        out[0].append(logits[b, cols])
        out[1].append(regs[b, cols])
        out[2].append(shape[rows])
        out[3].append(targets[b, vis][rows])
    return [torch.cat(x) for x in out]


def train_probe(train: ProbeData, *, hidden: int = 256, epochs: int = 60,
                batch_size: int = 64, lr: float = 1e-3, seed: int = 0):
    """Fit the probe on `train`; returns (probe, mean, std) for `evaluate_probe`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vis = train.targets[train.visible]
    mean = torch.from_numpy(vis.mean(0))
    std = torch.from_numpy(vis.std(0) + 1e-6)
    probe = Probe(train.slots.shape[-1], hidden)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc="probe", unit="epoch", dynamic_ncols=True,
                  disable=None, leave=False):  # a bar on a terminal only
        order = rng.permutation(len(train.slots))
        for start in range(0, len(order), batch_size):
            logits, regs, shape, targets = _matched(probe, train, mean, std,
                                                    order[start:start + batch_size])
            loss = F.cross_entropy(logits, shape) + F.mse_loss(regs, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe, mean, std


@torch.no_grad()
def evaluate_probe(probe, mean, std, data: ProbeData) -> dict[str, float]:
    """Shape accuracy and per-property R² on matched pairs of `data`."""
    logits, regs, shape, targets = _matched(probe, data, mean, std, np.arange(len(data.slots)),
                                            with_shape=False)
    preds, truth = regs * std + mean, targets * std + mean
    out = {"probe/shape_acc": float((logits.argmax(-1) == shape).double().mean())}
    r2 = 1 - ((preds - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    for name, value in zip(TARGETS, r2.tolist(), strict=True):
        out[f"probe/{name}_r2"] = value
    out["probe/color_r2"] = float(r2[:3].mean())
    return out


def run_probe(train: ProbeData, val: ProbeData, **kw) -> dict[str, float]:
    probe, mean, std = train_probe(train, **kw)
    return evaluate_probe(probe, mean, std, val)


@torch.no_grad()
def collect(model, path: str, config, *, max_images: int, device) -> ProbeData:
    """Frozen slots (deterministic eval init) and objects of a split's first images."""
    from slotsweep.data.batches import Batches, to_model_inputs
    from slotsweep.data.reader import ShardDataset

    shards = ShardDataset(path)
    if "objects" not in shards.columns:
        raise ValueError(f"{path}: no objects column; the probe needs object properties")
    batches = Batches.open(path, config.model, eval=True)
    model.eval()
    slots = []
    for batch in batches.eval_batches(config.eval.batch_size, max_images):
        inputs, _, _ = to_model_inputs(batch, config.model, device)
        slots.append(model(inputs)["slots"].float().cpu().numpy())
    n = sum(len(s) for s in slots)
    objects = shards.get_batch(np.arange(n))["objects"]
    return ProbeData.from_objects(np.concatenate(slots), objects)


def probe_model(model, config, device, *, train_images: int | None = None,
                seed: int = 0) -> dict[str, float]:
    """The probe on a trained model: train on the training split, score on validation."""
    train = collect(model, config.data.train, config,
                    max_images=train_images or config.eval.probe_train_images, device=device)
    val = collect(model, config.data.val, config, max_images=config.eval.max_images,
                  device=device)
    return run_probe(train, val, seed=seed)
