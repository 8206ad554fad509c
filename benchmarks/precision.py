"""bf16 autocast against fp32 for training steps on this machine's CPU.

`train.precision: bf16` runs the model's forward pass under `torch.autocast(bfloat16)`
(convolutions and matrix products in bf16, weights, optimiser and loss in fp32). On a
CPU with AVX512-BF16 or AMX, oneDNN's bf16 convolutions are much faster than fp32 ones;
without them bf16 is emulated and slower. Baseline: fp32, same model, same batch, same
process, alternating, best of `--repeats`. Also printed: how far bf16's loss on the same
weights and batch is from fp32's.

    OMP_NUM_THREADS=1 python benchmarks/precision.py [--steps 10] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from slotsweep.config import load_config
from slotsweep.data.batches import to_model_inputs
from slotsweep.losses import compute_losses
from slotsweep.models import build_model
from slotsweep.training.loop import train_step

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name: (config file, overrides)
    "dsprites_binding": ("configs/dsprites_binding.yaml", []),
    "dsprites_binding64": ("configs/dsprites_binding64.yaml", ["train.batch_size=16"]),
}


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return "unknown"
    have = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2"))
    return ", ".join(have) or "none of avx2/avx512f/avx512_bf16/amx_bf16"


def seconds_per_step(config, model, optimizer, batch, steps: int, warmup: int = 2) -> float:
    device = torch.device("cpu")
    for step in range(warmup):  # allocations, oneDNN primitive caches
        train_step(model, optimizer, batch, config, step, device)
    start = time.perf_counter()
    for step in range(steps):
        terms = train_step(model, optimizer, batch, config, step, device)
    float(terms["loss"].detach())
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def loss_gap(configs: dict, batch) -> float:
    """|loss_bf16 - loss_fp32| / loss_fp32 on the same (fresh, seeded) weights and batch."""
    losses = {}
    for precision, config in configs.items():
        torch.manual_seed(0)
        model = build_model(config.model, config.loss)
        inputs, target, _ = to_model_inputs(batch, config.model, torch.device("cpu"))
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = model(inputs)
        losses[precision] = float(compute_losses(out, target, config.loss, step=0)["loss"])
    return abs(losses["bf16"] - losses["fp32"]) / losses["fp32"]


def timing_args(description: str) -> tuple[argparse.Namespace, list[str], int]:
    """The step-timing benchmarks' command line: (args, config overrides, warm-up steps);
    `--smoke` shrinks everything to one step at batch 1."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="batch 1, 1 warm-up and 1 timed step, 1 repeat (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.repeats = 1, 1
    return args, ["train.batch_size=1"] if args.smoke else [], 1 if args.smoke else 2


def main() -> None:
    args, extra, warmup = timing_args(__doc__.splitlines()[0])
    os.chdir(ROOT)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| config | fp32 s/step | bf16 s/step | speed-up | bf16 loss gap |")
    print("|---|---|---|---|---|")
    for name, (path, overrides) in CONFIGS.items():
        configs = {p: load_config(path, [*overrides, *extra, f"train.precision={p}",
                                         "train.device=cpu"])
                   for p in ("fp32", "bf16")}
        size, batch_size = configs["fp32"].model.resolution, configs["fp32"].train.batch_size
        batch = {"image": torch.randint(0, 256, (batch_size, size, size, 3),
                                        generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8)}
        best = {}
        for _ in range(args.repeats):  # alternate, so drift on a shared host hits both
            for precision, config in configs.items():
                torch.manual_seed(0)
                model = build_model(config.model, config.loss)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
                t = seconds_per_step(config, model, optimizer, batch, args.steps, warmup)
                best[precision] = min(best.get(precision, t), t)
        print(f"| {name} ({size}x{size}, batch {batch_size}) | {best['fp32']:.3g} | "
              f"{best['bf16']:.3g} | {best['fp32'] / best['bf16']:.3g}x | "
              f"{loss_gap(configs, batch):.1e} |")


if __name__ == "__main__":
    main()
