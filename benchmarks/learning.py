"""Does the trainer bind objects? FG-ARI and mBO against steps and wall time.

Trains a config on the synthetic colored multi-dSprites with the shared trainer and
prints its evaluation curve next to trivial baselines on the same validation images
(one slot; 2x2, 3x3, 4x4 blocks). Rerunning resumes from the checkpoint, so a long
run can span several sittings; the curve is kept in `<workdir>/curve.jsonl`.

    python benchmarks/learning.py [CONFIG] [key=value ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from slotsweep.baselines import trivial_baselines
from slotsweep.batches import Batches
from slotsweep.config import load_config
from slotsweep.data.synthetic import ensure_synthetic
from slotsweep.train import fit, progress_line


def read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run may re-report a step
    return [by_step[s] for s in sorted(by_step)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/dsprites_small.yaml")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="print the recorded curve without training further")
    args = parser.parse_intermixed_args()
    config = load_config(args.config, args.overrides)
    workdir = Path(args.workdir or f"benchmarks/out/learning/{Path(args.config).stem}")
    workdir.mkdir(parents=True, exist_ok=True)
    curve_file = workdir / "curve.jsonl"

    def record(metrics: dict, checkpoint_dir: str | None) -> None:
        with curve_file.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    if config.data.synthetic:
        ensure_synthetic(config.data, resolution=config.model.resolution)
    if not args.report_only:
        fit(config, record, workdir=workdir, log=lambda s: print(s, flush=True))

    val = Batches.open(config.data.val, config.model, eval=True)
    seg = torch.cat([b["segmentation"].long() for b in
                     val.eval_batches(config.eval.batch_size, config.eval.max_images)])
    print(f"\nconfig: {args.config} {' '.join(args.overrides)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; "
          f"{seg.shape[0]} validation images at {seg.shape[-1]}px\n")
    print("| step | train minutes (wall) | FG-ARI | mBO | train loss |")
    print("|---|---|---|---|---|")
    for r in read_curve(curve_file):
        print(f"| {r['step']} | {r['time/elapsed_s'] / 60:.1f} | {r['val/fg_ari']:.3f} | "
              f"{r['val/mbo']:.3f} | {r['train/loss']:.4g} |")
    print("\n| trivial baseline | FG-ARI | mBO |\n|---|---|---|")
    for name, s in trivial_baselines(seg).items():
        print(f"| {name} | {s['fg_ari']:.3f} | {s['mbo']:.3f} |")
    last = read_curve(curve_file)[-1]
    print("\nlast:", progress_line(last, config.train.steps))


if __name__ == "__main__":
    main()
