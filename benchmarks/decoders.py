"""The authors' multi-dSprites model against ours, per training step on this machine.

Baseline: our decoder and slot init (`broadcast_cnn`, `gaussian`: `dsprites_small` at
32x32 and run F's model at 64x64); against it, the authors' (`broadcast_tconv` at the
slot's width, `slot_init: authors`: `dsprites_small_authors`, `dsprites_slot_attention`).
Same batch, same process, alternating, best of `--repeats`, fp32. With the learning
curves' steps to binding, this gives the cost per CPU minute of binding (issue 28).

    OMP_NUM_THREADS=2 python benchmarks/decoders.py [--steps 10] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import seconds_per_step, timing_args  # noqa: E402

from slotsweep.config import load_config  # noqa: E402
from slotsweep.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OURS_64 = ["model.decoder=broadcast_cnn", "model.decoder_channels=32", "model.decoder_layers=4",
           "model.slot_init=gaussian", "model.eval_slot_init=seeded"]
PAIRS = {  # resolution: ((ours: config, overrides), (the authors': config, overrides))
    32: (("configs/dsprites_small.yaml", []), ("configs/dsprites_small_authors.yaml", [])),
    64: (("configs/dsprites_slot_attention.yaml", [*OURS_64, "train.batch_size=16"]),
         ("configs/dsprites_slot_attention.yaml", ["train.batch_size=16"])),
}


def main() -> None:
    args, extra, warmup = timing_args(__doc__.splitlines()[0])
    os.chdir(ROOT)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32\n")
    print("| resolution, batch | our decoder s/step | authors' s/step | authors' / ours "
          "| our params | authors' params |")
    print("|---|---|---|---|---|---|")
    for resolution, pair in PAIRS.items():
        configs = [load_config(path, [*overrides, *extra, "train.device=cpu",
                                      "train.precision=fp32"]) for path, overrides in pair]
        batch_size = configs[0].train.batch_size
        batch = {"image": torch.randint(0, 256, (batch_size, resolution, resolution, 3),
                                        generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8)}
        best, params = [float("inf")] * 2, [0, 0]
        for _ in range(args.repeats):  # alternate, so drift on a shared host hits both
            for i, config in enumerate(configs):
                torch.manual_seed(0)
                model = build_model(config.model, config.loss)
                params[i] = sum(p.numel() for p in model.parameters())
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
                t = seconds_per_step(config, model, optimizer, batch, args.steps, warmup)
                best[i] = min(best[i], t)
        print(f"| {resolution}x{resolution}, {batch_size} | {best[0]:.3g} | {best[1]:.3g} | "
              f"{best[1] / best[0]:.2f}x | {params[0]:,} | {params[1]:,} |")


if __name__ == "__main__":
    main()
