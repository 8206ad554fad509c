"""Trivial baselines, so nobody mistakes block-like masks for objects.

"one slot" puts every pixel in one mask; "blocks NxN" cuts the image into an N×N grid
of equal blocks (DINOSAUR reports the same "block masks" baseline on COCO). For the
reconstruction, "flat" paints each image's mean colour (or mean token) everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from slotsweep.metrics.scores import fg_ari, mbo, nanmean, stripe_score

if TYPE_CHECKING:
    from slotsweep.config import TrialConfig

GRIDS = (2, 3, 4)


def block_masks(grid: int, height: int, width: int) -> torch.Tensor:
    """One-hot masks [grid², H, W] of an even grid×grid partition of the image."""
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    cell = rows[:, None] * grid + cols[None, :]  # (H, W)
    return torch.nn.functional.one_hot(cell, grid * grid).permute(2, 0, 1).float()


def flat_reconstruction_loss(target: torch.Tensor) -> torch.Tensor:
    """Per image [B]: the mean squared error of the best flat reconstruction, each image's
    mean colour (or mean token) at every position, of images [B, C, H, W] or tokens
    [B, N, D]. A model whose reconstruction loss sits at this level models nothing of the
    objects: the plateau before slots bind, where one slot paints the background."""
    positions = (2, 3) if target.dim() == 4 else (1,)
    flat = target.mean(dim=positions, keepdim=True)
    return (target - flat).pow(2).flatten(1).mean(1)


def baseline_masks(height: int, width: int) -> dict[str, torch.Tensor]:
    """Each trivial baseline's masks [K, H, W], by name ("one slot", "blocks 2x2", ...)."""
    candidates = {"one slot": torch.ones(1, height, width)}
    candidates.update({f"blocks {g}x{g}": block_masks(g, height, width) for g in GRIDS})
    return candidates


def per_image_baselines(segmentation: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per image [B] (NaN without objects): FG-ARI and mBO of each trivial baseline on
    label maps [B, H, W], and its masks' stripe score (the same for every image; NaN for
    one slot, which has no boundary)."""
    batch, height, width = segmentation.shape
    scores = {}
    for name, masks in baseline_masks(height, width).items():
        stripe = stripe_score(masks.unsqueeze(0)).expand(batch)
        masks = masks.unsqueeze(0).expand(batch, -1, -1, -1)
        scores[name] = {"fg_ari": fg_ari(masks, segmentation), "mbo": mbo(masks, segmentation),
                        "stripe": stripe}
    return scores


def trivial_baselines(segmentation: torch.Tensor) -> dict[str, dict[str, float]]:
    """FG-ARI, mBO and stripe score of each trivial baseline on label maps [B, H, W]."""
    return {name: {k: nanmean(v) for k, v in scores.items()}
            for name, scores in per_image_baselines(segmentation).items()}


METRIC_LABELS = {"fg_ari": "FG-ARI", "mbo": "mBO"}


def against_baselines(metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> str:
    """One line that sets a trial's "val/fg_ari" and "val/mbo" (its reported `metrics`)
    beside the best trivial baseline on each (as `trivial_baselines` gives them), and
    says whether the masks are above it."""
    scores = {m: metrics.get(f"val/{m}", math.nan) for m in METRIC_LABELS}
    parts, above = [], []
    for metric, label in METRIC_LABELS.items():
        name = max(baselines, key=lambda n: baselines[n][metric])
        value, level = scores[metric], baselines[name][metric]
        parts.append(f"{label} {value:.3f} vs {level:.3f} ({name})")
        if value > level:
            above.append(label)
    if not all(math.isfinite(v) for v in scores.values()):
        verdict = "not scored"
    elif len(above) == len(METRIC_LABELS):
        verdict = "above on both"
    elif above:
        verdict = f"above on {above[0]} only"
    else:
        verdict = "below on both: no better than fixed blocks"
    return "against the best trivial baseline: " + ", ".join(parts) + f": {verdict}"


@dataclass(frozen=True)
class Margin:
    """The model's mean score minus the best trivial baseline's, paired over images."""

    baseline: str  # the baseline with the highest mean on this metric
    images: int  # images with objects (the pairs)
    mean: float
    low: float  # 95% bootstrap confidence interval of the mean difference
    high: float


def margins(model: dict[str, torch.Tensor], segmentation: torch.Tensor, *,
            seed: int = 0) -> dict[str, Margin]:
    """For "fg_ari" and "mbo": per-image model scores [B] (as `object_metrics` gives
    them) against the best trivial baseline on the same label maps [B, H, W], with a
    paired bootstrap CI (BCa, scipy) of the mean difference over the images."""
    from scipy.stats import bootstrap

    baselines = per_image_baselines(segmentation)
    out = {}
    for metric in ("fg_ari", "mbo"):
        best = max(baselines, key=lambda name: nanmean(baselines[name][metric]))
        diff = (model[metric].double() - baselines[best][metric]).numpy()
        diff = diff[np.isfinite(diff)]
        mean = float(diff.mean()) if len(diff) else math.nan
        if len(diff) < 2 or np.ptp(diff) == 0:  # nothing to resample: no spread, or none
            low = high = mean if len(diff) else math.nan
        else:
            ci = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=9999,
                           rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(ci.low), float(ci.high)
        out[metric] = Margin(best, len(diff), mean, low, high)
    return out


@dataclass
class ValidationBaselines:
    """The trivial baselines of a sweep, on the images its trials are scored on."""

    scores: dict[str, dict[str, float]]  # baseline name -> {"fg_ari", "mbo", "stripe"}
    images: torch.Tensor | None  # [N, 3, H, W] in [-1, 1]: the first eval.num_pictures


def on_validation_set(config: TrialConfig) -> ValidationBaselines | None:
    """Score every trivial baseline on `config`'s validation images (the same
    `eval.max_images` a trial's evaluation scores), for the run's summary and the
    report alike. None when the split has no label maps; raises ShardError (or OSError)
    when it cannot be read."""
    from slotsweep.data.batches import Batches, to_model_inputs

    val = Batches.open(config.data.val, config.model, eval=True)
    batches = list(val.eval_batches(config.eval.batch_size, config.eval.max_images))
    if not batches or "segmentation" not in batches[0]:
        return None
    segmentation = torch.cat([b["segmentation"].long() for b in batches])
    images = None
    n = min(config.eval.num_pictures, segmentation.shape[0])
    if n and "image" in batches[0]:
        images = to_model_inputs({"image": batches[0]["image"][:n]}, config.model,
                                 torch.device("cpu"))[1]
    return ValidationBaselines(trivial_baselines(segmentation), images)
