"""Does anything at evaluation time keep lone sprites whole? (issue 28, step 3)

Scores one trained checkpoint on its validation scenes under evaluation-only variants,
with no training: the slot noise (one fixed draw for every image, as our evaluation
does, or a fresh draw per image, as the authors' code does), the learned sigma scaled
by 1, 1.7 or 2.5 (the authors' initial sigma is ~1.7x ours), and fp32 or bf16. Each
row gives the one-object scenes whose sprite stays in one slot, FG-ARI and mBO over
all scenes and FG-ARI by number of objects. The first row is the reference: the
checkpoint's own slot noise, in fp32; the noise and sigma rows are fp32 too, and the
last row is the reference in bf16.

Slot noise and sigma only exist for a Gaussian slot initialisation; a checkpoint with
learned queries (run A) gets the precision rows only.

    python benchmarks/eval_variants.py CHECKPOINT_DIR [--max-images N] [--batch-size N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import by_object_count  # noqa: E402

from slotsweep.config import load_config  # noqa: E402
from slotsweep.data.sources.synthetic import ensure_synthetic


def variants(config) -> list[tuple[str, dict, float]]:
    """(name, config overrides, sigma scale). The noise and sigma rows run in fp32, the
    authors' precision (bf16 on a CPU without AVX512-BF16 is ~10x slower); the last row
    is the checkpoint's own noise in bf16."""
    own = config.model.eval_slot_init
    fp32, bf16 = {"train.precision": "fp32"}, {"train.precision": "bf16"}
    if config.model.slot_init == "queries":
        return [("queries, fp32", fp32, 1.0), ("queries, bf16", bf16, 1.0)]
    rows = [(f"{own} noise, sigma x1.0, fp32", fp32, 1.0)]
    for noise in ("seeded", "fresh"):
        for scale in (1.0, 1.7, 2.5):
            if (noise, scale) != (own, 1.0):
                rows.append((f"{noise} noise, sigma x{scale}, fp32",
                             {**fp32, "model.eval_slot_init": noise}, scale))
    return rows + [(f"{own} noise, sigma x1.0, bf16", bf16, 1.0)]


def scale_sigma(scale: float):
    def edit(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.slot_attention.slots_log_sigma.add_(math.log(scale))
    return edit if scale != 1.0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder (step-NNNNNNNN)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    base = {"eval.batch_size": args.batch_size}
    if args.max_images:
        base["eval.max_images"] = args.max_images
    config = load_config(args.checkpoint / "config.yaml", base)
    if config.data.synthetic:  # the validation scenes only: no training set is needed
        ensure_synthetic(config.data, resolution=config.model.resolution, splits=("val",))
    print(f"checkpoint: {args.checkpoint}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| evaluation | lone sprites whole | FG-ARI | mBO | FG-ARI by objects (1 / 2 / 3 / 4) "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    for name, overrides, scale in variants(config):
        started = time.perf_counter()
        variant = load_config(args.checkpoint / "config.yaml", {**base, **overrides})
        rows, lone, _, _ = by_object_count(variant, args.checkpoint, edit=scale_sigma(scale))
        images = sum(count for _, count, _ in rows)
        ari = sum(count * r["ari"] for _, count, r in rows) / images
        mbo = sum(count * r["mbo"] for _, count, r in rows) / images
        by_n = " / ".join(f"{r['ari']:.3f}" for _, _, r in rows)
        print(f"| {name} | {lone['images'] - lone['split']} of {lone['images']} | {ari:.3f} | "
              f"{mbo:.3f} | {by_n} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
