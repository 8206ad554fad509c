"""Object-discovery metrics: FG-ARI and mBO, vectorised over the batch.

Both compare the argmax of the predicted slot masks with a ground-truth segmentation
(0 = background, < 0 = ignored) through one per-image contingency table, counted for the
whole batch with a single `bincount`. Counts are int64 and the final arithmetic float64,
so FG-ARI equals `sklearn.metrics.adjusted_rand_score` on each image's foreground pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Float elements of resized masks per chunk in `_contingency` (16 MB in float32).
_CHUNK_ELEMENTS = 2**22


def fg_ari(pred_masks: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
    """Adjusted Rand index of argmax slots vs. objects, on foreground pixels (label > 0).

    `pred_masks` [B, K, h, w] float, bilinearly resized to `segmentation`'s [B, H, W] when
    the sizes differ. Returns float64 [B]; NaN for an image without foreground pixels.
    """
    return _ari(*_contingency(pred_masks, segmentation))


def _ari(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    counts = table[:, labels > 0]  # [B, T, K]: foreground objects x slots

    # Pair confusion matrix of sklearn's `pair_confusion_matrix` (ordered pairs), in int64.
    n = counts.sum((1, 2))  # [B]
    sum_squares = counts.square().sum((1, 2))
    true_squares = counts.sum(2).square().sum(1)
    pred_squares = counts.sum(1).square().sum(1)
    tp = sum_squares - n
    fp = pred_squares - sum_squares
    fn = true_squares - sum_squares
    tn = n.square() - fp - fn - sum_squares

    # Products reach ~1e20 for 320x320 images (past int64), hence float64 from here on.
    tp, fp, fn, tn = (x.double() for x in (tp, fp, fn, tn))
    numerator = 2.0 * (tp * tn - fn * fp)
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    # sklearn returns 1.0 when fn == fp == 0 (identical partitions, or fewer than 2 points);
    # that is also the only way the denominator can be 0.
    agree = (fn == 0) & (fp == 0)
    ari = torch.where(agree, 1.0, numerator / torch.where(agree, 1.0, denominator))
    return torch.where(n > 0, ari, torch.nan)


def mbo(pred_masks: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
    """Mean best overlap: per image, the mean over objects of the best IoU with any slot.

    Slot masks are the argmax one-hot masks (resized as in `fg_ari`); ignored pixels
    (label < 0) belong to neither side. Returns float64 [B]; NaN for an image without objects.
    """
    return _mbo(*_contingency(pred_masks, segmentation))


def object_metrics(
    pred_masks: torch.Tensor, segmentation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`fg_ari`, `mbo`) from one resize, argmax and contingency table (evaluation)."""
    table, labels = _contingency(pred_masks, segmentation)
    return _ari(table, labels), _mbo(table, labels)


def _mbo(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    slot_sizes = table[:, labels >= 0].sum(1)  # [B, K]
    intersections = table[:, labels > 0]  # [B, T, K]
    object_sizes = intersections.sum(2)  # [B, T]

    unions = object_sizes[:, :, None] + slot_sizes[:, None, :] - intersections  # [B, T, K]
    iou = intersections.double() / unions.clamp(min=1).double()
    best = iou.amax(2)  # [B, T]

    present = object_sizes > 0  # labels of the batch that this image lacks are not objects
    return torch.where(present, best, 0.0).sum(1) / present.sum(1).double()


def stripe_score(pred_masks: torch.Tensor, *, tolerance: float = 0.04) -> torch.Tensor:
    """How much the argmax masks look like the degenerate stripes or blocks of the paper
    (Sec. 4.3.1) rather than objects; float64 [B] in [0, 1], NaN for a single segment.

    Each boundary pixel between argmax segments is scored by how much of the image its
    boundary line spans: the fraction of rows (for a vertical boundary at column j) that
    have a boundary within ±`tolerance`·W of column j, and likewise for horizontal ones.
    The score is the mean over boundary pixels of the dominant direction, so full-length
    straight boundaries — stripes, grids of blocks — score ~1, while object outlines
    span only the object's extent (colored multi-dSprites label maps: mean 0.28). FG-ARI
    cannot tell these apart (2x2 blocks score 0.54 there, more than many trained models).
    """
    labels = pred_masks.detach().float().argmax(1)  # (B, h, w)
    height, width = labels.shape[-2:]
    vertical = (labels[:, :, 1:] != labels[:, :, :-1]).double()  # (B, h, w-1)
    horizontal = (labels[:, 1:, :] != labels[:, :-1, :]).double().transpose(1, 2)  # (B, w, h-1)
    along_v = _line_coverage(vertical, max(1, round(tolerance * width)))
    along_h = _line_coverage(horizontal, max(1, round(tolerance * height)))
    any_edge = (vertical.sum((1, 2)) + horizontal.sum((1, 2))) > 0
    return torch.where(any_edge, torch.maximum(along_v, along_h), torch.nan)


def _line_coverage(edges: torch.Tensor, band: int) -> torch.Tensor:
    """Mean, over edge pixels, of the fraction of lines (dim 1) with an edge within
    ±band positions (dim 2) of that pixel's position. `edges` [B, L, M] → [B]."""
    batch, lines, positions = edges.shape
    near = F.max_pool1d(edges.reshape(batch * lines, 1, positions), 2 * band + 1, 1, band)
    coverage = near.reshape(batch, lines, positions).mean(1, keepdim=True)  # (B, 1, M)
    return (edges * coverage).sum((1, 2)) / edges.sum((1, 2)).clamp(min=1)


def nanmean(values: torch.Tensor | np.ndarray) -> float:
    """Mean of a 1-D tensor or array, skipping NaN; NaN (without a warning) if all are NaN."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else float("nan")


def _contingency(
    pred_masks: torch.Tensor, segmentation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image counts of (ground-truth label, argmax slot) pairs.

    Returns `table` int64 [B, R, K] and `labels` [R]: row r counts the pixels whose
    label is `labels[r]`; all ignored pixels share the row labelled -1.
    """
    _check_shapes(pred_masks, segmentation)
    batch, num_slots = pred_masks.shape[:2]
    size = segmentation.shape[-2:]
    rows, labels = _label_rows(segmentation.to(pred_masks.device), num_slots)  # [B, H, W]
    num_rows = labels.numel()

    # One key per pixel, (image, row, slot) flattened, built in place: no big temporaries.
    num_bins = batch * num_rows * num_slots
    keys = rows.to(torch.int32 if num_bins < 2**31 else torch.int64)
    image_offset = torch.arange(batch, device=keys.device, dtype=keys.dtype) * num_rows
    keys.add_(image_offset.view(batch, 1, 1)).mul_(num_slots)
    # Resize and argmax a few images at a time so that their float masks stay in cache:
    # about 2x faster on CPU than one pass over a [B, K, H, W] tensor.
    step = max(1, _CHUNK_ELEMENTS // (num_slots * size.numel()))
    for start in range(0, batch, step):
        keys[start : start + step].add_(_argmax_slots(pred_masks[start : start + step], size))

    table = torch.bincount(keys.view(-1), minlength=num_bins)
    return table.view(batch, num_rows, num_slots), labels


def _label_rows(segmentation: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Table row of each pixel, in a new tensor [B, H, W], and the label of each row [R].

    Rows are label + 1 (ignored pixels clamped to -1) while the table has no more bins than
    the batch has pixels, as for the usual ids (COCO's are < 1000); larger ids are remapped
    to their rank in the batch, which costs a sort.
    """
    num_rows = int(segmentation.max().clamp(min=0)) + 2
    num_bins = segmentation.shape[0] * num_rows * num_slots
    if num_bins <= max(segmentation.numel(), 2**16):
        labels = torch.arange(-1, num_rows - 1, device=segmentation.device)
        return segmentation.to(torch.int32, copy=True).clamp_(min=-1).add_(1), labels
    labels, rows = torch.unique(segmentation.clamp(min=-1), return_inverse=True)
    return rows, labels


def _argmax_slots(pred_masks: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Index of the winning slot per pixel, after resizing to `size`: [B, K, h, w] -> [B, H, W].

    Ties go to the lower slot, as in `torch.argmax`. A running max over slots, because on
    CPU `argmax` over dim 1 is over 10x slower than these elementwise passes.
    """
    masks = pred_masks.detach()
    masks = masks if masks.dtype == torch.float64 else masks.float()
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    num_slots = masks.shape[1]
    if num_slots > 255:
        return masks.argmax(1)

    best = masks[:, 0].clone()  # [B, H, W]
    slots = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    wins = torch.empty(best.shape, dtype=torch.bool, device=best.device)
    for k in range(1, num_slots):
        torch.gt(masks[:, k], best, out=wins)
        torch.maximum(best, masks[:, k], out=best)
        # k exceeds every earlier index, so the max writes k exactly where slot k wins.
        torch.maximum(slots, wins.view(torch.uint8) * k, out=slots)
    return slots


def _check_shapes(pred_masks: torch.Tensor, segmentation: torch.Tensor) -> None:
    if pred_masks.dim() != 4 or segmentation.dim() != 3:
        raise ValueError(
            f"expected pred_masks [B, K, h, w] and segmentation [B, H, W], got "
            f"{tuple(pred_masks.shape)} and {tuple(segmentation.shape)}"
        )
    if pred_masks.shape[0] != segmentation.shape[0]:
        raise ValueError(
            f"batch sizes differ: pred_masks has {pred_masks.shape[0]} images, "
            f"segmentation {segmentation.shape[0]}"
        )
    if segmentation.is_floating_point():
        raise ValueError(f"segmentation must hold integer labels, got {segmentation.dtype}")
