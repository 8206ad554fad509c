"""Does the trainer bind objects? FG-ARI and mBO against steps and wall time.

Trains a config on the synthetic colored multi-dSprites with the shared trainer and
prints its evaluation curve next to trivial baselines on the same validation images
(one slot; 2x2, 3x3, 4x4 blocks; and for the reconstruction loss, each image's mean
colour or token everywhere: the plateau a model sits on until slots model objects),
then the latest checkpoint's scores by the number of objects in the image next to the
2x2 blocks', the margins over the best baselines, and how sprites are split (stray
pixels; slots that share a sprite). Rerunning resumes from the checkpoint, so a long
run can span several sittings; the curve is kept in `<workdir>/curve.jsonl`, each
evaluation with the number of one-object scenes whose sprite stays in one slot.

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

from slotsweep.config import load_config
from slotsweep.data.batches import Batches, to_model_inputs
from slotsweep.data.sources.synthetic import ensure_synthetic
from slotsweep.metrics.baselines import (
    block_masks,
    flat_reconstruction_loss,
    margins,
    trivial_baselines,
)
from slotsweep.metrics.scores import object_metrics
from slotsweep.models import build_model
from slotsweep.training import checkpoint
from slotsweep.training.loop import fit, pick_device, progress_line
from slotsweep.training.pictures import palette


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


def stray_pixels(masks: torch.Tensor, seg: torch.Tensor) -> dict[str, float]:
    """Why one-object images score 0: masks [N, K, H, W] (soft) and seg [N, H, W] (0 =
    background). Over the images with exactly one object: how many are split (some of
    the sprite's pixels outside its main slot, the argmax's mode on the sprite), and of
    those stray pixels the share on the sprite's rim (a background pixel among the 8
    neighbours), the share won by the background's slot (the mode off the sprite), and
    the median mask value there of the winning slot and of the sprite's own."""
    labels = masks.argmax(1)
    counts = {"images": 0, "split": 0, "stray": 0, "rim": 0, "to_background": 0}
    winner, own = [], []
    for mask, label, s in zip(masks, labels, seg, strict=True):
        objects = [v for v in s.unique().tolist() if v != 0]
        if len(objects) != 1:
            continue
        sprite = s == objects[0]
        main = label[sprite].mode().values
        background = label[~sprite].mode().values if (~sprite).any() else -1
        stray = sprite & (label != main)
        counts["images"] += 1
        if not stray.any():
            continue
        padded = F.pad((~sprite).float()[None, None], (1, 1, 1, 1))
        rim = F.max_pool2d(padded, 3, stride=1)[0, 0].bool() & sprite
        counts["split"] += 1
        counts["stray"] += int(stray.sum())
        counts["rim"] += int((stray & rim).sum())
        counts["to_background"] += int((stray & (label == background)).sum())
        winner.append(mask[:, stray].max(0).values)
        own.append(mask[main][stray])
    stray_total = max(counts["stray"], 1)
    return {"images": counts["images"], "split": counts["split"],
            "stray": counts["stray"], "rim": counts["rim"] / stray_total,
            "to_background": counts["to_background"] / stray_total,
            "winner_mask": float(torch.cat(winner).median()) if winner else float("nan"),
            "own_mask": float(torch.cat(own).median()) if own else float("nan")}


def shared_sprites(masks: torch.Tensor, slots: torch.Tensor, seg: torch.Tensor,
                   min_share: float = 0.05) -> dict[str, float]:
    """Are the slots that split a sprite duplicates? masks [N, K, H, W], slots [N, K, D],
    seg [N, H, W]. A slot holds a sprite when it wins (argmax) at least `min_share` of its
    pixels. Returns the number of sprites, how many are held by two or more slots, and
    the median cosine similarity of the slot vectors of the pairs that share a sprite
    and, for comparison, of the pairs of main slots of two different sprites."""
    labels = masks.argmax(1)
    unit = F.normalize(slots.float(), dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [N, K, K]
    sprites, shared, within, between = 0, 0, [], []
    for label, s, cos in zip(labels, seg, cosine, strict=True):
        mains = []
        for value in (v for v in s.unique().tolist() if v != 0):
            votes = torch.bincount(label[s == value], minlength=cos.shape[0])
            holders = (votes >= min_share * votes.sum()).nonzero().flatten().tolist()
            sprites += 1
            shared += len(holders) > 1
            within += [float(cos[a, b]) for i, a in enumerate(holders) for b in holders[i + 1:]]
            mains.append(int(votes.argmax()))
        mains = sorted(set(mains))
        between += [float(cos[a, b]) for i, a in enumerate(mains) for b in mains[i + 1:]]

    def median(values: list[float]) -> float:
        return float(torch.tensor(values).median()) if values else float("nan")

    return {"sprites": sprites, "shared": shared, "within": median(within),
            "between": median(between)}


@torch.no_grad()
def predictions(config, checkpoint_dir: Path, device: torch.device | None = None,
                edit=None):
    """The checkpoint's outputs on the validation images, a batch at a time, in the
    config's `train.precision` as the trainer evaluates: yields (batch, model outputs,
    segmentation), all on the CPU. `edit(model)`, if given, changes the loaded model
    before it runs (an evaluation-only experiment)."""
    device = device or torch.device("cpu")
    model = build_model(config.model, config.loss).to(device)
    model.load_state_dict(checkpoint.load(checkpoint_dir)["model"])
    if edit is not None:
        edit(model)
    model.eval()
    val = Batches.open(config.data.val, config.model, eval=True)
    bf16 = config.train.precision == "bf16"
    for batch in val.eval_batches(config.eval.batch_size, config.eval.max_images):
        inputs, _, seg = to_model_inputs(batch, config.model, device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = model(inputs)
        yield batch, {k: out[k].float().cpu() for k in ("masks", "slots")}, seg.cpu()


def lone_sprites(config, checkpoint_dir: Path, device: torch.device) -> dict[str, int]:
    """How many one-object validation images keep their sprite in one slot (FG-ARI 1
    there; a split scores 0), for the curve: `lone/images`, `lone/whole`."""
    masks, seg = [], []
    for _, out, labels in predictions(config, checkpoint_dir, device):
        masks.append(F.interpolate(out["masks"], size=labels.shape[-2:], mode="bilinear"))
        seg.append(labels)
    lone = stray_pixels(torch.cat(masks), torch.cat(seg))
    return {"lone/images": lone["images"], "lone/whole": lone["images"] - lone["split"]}


@torch.no_grad()
def by_object_count(config, checkpoint_dir: Path, picture: Path | None = None, edit=None,
                    ) -> tuple[list[tuple[int, int, dict[str, float]]], dict[str, float],
                               dict[str, float], dict]:
    """Per number of objects: (count, images, mean scores of the model and of 2x2 blocks),
    `stray_pixels` of the one-object images, `shared_sprites`, and `margins` over the
    best trivial baselines; with `picture`, also writes the first 8 validation images'
    masks next to the blocks'."""
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("n", "ari", "mbo", "bari", "bmbo")}
    all_masks, all_seg, all_slots = [], [], []
    for batch, out, seg in predictions(config, checkpoint_dir, edit=edit):
        masks = out["masks"]
        all_slots.append(out["slots"])
        blocks = block_masks(2, *seg.shape[-2:]).expand(seg.shape[0], -1, -1, -1)
        if picture is not None and not rows["n"] and "image" in batch:
            picture.write_bytes(side_by_side(batch["image"][:8], seg[:8], masks[:8],
                                             blocks[:8]))
        all_masks.append(F.interpolate(masks, size=seg.shape[-2:], mode="bilinear"))
        all_seg.append(seg)
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
    seg = torch.cat(all_seg)
    several = cat["n"] >= 2  # where FG-ARI is not all-or-nothing
    margin = {images: margins({"fg_ari": cat["ari"][keep], "mbo": cat["mbo"][keep]},
                              seg[keep])
              for images, keep in (("all", torch.ones_like(several)), ("2+ objects", several))
              if keep.any()}
    all_masks = torch.cat(all_masks)
    return (out, stray_pixels(all_masks, seg),
            shared_sprites(all_masks, torch.cat(all_slots), seg), margin)


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

    device = pick_device(config.train.device)

    def record(metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:  # the lone sprites decide FG-ARI against the blocks
            metrics = {**metrics, **lone_sprites(config, Path(checkpoint_dir), device)}
        with curve_file.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    if config.data.synthetic:
        ensure_synthetic(config.data, resolution=config.model.resolution)
    if not args.report_only:
        fit(config, record, workdir=workdir, log=lambda s: print(s, flush=True))

    val = Batches.open(config.data.val, config.model, eval=True)
    seg, flat = [], []
    for batch in val.eval_batches(config.eval.batch_size, config.eval.max_images):
        _, target, labels = to_model_inputs(batch, config.model, torch.device("cpu"))
        seg.append(labels)
        flat.append(flat_reconstruction_loss(target))
    seg, flat = torch.cat(seg), float(torch.cat(flat).mean())
    print(f"\nconfig: {args.config} {' '.join(args.overrides)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; "
          f"{seg.shape[0]} validation images at {seg.shape[-1]}px\n")
    print("| step | train minutes (wall) | FG-ARI | mBO | train loss | val recon "
          "| lone sprites whole |")
    print("|---|---|---|---|---|---|---|")
    for r in read_curve(curve_file):
        lone = f"{r['lone/whole']} of {r['lone/images']}" if "lone/whole" in r else "–"
        print(f"| {r['step']} | {r['time/elapsed_s'] / 60:.1f} | {r['val/fg_ari']:.3f} | "
              f"{r['val/mbo']:.3f} | {r['train/loss']:.4g} | {r['val/recon']:.4g} "
              f"| {lone} |")
    print("\n| trivial baseline | FG-ARI | mBO |\n|---|---|---|")
    for name, s in trivial_baselines(seg).items():
        print(f"| {name} | {s['fg_ari']:.3f} | {s['mbo']:.3f} |")
    what = "token" if config.model.target == "features" else "colour"
    print(f"\nflat reconstruction (each image's mean {what} everywhere): val recon "
          f"{flat:.4g}; a curve at this level models nothing of the objects yet")
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
        rows, lone, shared, margin = by_object_count(config, latest, picture)
        for n, count, r in rows:
            print(f"| {n} | {count} | {r['ari']:.3f} | {r['mbo']:.3f} | {r['bari']:.3f} | "
                  f"{r['bmbo']:.3f} |")
        print("\nmargin over the best trivial baseline, paired over the images (mean "
              "difference, 95% bootstrap CI):\n")
        print("| metric | images | best baseline | margin | 95% CI |\n|---|---|---|---|---|")
        for images, by_metric in margin.items():
            for metric, m in by_metric.items():
                print(f"| {metric} | {images} ({m.images}) | {m.baseline} | {m.mean:+.3f} | "
                      f"{m.low:+.3f} to {m.high:+.3f} |")
        if lone["split"]:
            print(f"\none-object images: {lone['split']} of {lone['images']} split across "
                  f"slots; of their {lone['stray']} stray pixels {lone['rim']:.0%} lie on the "
                  f"sprite's rim and {lone['to_background']:.0%} went to the background's "
                  f"slot; median mask there {lone['winner_mask']:.2f} for the winning slot, "
                  f"{lone['own_mask']:.2f} for the sprite's own")
        if shared["sprites"]:
            print(f"\nsprites held by two or more slots (each winning >= 5% of its pixels): "
                  f"{shared['shared']} of {shared['sprites']}; median cosine of the slot "
                  f"vectors that share a sprite {shared['within']:.2f}, of the main slots "
                  f"of two different sprites {shared['between']:.2f}")
        print(f"\n{picture}: input | ground truth | masks | 2x2 blocks, 8 validation scenes")


if __name__ == "__main__":
    main()
