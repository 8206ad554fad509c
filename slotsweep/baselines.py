"""Trivial mask baselines, so nobody mistakes block-like masks for objects.

"one slot" puts every pixel in one mask; "blocks NxN" cuts the image into an N×N grid
of equal blocks (DINOSAUR reports the same "block masks" baseline on COCO).
"""

from __future__ import annotations

import torch

from slotsweep.metrics import fg_ari, mbo, nanmean

GRIDS = (2, 3, 4)


def block_masks(grid: int, height: int, width: int) -> torch.Tensor:
    """One-hot masks [grid², H, W] of an even grid×grid partition of the image."""
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    cell = rows[:, None] * grid + cols[None, :]  # (H, W)
    return torch.nn.functional.one_hot(cell, grid * grid).permute(2, 0, 1).float()


def trivial_baselines(segmentation: torch.Tensor) -> dict[str, dict[str, float]]:
    """FG-ARI and mBO of each trivial baseline on label maps [B, H, W]."""
    batch, height, width = segmentation.shape
    candidates = {"one slot": torch.ones(1, height, width)}
    candidates.update({f"blocks {g}x{g}": block_masks(g, height, width) for g in GRIDS})
    scores = {}
    for name, masks in candidates.items():
        masks = masks.unsqueeze(0).expand(batch, -1, -1, -1)
        scores[name] = {
            "fg_ari": nanmean(fg_ari(masks, segmentation)),
            "mbo": nanmean(mbo(masks, segmentation)),
        }
    return scores
