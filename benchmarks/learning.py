"""Does the trainer bind objects? FG-ARI and mBO against steps and wall time.

Trains a config on the synthetic colored multi-dSprites with the shared trainer and
prints its evaluation curve next to trivial baselines on the same validation images
(one slot; 2x2, 3x3, 4x4 blocks), then the latest checkpoint's scores by the number of
objects in the image next to the 2x2 blocks'. Rerunning resumes from the checkpoint, so a
long run can span several sittings; the curve is kept in `<workdir>/curve.jsonl`.

FG-ARI is all-or-nothing on a one-object image (ground truth is one cluster, so any
split of its pixels scores 0, whatever the split), which is why the breakdown matters:
soft mask edges that give a sprite's rim to the background cost a whole image there.

    python benchmarks/learning.py [CONFIG] [key=value ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from slotsweep import checkpoint
from slotsweep.baselines import block_masks, trivial_baselines
from slotsweep.batches import Batches, to_model_inputs
from slotsweep.config import load_config
from slotsweep.data.synthetic import ensure_synthetic
from slotsweep.metrics import object_metrics
from slotsweep.models import build_model
from slotsweep.pictures import palette
from slotsweep.train import fit, progress_line


def read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run may re-report a step
    return [by_step[s] for s in sorted(by_step)]


def side_by_side(images: torch.Tensor, seg: torch.Tensor, masks: torch.Tensor,
                 blocks: torch.Tensor) -> bytes:
    """PNG, a row per image: input | ground truth | the model's argmax masks | 2x2 blocks'
    (one colour per mask; 4x nearest upscaling, white lines between the tiles)."""
    colours = torch.as_tensor(palette(max(masks.shape[1], int(seg.max()) + 1, 4)))
    masks = F.interpolate(masks, size=seg.shape[-2:], mode="bilinear")  # token-grid masks
    tiles = [images.float(), colours[seg], colours[masks.argmax(1)], colours[blocks.argmax(1)]]
    tiles = [F.pad(t.permute(0, 3, 1, 2), (0, 1, 0, 1), value=255).permute(0, 2, 3, 1)
             for t in tiles]  # (N, H+1, W+1, 3)
    grid = torch.cat([torch.cat(list(t), dim=0) for t in tiles], dim=1)  # (N*H, 4*W, 3)
    picture = Image.fromarray(grid.round().clamp(0, 255).byte().numpy())
    picture = picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def by_object_count(config, checkpoint_dir: Path, picture: Path | None = None,
                    ) -> list[tuple[int, int, dict[str, float]]]:
    """Per number of objects: (count, images, mean scores of the model and of 2x2 blocks);
    with `picture`, also writes the first 8 validation images' masks next to the blocks'."""
    model = build_model(config.model, config.loss)
    model.load_state_dict(checkpoint.load(checkpoint_dir)["model"])
    model.eval()
    val = Batches.open(config.data.val, config.model, eval=True)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("n", "ari", "mbo", "bari", "bmbo")}
    for batch in val.eval_batches(config.eval.batch_size, config.eval.max_images):
        inputs, _, seg = to_model_inputs(batch, config.model, torch.device("cpu"))
        masks = model(inputs)["masks"].float()
        blocks = block_masks(2, *seg.shape[-2:]).expand(seg.shape[0], -1, -1, -1)
        if picture is not None and not rows["n"] and "image" in batch:
            picture.write_bytes(side_by_side(batch["image"][:8], seg[:8], masks[:8],
                                             blocks[:8]))
        rows["n"].append(torch.tensor([len(s.unique()) - int((s == 0).any()) for s in seg]))
        for prefix, predicted in (("", masks), ("b", blocks)):
            ari, best_overlap = object_metrics(predicted, seg)  # one contingency table each
            rows[prefix + "ari"].append(ari)
            rows[prefix + "mbo"].append(best_overlap)
    cat = {k: torch.cat(v) for k, v in rows.items()}
    out = []
    for n in sorted(set(cat["n"].tolist()) - {0}):
        keep = cat["n"] == n
        out.append((n, int(keep.sum()), {k: float(cat[k][keep].float().nanmean())
                                        for k in ("ari", "mbo", "bari", "bmbo")}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/dsprites_binding.yaml")
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
    curve = read_curve(curve_file)
    print("\nlast:", progress_line(curve[-1], config.train.steps) if curve
          else "no evaluation yet")
    latest = checkpoint.latest(workdir / "checkpoints")
    if latest is not None:
        print(f"\nby objects in the image ({latest.name}; FG-ARI is 0 on a one-object image "
              "unless all its pixels share a slot):\n")
        print("| objects | images | FG-ARI | mBO | 2x2 blocks FG-ARI | 2x2 blocks mBO |")
        print("|---|---|---|---|---|---|")
        picture = workdir / "masks_vs_blocks.png"
        for n, count, r in by_object_count(config, latest, picture):
            print(f"| {n} | {count} | {r['ari']:.3f} | {r['mbo']:.3f} | {r['bari']:.3f} | "
                  f"{r['bmbo']:.3f} |")
        print(f"\n{picture}: input | ground truth | masks | 2x2 blocks, 8 validation scenes")


if __name__ == "__main__":
    main()
