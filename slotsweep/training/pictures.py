"""Mask pictures: for each image, the input, the reconstruction, the argmax masks in
distinct colours over the image, and every slot's soft mask. PNG bytes, numpy + PIL."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TILE = 96  # pixels per tile side in the picture


def palette(num: int) -> np.ndarray:
    """`num` well-separated colours, uint8 [num, 3] (golden-ratio hues)."""
    hues = (np.arange(num) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]) * 255


def _tile(rgb: np.ndarray) -> np.ndarray:
    tile = Image.fromarray(rgb.astype(np.uint8)).resize((TILE, TILE), Image.Resampling.NEAREST)
    return np.asarray(tile)


def mask_picture(
    images: torch.Tensor | None, masks: torch.Tensor, recons: torch.Tensor | None = None
) -> bytes:
    """`images`/`recons` uint8 [N, H, W, 3] (or None), `masks` float [N, K, h, w] → PNG."""
    masks = masks.detach().float().cpu()
    num, num_slots = masks.shape[:2]
    size = images.shape[1:3] if images is not None else (TILE, TILE)
    masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
    colours = palette(num_slots)
    rows = []
    for i in range(num):
        tiles = []
        base = images[i].cpu().numpy().astype(np.float32) if images is not None else None
        if base is not None:
            tiles.append(_tile(base))
        if recons is not None:
            tiles.append(_tile(recons[i].cpu().numpy()))
        winner = masks[i].argmax(0).numpy()  # (H, W)
        overlay = colours[winner]
        if base is not None:
            overlay = 0.45 * base + 0.55 * overlay
        tiles.append(_tile(overlay))
        for k in range(num_slots):
            soft = masks[i, k].numpy()[..., None]
            tiles.append(_tile(255 * (1 - soft) + soft * colours[k]))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    buffer = io.BytesIO()
    Image.fromarray(grid.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Model images [N, 3, H, W] in [-1, 1] → uint8 [N, H, W, 3]."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
