"""Trainer throughput on this machine: steps/s, achieved GFLOP/s and peak memory.

Configurations (issue: "the shared trainer"):
  - dsprites-covloss: the paper's multi-dSprites model, 64x64, 5 slots, slot size 64,
    batch 64, covloss with a 2-layer head at P = 1024;
  - dinosaur: 196 x 768 precomputed tokens, 7 slots, slot size 256, MLP decoder
    [2048] x 3, batch 64.
The floor is the machine's measured float32 matrix-multiply rate in the same run; the
FLOP count of a step (forward + backward) comes from torch's FlopCounterMode.

    python benchmarks/trainer.py [--steps 5] [--batch-size 64] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from slotsweep.config import build_config
from slotsweep.models import build_model
from slotsweep.training.loop import train_step

CONFIGS = {
    "dsprites-covloss": {
        "model": {"encoder": "cnn", "decoder": "broadcast_cnn", "resolution": 64,
                  "num_slots": 5, "slot_size": 64},
        "loss": {"type": "covloss", "beta": 1.0, "proj_depth": 2, "proj_dim": 1024,
                 "cov_normalize": "p2"},
    },
    "dinosaur": {
        "model": {"encoder": "features", "decoder": "mlp_patch", "num_slots": 7,
                  "slot_size": 256, "feature_dim": 768, "num_patches": 196,
                  "decoder_hidden": [2048, 2048, 2048]},
    },
}


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def fake_batch(cfg, batch_size: int) -> dict[str, torch.Tensor]:
    m = cfg.model
    if m.encoder == "features":
        return {"features": torch.randn(batch_size, m.num_patches, m.feature_dim).half()}
    return {"image": torch.randint(0, 256, (batch_size, m.resolution, m.resolution, 3),
                                   dtype=torch.uint8)}


def measure(name: str, steps: int, batch_size: int) -> dict:
    """Runs in its own process so that peak RSS belongs to this configuration alone."""
    torch.manual_seed(0)
    tree = {**CONFIGS[name], "train": {"batch_size": batch_size, "device": "cpu"}}
    cfg = build_config(tree)
    device = torch.device("cpu")
    model = build_model(cfg.model, cfg.loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = fake_batch(cfg, batch_size)
    train_step(model, optimizer, batch, cfg, 0, device)  # warm-up (allocations)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, batch, cfg, 1, device)
    flops = counter.get_total_flops()
    start = time.perf_counter()
    for step in range(steps):
        terms = train_step(model, optimizer, batch, cfg, step + 2, device)
    float(terms["loss"])
    seconds = (time.perf_counter() - start) / steps
    return {
        "config": name, "batch": batch_size, "s/step": seconds, "steps/s": 1 / seconds,
        "GFLOP/step": flops / 1e9, "GFLOP/s": flops / seconds / 1e9,
        "peak RSS (GB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="batch 2, 1 step (CI)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch_size = 1, 2
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch_size)))
        return
    floor = matmul_gflops(512 if args.smoke else 2048)
    rows = []
    for name in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
             "--batch-size", str(args.batch_size)],
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (" — SMOKE RUN: batch 2, 1 step, not a measurement" if args.smoke else ""))
    print(f"float32 matmul floor (2048^2): {floor:.1f} GFLOP/s\n")
    print("| config | batch | s/step | steps/s | GFLOP/step | GFLOP/s | % of matmul | "
          "peak RSS (GB) | params (M) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['batch']} | {r['s/step']:.3f} | {r['steps/s']:.2f} | "
              f"{r['GFLOP/step']:.1f} | {r['GFLOP/s']:.1f} | {100 * r['GFLOP/s'] / floor:.0f}% | "
              f"{r['peak RSS (GB)']:.2f} | {r['params (M)']:.2f} |")


if __name__ == "__main__":
    main()
