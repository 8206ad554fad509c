"""Time `slotsweep.metrics.scores.fg_ari` against a per-image loop over sklearn's ARI.

64 images of 320x320 with 7 slots, the pred masks either at full resolution or on DINOSAUR's
14x14 patch grid (upsampled bilinearly inside `fg_ari`). The baseline gets the argmax labels
ready-made (its resize and argmax are not timed), so the speed-up is a lower bound.
Prints a markdown table of the best of `--repeats` runs and the machine it ran on.

    python benchmarks/metrics.py --repeats 5
    python benchmarks/metrics.py --smoke     # 4 images of 64x64, seconds; CI runs it
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from slotsweep.metrics.scores import fg_ari

BATCH, NUM_SLOTS, SIZE, PATCH_GRID, NUM_OBJECTS = 64, 7, 320, 14, 6


def make_segmentation(generator: torch.Generator, batch: int, size: int) -> torch.Tensor:
    """Blocky objects 1..NUM_OBJECTS on background 0, a few ignored (-1) pixels: [B, H, W]."""
    coarse = torch.randint(0, NUM_OBJECTS + 1, (batch, 1, 10, 10), generator=generator)
    seg = F.interpolate(coarse.float(), size=(size, size), mode="nearest").long()[:, 0]
    ignored = torch.rand(seg.shape, generator=generator) < 0.01
    return seg.masked_fill(ignored, -1)


def baseline_labels(pred_masks: torch.Tensor, size: int) -> np.ndarray:
    """Slot index per pixel as a plain torch pipeline gets it: resize, then argmax(1)."""
    masks = F.interpolate(pred_masks, size=(size, size), mode="bilinear", align_corners=False)
    return masks.argmax(1).numpy()


def sklearn_loop(labels: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """The baseline: one `adjusted_rand_score` call per image on its foreground pixels."""
    scores = []
    for seg, pred in zip(segmentation, labels, strict=True):
        foreground = seg > 0
        scores.append(adjusted_rand_score(seg[foreground], pred[foreground]))
    return np.array(scores)


def best_ms(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="4 images of 64x64, 1 repeat: the script's CI, not a measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, size = (4, 64) if args.smoke else (BATCH, SIZE)
    if args.smoke:
        args.repeats = 1

    generator = torch.Generator().manual_seed(0)
    segmentation = make_segmentation(generator, batch, size)
    cases = {
        f"{size}x{size} masks": torch.rand(batch, NUM_SLOTS, size, size, generator=generator),
        f"{PATCH_GRID}x{PATCH_GRID} masks, upsampled": torch.rand(
            batch, NUM_SLOTS, PATCH_GRID, PATCH_GRID, generator=generator
        ),
    }

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; {batch} images {size}x{size}, {NUM_SLOTS} slots, best of {args.repeats}"
        + (" — SMOKE RUN: tiny, not a measurement" if args.smoke else "")
    )
    print()
    print("| case | slotsweep ms | sklearn-loop ms | speed-up |")
    print("|---|---:|---:|---:|")
    untimed = []
    for name, pred_masks in cases.items():
        prepare_ms, labels = best_ms(lambda m=pred_masks: baseline_labels(m, size), 1)
        untimed.append(f"{prepare_ms:.0f} ms for {name}")
        ours_ms, ours = best_ms(lambda m=pred_masks: fg_ari(m, segmentation), args.repeats)
        theirs_ms, theirs = best_ms(
            lambda lab=labels: sklearn_loop(lab, segmentation.numpy()), args.repeats
        )
        error = np.abs(ours.numpy() - theirs).max()
        if error > 1e-9:
            raise SystemExit(f"{name}: fg_ari differs from sklearn by {error:.3g}")
        print(f"| {name} | {ours_ms:.1f} | {theirs_ms:.1f} | {theirs_ms / ours_ms:.0f}x |")
    print()
    print(f"Not timed above, the baseline's torch resize + argmax(1): {', '.join(untimed)}.")


if __name__ == "__main__":
    main()
