"""benchmarks/learning.py end to end on tiny shards: the curve, the baselines, the
by-object breakdown and the masks-next-to-blocks picture agree with each other."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slotsweep.config import load_config
from slotsweep.data.reader import ShardDataset
from tests.support.tables import table

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "learning.py"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.train.steps > 0


def run_benchmark(script: str, *args: str) -> str:
    """Run `benchmarks/<script>` on one thread from the checkout; its stdout (it must
    exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_learning_benchmark_on_tiny_shards(dsprites16, tmp_path):
    overrides = [
        f"data.train={dsprites16 / 'train'}", f"data.val={dsprites16 / 'val'}",
        "data.synthetic=false", "model.resolution=16", "model.encoder_channels=8",
        "model.decoder_channels=8", "model.decoder_layers=2", "model.mlp_hidden_size=32",
        "train.steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.device=cpu", "eval.every=2", "eval.batch_size=8",
        "eval.max_images=16",
    ]
    out = run_benchmark("learning.py", "configs/dsprites_binding.yaml", *overrides,
                        "--workdir", str(tmp_path))

    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    rows = table(out, "| step |")
    assert [int(r[0]) for r in rows] == [c["step"] for c in curve] == [2, 4]
    assert [float(r[2]) for r in rows] == [round(c["val/fg_ari"], 3) for c in curve]
    assert [float(r[5]) for r in rows] == [float(f"{c['val/recon']:.4g}") for c in curve]

    # The flat reconstruction, from the validation shards' pixels (in [-1, 1]) here.
    val = ShardDataset(dsprites16 / "val")
    images = np.stack([val[i]["image"] for i in range(len(val))]) / 127.5 - 1.0
    flat = ((images - images.mean(axis=(1, 2), keepdims=True)) ** 2).mean(axis=(1, 2, 3))
    printed = re.search(r"flat reconstruction \(each image's mean colour everywhere\): "
                        r"val recon ([0-9.e-]+);", out)
    assert printed and float(printed[1]) == pytest.approx(flat.mean(), rel=1e-3)

    baselines = {r[0]: (float(r[1]), float(r[2])) for r in table(out, "| trivial baseline |")}
    by_objects = table(out, "| objects |")
    counts = [int(r[1]) for r in by_objects]
    assert sum(counts) <= 16 and all(c > 0 for c in counts)
    # The per-object-count means of the 2x2 blocks average back to the baseline table's.
    weighted = sum(c * float(r[4]) for c, r in zip(counts, by_objects, strict=True)) / sum(counts)
    assert weighted == pytest.approx(baselines["blocks 2x2"][0], abs=2e-3)
    # ... and the model's to its last evaluation (same checkpoint, same images).
    model = sum(c * float(r[2]) for c, r in zip(counts, by_objects, strict=True)) / sum(counts)
    assert model == pytest.approx(curve[-1]["val/fg_ari"], abs=2e-3)

    # The margins: the model's mean minus the best baseline's, paired over the images.
    margin = {(r[0], r[1].split(" (")[0]): r for r in table(out, "| metric |")}
    assert {images for _, images in margin} <= {"all", "2+ objects"}
    for column, metric in ((0, "fg_ari"), (1, "mbo")):
        _, images, best, mean, ci = margin[(metric, "all")]
        assert int(images.split("(")[1].rstrip(")")) == sum(counts)
        assert baselines[best][column] == max(b[column] for b in baselines.values())
        assert float(mean) == pytest.approx(
            curve[-1][f"val/{metric}"] - baselines[best][column], abs=3e-3)
        low, high = (float(x) for x in ci.split(" to "))
        assert low <= float(mean) <= high

    # Each evaluation's row counts the lone sprites its checkpoint keeps whole; the last
    # one's count is the breakdown's (same checkpoint, same images).
    assert [r[6] for r in rows] == [f"{c['lone/whole']} of {c['lone/images']}" for c in curve]
    ones = {int(r[0]): int(r[1]) for r in by_objects}.get(1, 0)
    split = re.search(r"one-object images: (\d+) of (\d+) split", out)
    assert curve[-1]["lone/images"] == ones > 0  # the 16 scenes hold lone sprites
    assert curve[-1]["lone/whole"] == ones - (int(split[1]) if split else 0)

    shared = re.search(r"sprites held by two or more slots .*: (\d+) of (\d+);", out)
    assert shared and int(shared[1]) <= int(shared[2]) and int(shared[2]) >= sum(counts)

    picture = tmp_path / "masks_vs_blocks.png"
    assert re.search(rf"{re.escape(str(picture))}: input \| ground truth", out)
    image = np.asarray(Image.open(picture))
    tile = (16 + 1) * 4  # 16 px + a white line, upscaled 4x
    assert image.shape == (8 * tile, 4 * tile, 3)
    blocks = image[:tile - 4, 3 * tile:4 * tile - 4]  # first scene's 2x2 block tile
    quadrants = {tuple(blocks[y, x]) for y in (5, tile - 10) for x in (5, tile - 10)}
    assert len(quadrants) == 4  # four blocks, four colours


def test_learning_report_before_any_evaluation(dsprites16, tmp_path):
    """--report-only on a run that has not evaluated yet (a lease that ended early) prints
    the baselines and says so, instead of failing on an empty curve."""
    overrides = [f"data.train={dsprites16 / 'train'}", f"data.val={dsprites16 / 'val'}",
                 "data.synthetic=false", "model.resolution=16", "eval.max_images=16"]
    out = run_benchmark("learning.py", "configs/dsprites_binding.yaml", *overrides,
                        "--report-only", "--workdir", str(tmp_path))
    assert table(out, "| step |") == []
    assert "blocks 2x2" in out
    assert "last: no evaluation yet" in out
    assert "by objects" not in out  # no checkpoint to break down


def _load_learning():
    """benchmarks/learning.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning", SCRIPT)
    learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learning)
    return learning


def test_stray_pixels_counts_where_a_lone_sprite_is_split():
    """The one-object diagnosis: which images are split, and whether the stray pixels
    sit on the sprite's rim and go to the background's slot."""
    import torch

    learning = _load_learning()
    seg = torch.zeros(3, 8, 8, dtype=torch.long)
    seg[:, 2:6, 2:6] = 1  # a 4x4 sprite: 12 rim pixels, 4 inside
    seg[2, 0, 0] = 2  # a second object: image 2 is not a one-object image
    label = torch.zeros(3, 8, 8, dtype=torch.long)  # slot 0: the background
    label[:, 2:6, 2:6] = 1  # slot 1: the sprite
    label[0, 2, 2] = 2  # image 0: a rim pixel to an idle slot,
    label[0, 2, 3] = 0  # another to the background's slot,
    label[0, 3, 3] = 3  # an inside pixel to another idle slot
    masks = torch.nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float() * 0.6 + 0.1
    masks[0, 1, 2, 2] = 0.3  # the sprite's own slot's mask at its first stray pixel

    out = learning.stray_pixels(masks, seg)
    assert (out["images"], out["split"], out["stray"]) == (2, 1, 3)  # image 1 is whole
    assert out["rim"] == pytest.approx(2 / 3)
    assert out["to_background"] == pytest.approx(1 / 3)
    assert out["winner_mask"] == pytest.approx(0.7)
    assert out["own_mask"] == pytest.approx(0.1)  # median of 0.3, 0.1, 0.1


def test_shared_sprites_finds_the_slots_that_split_a_sprite():
    """The duplicate-slot diagnosis: a sprite counts as shared when a second slot wins
    at least 5% of its pixels, and the cosines compare sharing slots with the main slots
    of different sprites."""
    import torch

    learning = _load_learning()
    seg = torch.zeros(2, 8, 8, dtype=torch.long)
    seg[0, 1:6, 1:6] = 1  # image 0: one 5x5 sprite (25 pixels)
    seg[1, 0:2, 0:2], seg[1, 5:8, 5:8] = 1, 2  # image 1: two sprites
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[0, 1:6, 1:6] = 1
    label[0, 1, 1:3] = 2  # 2 of 25 pixels (8%) to slot 2: shared
    label[0, 5, 5] = 0  # 1 of 25 (4%) to the background's slot: below the threshold
    label[1, 0:2, 0:2], label[1, 5:8, 5:8] = 1, 2
    masks = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2).float()
    slots = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.1]],
                          [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])

    out = learning.shared_sprites(masks, slots, seg)
    assert (out["sprites"], out["shared"]) == (3, 1)
    assert out["within"] == pytest.approx(1 / (1.01 ** 0.5))  # cos([1, 0], [1, 0.1])
    assert out["between"] == pytest.approx(0.0)


def test_precision_benchmark_prints_both_precisions():
    """benchmarks/precision.py --smoke: a row per config, the speed-up is fp32 / bf16 as
    printed, and bf16's loss on the same weights is within 1% of fp32's."""
    rows = table(run_benchmark("precision.py", "--smoke"), "| config |")
    assert [r[0].split()[0] for r in rows] == ["dsprites_binding", "dsprites_binding64"]
    for _, fp32, bf16, speedup, gap in rows:
        assert float(speedup.rstrip("x")) == pytest.approx(float(fp32) / float(bf16), rel=0.05)
        assert float(gap) < 1e-2


def test_eval_variants_reference_row_is_the_trainers_evaluation(dsprites16, tmp_path):
    """benchmarks/eval_variants.py on a checkpoint of the authors' model: its reference
    row (the checkpoint's own fresh noise, fp32) scores what the trainer's evaluation
    logged for that checkpoint, and it adds every noise / sigma / precision variant."""
    overrides = [
        f"data.train={dsprites16 / 'train'}", f"data.val={dsprites16 / 'val'}",
        "data.synthetic=false", "model.resolution=16", "model.encoder_channels=8",
        "model.decoder_channels=8", "model.decoder_layers=2", "model.slot_size=16",
        "model.mlp_hidden_size=32", "train.steps=2", "train.batch_size=4",
        "train.warmup_steps=1", "train.checkpoint_every=2", "train.device=cpu",
        "eval.every=2", "eval.batch_size=8", "eval.max_images=16",
    ]
    run_benchmark("learning.py", "configs/dsprites_small_authors.yaml", *overrides,
                  "--workdir", str(tmp_path))
    curve = json.loads((tmp_path / "curve.jsonl").read_text().splitlines()[-1])
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    rows = table(run_benchmark("eval_variants.py", str(checkpoint), "--batch-size", "5"),
                 "| evaluation |")
    assert [r[0] for r in rows] == [
        "fresh noise, sigma x1.0, fp32", "seeded noise, sigma x1.0, fp32",
        "seeded noise, sigma x1.7, fp32", "seeded noise, sigma x2.5, fp32",
        "fresh noise, sigma x1.7, fp32", "fresh noise, sigma x2.5, fp32",
        "fresh noise, sigma x1.0, bf16"]
    reference = rows[0]
    assert reference[1] == f"{curve['lone/whole']} of {curve['lone/images']}"
    assert float(reference[2]) == pytest.approx(curve["val/fg_ari"], abs=2e-3)
    assert float(reference[3]) == pytest.approx(curve["val/mbo"], abs=2e-3)


def test_predictions_edit_changes_the_model_before_it_runs(dsprites16, tmp_path):
    """The sigma scaling of eval_variants reaches the slots (and nothing else moves)."""
    import torch

    from slotsweep.models import build_model
    from slotsweep.training import checkpoint

    learning = _load_learning()
    config = load_config("configs/dsprites_small_authors.yaml", [
        f"data.val={dsprites16 / 'val'}", "model.resolution=16", "eval.max_images=8",
        "eval.batch_size=8"])
    model = build_model(config.model, config.loss)
    saved = checkpoint.save(tmp_path, 0, {"model": model.state_dict()}, config.to_yaml())

    def slots(edit=None):
        return torch.cat([out["slots"] for _, out, _ in
                          learning.predictions(config, saved, edit=edit)])

    def widen(m):
        with torch.no_grad():
            m.slot_attention.slots_log_sigma.add_(1.0)

    assert torch.equal(slots(), slots())  # fresh noise, seeded: the same every pass
    assert not torch.allclose(slots(widen), slots())


def test_decoders_benchmark_compares_the_authors_model_with_ours():
    """benchmarks/decoders.py --smoke: a row per resolution, the ratio is as printed, and
    the parameter counts are the two models' (the authors' 685,380 at 64x64)."""
    rows = table(run_benchmark("decoders.py", "--smoke"), "| resolution, batch |")
    assert [r[0] for r in rows] == ["32x32, 1", "64x64, 1"]
    for _, ours, authors, ratio, _, _ in rows:
        assert float(ratio.rstrip("x")) == pytest.approx(float(authors) / float(ours), rel=0.02)
    assert [r[4:] for r in rows] == [["124,580", "173,732"], ["504,964", "685,380"]]
