"""FG-ARI against sklearn, mBO against hand-computed values, nanmean."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from slotsweep.metrics.scores import fg_ari, mbo, nanmean, stripe_score


def sklearn_fg_ari(pred_masks: torch.Tensor, segmentation: torch.Tensor) -> np.ndarray:
    """Reference: argmax of the same bilinear resize, then sklearn image by image."""
    size = segmentation.shape[-2:]
    if pred_masks.shape[-2:] != size:
        pred_masks = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False)
    slots = pred_masks.argmax(1).numpy()
    scores = []
    for seg, pred in zip(segmentation.numpy(), slots, strict=True):
        foreground = seg > 0
        if foreground.any():
            scores.append(adjusted_rand_score(seg[foreground], pred[foreground]))
        else:
            scores.append(math.nan)
    return np.array(scores)


def assert_matches_sklearn(pred_masks: torch.Tensor, segmentation: torch.Tensor) -> None:
    ours = fg_ari(pred_masks, segmentation)
    assert ours.dtype == torch.float64 and ours.shape == segmentation.shape[:1]
    np.testing.assert_allclose(
        ours.numpy(), sklearn_fg_ari(pred_masks, segmentation), rtol=0, atol=1e-9
    )


def one_hot_masks(slots: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Slot index map [B, H, W] -> float one-hot masks [B, K, H, W]."""
    return F.one_hot(slots, num_slots).permute(0, 3, 1, 2).float()


def random_segmentation(generator, size, ignore) -> torch.Tensor:
    """Labels 0..5 on 4 images of `size`, with the `ignore` pattern of -1 pixels."""
    seg = torch.randint(0, 6, (4, *size), generator=generator)
    if ignore == "pixels":
        seg[torch.rand(seg.shape, generator=generator) < 0.2] = -1
    elif ignore == "rows":
        seg[:, ::3] = -1
    return seg


@pytest.mark.parametrize("size", [(8, 8), (17, 23), (64, 64)])
@pytest.mark.parametrize("num_slots", [1, 2, 5, 11])
@pytest.mark.parametrize("ignore", ["none", "pixels", "rows"])
def test_fg_ari_matches_sklearn(size, num_slots, ignore):
    seed = 1000 * size[0] + 10 * num_slots + len(ignore)
    generator = torch.Generator().manual_seed(seed)
    seg = random_segmentation(generator, size, ignore)
    noise = torch.rand(4, num_slots, *size, generator=generator)
    # Slots partly follow the objects, so that scores spread beyond chance level.
    masks = noise + one_hot_masks(seg.clamp(min=0) % num_slots, num_slots)
    assert_matches_sklearn(masks, seg)


@pytest.mark.parametrize(
    ("low", "size"), [((4, 4), (8, 8)), ((5, 7), (17, 23)), ((14, 14), (64, 64))]
)
@pytest.mark.parametrize("num_slots", [2, 5, 11])
def test_fg_ari_resizes_like_bilinear_interpolate(low, size, num_slots):
    generator = torch.Generator().manual_seed(num_slots)
    seg = random_segmentation(generator, size, "pixels")
    assert_matches_sklearn(torch.rand(4, num_slots, *low, generator=generator), seg)


def test_fg_ari_one_object():
    seg = torch.zeros(2, 6, 6, dtype=torch.long)
    seg[:, 1:5, 1:5] = 1
    masks = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    masks[1] = 0.0  # every pixel of image 1 in slot 0
    assert_matches_sklearn(masks, seg)
    # Split object -> 0 (sklearn: one true cluster, several predicted); unsplit -> 1.
    assert fg_ari(masks, seg).tolist() == [0.0, 1.0]


def test_fg_ari_all_pixels_in_one_slot():
    generator = torch.Generator().manual_seed(1)
    seg = torch.randint(0, 4, (3, 9, 9), generator=generator)
    masks = torch.zeros(3, 5, 9, 9)
    masks[:, 2] = 1.0
    assert_matches_sklearn(masks, seg)
    assert fg_ari(masks, seg).tolist() == [0.0, 0.0, 0.0]


def test_fg_ari_no_foreground_is_nan():
    generator = torch.Generator().manual_seed(2)
    seg = torch.randint(1, 4, (3, 8, 8), generator=generator)
    seg[0] = 0
    seg[2] = -1
    scores = fg_ari(torch.rand(3, 3, 8, 8, generator=generator), seg)
    assert math.isnan(scores[0]) and math.isnan(scores[2]) and not math.isnan(scores[1])


def test_fg_ari_empty_slots():
    generator = torch.Generator().manual_seed(3)
    seg = torch.randint(-1, 5, (4, 12, 12), generator=generator)
    slots = torch.randint(0, 2, (4, 12, 12), generator=generator) * 7  # slots 0 and 7 of 11
    assert_matches_sklearn(one_hot_masks(slots, 11), seg)


def test_fg_ari_more_slots_than_uint8_holds():
    generator = torch.Generator().manual_seed(7)
    seg = torch.randint(0, 40, (2, 20, 20), generator=generator)
    assert_matches_sklearn(torch.rand(2, 300, 20, 20, generator=generator), seg)


def test_fg_ari_every_pixel_its_own_cluster():
    seg = torch.arange(1, 10).view(1, 3, 3)
    own = one_hot_masks(torch.arange(9).view(1, 3, 3), 9)
    assert fg_ari(own, seg).tolist() == [1.0]  # sklearn: identical partitions
    one_object = torch.ones(1, 3, 3, dtype=torch.long)
    assert_matches_sklearn(own, one_object)
    assert_matches_sklearn(one_hot_masks(torch.zeros(1, 3, 3, dtype=torch.long), 9), seg)


def test_fg_ari_single_foreground_pixel_is_one():
    seg = torch.zeros(1, 4, 4, dtype=torch.long)
    seg[0, 2, 1] = 5
    assert fg_ari(torch.rand(1, 3, 4, 4), seg).tolist() == [1.0]  # as sklearn, n < 2


@pytest.mark.parametrize("scale", [97, 10**6])  # dense rows / remapped to ranks
def test_fg_ari_large_label_ids(scale):
    generator = torch.Generator().manual_seed(4)
    small_ids = torch.randint(-1, 6, (4, 16, 16), generator=generator)
    seg = torch.where(small_ids > 0, small_ids * scale + 3, small_ids)
    masks = torch.rand(4, 5, 16, 16, generator=generator)
    assert_matches_sklearn(masks, seg)
    torch.testing.assert_close(fg_ari(masks, seg), fg_ari(masks, small_ids))


def test_fg_ari_keeps_inputs_and_accepts_other_dtypes():
    generator = torch.Generator().manual_seed(5)
    seg = torch.randint(-3, 6, (2, 10, 10), generator=generator, dtype=torch.int32)
    before = seg.clone()
    masks = torch.rand(2, 4, 10, 10, generator=generator, dtype=torch.float64)
    assert_matches_sklearn(masks, seg.long())
    torch.testing.assert_close(fg_ari(masks, seg), fg_ari(masks.float(), seg.long()))
    assert torch.equal(seg, before)
    assert fg_ari(masks.bfloat16(), seg.to(torch.uint8).clamp(max=5)).dtype == torch.float64
    assert not mbo(masks.requires_grad_(), seg).isnan().any()


def test_fg_ari_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="batch sizes differ"):
        fg_ari(torch.rand(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))


# mBO: two objects on a 2x4 image; pixels are (row, col).
#   segmentation      slots
#   1 1 2 2           0 0 1 1
#   1 1 2 0           0 1 1 1
SEG = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 0]]])
SLOTS = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1]]])


def test_mbo_hand_computed():
    # Object 1 = {(0,0),(0,1),(1,0),(1,1)}: 4 px. Slot 0 = {(0,0),(0,1),(1,0)}: 3 px.
    # Slot 1 = {(0,2),(0,3),(1,1),(1,2),(1,3)}: 5 px, background (1,3) included.
    # Object 1: IoU with slot 0 = 3 / (4 + 3 - 3) = 3/4; with slot 1 = 1 / (4 + 5 - 1) = 1/8.
    # Object 2 = {(0,2),(0,3),(1,2)}: 3 px; IoU with slot 1 = 3 / (3 + 5 - 3) = 3/5.
    # mBO = (3/4 + 3/5) / 2 = 0.675.
    assert mbo(one_hot_masks(SLOTS, 2), SEG).tolist() == pytest.approx([0.675], abs=1e-12)


def test_mbo_excludes_ignored_pixels():
    seg = SEG.clone()
    seg[0, 1, 3] = -1  # the background pixel of slot 1 is now ignored: slot 1 has 4 px
    # Object 1: max(3/4, 1 / (4 + 4 - 1) = 1/7) = 3/4. Object 2: 3 / (3 + 4 - 3) = 3/4.
    assert mbo(one_hot_masks(SLOTS, 2), seg).tolist() == pytest.approx([0.75], abs=1e-12)


def test_mbo_averages_only_objects_of_each_image():
    seg = torch.cat([SEG, torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 0]]])])
    slots = torch.cat([SLOTS, SLOTS])
    # Image 1 has object 2 only: IoU with slot 1 = 3 / (3 + 5 - 3) = 3/5; label 1 absent.
    assert mbo(one_hot_masks(slots, 3), seg).tolist() == pytest.approx([0.675, 0.6], abs=1e-12)


def test_mbo_perfect_and_no_object():
    seg = torch.stack([SEG[0], torch.zeros(2, 4, dtype=torch.long), -torch.ones(2, 4).long()])
    scores = mbo(one_hot_masks(seg.clamp(min=0), 3), seg)
    assert scores[0].item() == 1.0 and scores[1:].isnan().all()


def test_mbo_resizes_like_fg_ari():
    generator = torch.Generator().manual_seed(6)
    seg = torch.randint(-1, 4, (2, 12, 12), generator=generator)
    low = torch.rand(2, 3, 3, 3, generator=generator)
    high = F.interpolate(low, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mbo(low, seg), mbo(high, seg))


def test_nanmean():
    assert nanmean(torch.tensor([1.0, math.nan, 3.0])) == 2.0
    assert nanmean(np.array([0.5, 0.25])) == 0.375
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(nanmean(torch.tensor([math.nan, math.nan])))
        assert math.isnan(nanmean(np.array([])))


class TestStripeScore:
    """The degeneracy score separates stripes and blocks from object masks."""

    @staticmethod
    def one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()

    def test_stripes_and_blocks_score_high(self):
        from slotsweep.metrics.baselines import block_masks

        stripes = (torch.arange(64) * 5 // 64).view(1, 1, 64).expand(1, 64, 64)
        assert stripe_score(self.one_hot(stripes, 5)).item() == pytest.approx(1.0)
        assert stripe_score(self.one_hot(stripes.transpose(1, 2), 5)).item() == pytest.approx(1)
        for grid in (2, 3, 4):
            assert stripe_score(block_masks(grid, 64, 64)[None]).item() == pytest.approx(1.0)
        rng = np.random.default_rng(0)  # stripes whose boundaries wobble by ±2 pixels
        cols = torch.arange(64)[None] + torch.from_numpy(rng.integers(-2, 3, (64, 1)))
        wobbly = (cols.clamp(0, 63) * 5 // 64)[None]
        assert stripe_score(self.one_hot(wobbly, 5)).item() > 0.9

    def test_object_masks_score_low(self):
        from slotsweep.data.sources.dsprites import generate

        scenes = generate(300, seed=0, resolution=64)
        labels = torch.from_numpy(scenes["segmentation"]).long()
        scores = stripe_score(self.one_hot(labels, 5))
        assert nanmean(scores) < 0.35
        assert float(torch.nanquantile(scores, 0.95)) < 0.5

    def test_single_segment_is_nan(self):
        masks = torch.zeros(2, 3, 8, 8)
        masks[:, 1] = 1.0
        assert torch.isnan(stripe_score(masks)).all()


def test_object_metrics_equals_fg_ari_and_mbo():
    from slotsweep.metrics.scores import object_metrics

    gen = torch.Generator().manual_seed(5)
    masks = torch.rand(4, 5, 7, 9, generator=gen)
    seg = torch.randint(-1, 4, (4, 21, 27), generator=gen)
    ari, best = object_metrics(masks, seg)
    torch.testing.assert_close(ari, fg_ari(masks, seg), equal_nan=True)
    torch.testing.assert_close(best, mbo(masks, seg), equal_nan=True)


def test_margins_over_the_best_trivial_baseline():
    """The margin is the paired mean difference to the baseline with the best mean, per
    metric, and its bootstrap CI is tight around a perfect model's and spans 0 for a
    model that is the 2x2 blocks."""
    from slotsweep.data.sources.dsprites import generate
    from slotsweep.metrics.baselines import block_masks, margins, trivial_baselines

    seg = torch.from_numpy(generate(120, seed=2, resolution=32)["segmentation"]).long()
    seg[0] = 0  # an image without objects: NaN scores, left out of the pairs
    table = trivial_baselines(seg)
    perfect = F.one_hot(seg, 5).permute(0, 3, 1, 2).float()
    blocks = block_masks(2, 32, 32).expand(120, -1, -1, -1)
    for masks, expect_positive in ((perfect, True), (blocks, False)):
        scores = {"fg_ari": fg_ari(masks, seg), "mbo": mbo(masks, seg)}
        out = margins(scores, seg)
        for metric, m in out.items():
            best = max(table, key=lambda name: table[name][metric])
            assert m.baseline == best and m.images == 119
            assert m.mean == pytest.approx(nanmean(scores[metric]) - table[best][metric])
            assert m.low <= m.mean <= m.high
        if expect_positive:
            assert out["fg_ari"].low > 0.3 and out["mbo"].low > 0.5
    assert out["fg_ari"].baseline == "blocks 2x2" and out["fg_ari"].mean == 0
    assert out["mbo"].mean < 0 and out["mbo"].high < 0  # blocks 2x2 lose to 4x4 on mBO


def test_against_baselines_names_the_best_baseline_per_metric():
    """The summary line compares each metric with the baseline that scores best on it,
    and its verdict follows the comparisons: 2x2 blocks are the FG-ARI bar and 4x4 blocks
    the mBO bar of these scenes, so the 2x2 blocks themselves are above on neither."""
    from slotsweep.data.sources.dsprites import generate
    from slotsweep.metrics.baselines import against_baselines, trivial_baselines

    table = trivial_baselines(
        torch.from_numpy(generate(120, seed=2, resolution=32)["segmentation"]).long())
    bar = {m: max(table, key=lambda name: table[name][m]) for m in ("fg_ari", "mbo")}
    assert bar == {"fg_ari": "blocks 2x2", "mbo": "blocks 4x4"}
    as_reported = {f"val/{m}": v for m, v in table["blocks 2x2"].items()}
    line = against_baselines(as_reported, table)
    assert (f"FG-ARI {table['blocks 2x2']['fg_ari']:.3f} vs "
            f"{table['blocks 2x2']['fg_ari']:.3f} (blocks 2x2)") in line
    assert f"vs {table['blocks 4x4']['mbo']:.3f} (blocks 4x4)" in line
    assert line.endswith("below on both: no better than fixed blocks")
    level = {m: table[bar[m]][m] for m in bar}
    assert against_baselines({"val/fg_ari": level["fg_ari"] + 0.01,
                              "val/mbo": level["mbo"] + 0.01}, table).endswith("above on both")
    assert against_baselines({"val/fg_ari": 0.0, "val/mbo": level["mbo"] + 0.01},
                             table).endswith("above on mBO only")
    assert against_baselines({"val/fg_ari": math.nan, "val/mbo": 0.9},
                             table).endswith("not scored")


def test_flat_reconstruction_is_the_best_constant_per_image():
    """The flat baseline's loss: 0 for a flat image, 1 for a half -1 / half +1 image, the
    per-token spread for tokens; and no other constant per image does better."""
    from slotsweep.metrics.baselines import flat_reconstruction_loss

    images = torch.zeros(3, 3, 8, 8)
    images[0] = 0.3  # flat
    images[1, :, :, :4], images[1, :, :, 4:] = -1.0, 1.0  # two halves
    images[2] = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = flat_reconstruction_loss(images)
    assert loss.shape == (3,)
    assert loss[0] == pytest.approx(0.0, abs=1e-12) and loss[1] == pytest.approx(1.0)
    colour = images[2].mean(dim=(1, 2), keepdim=True)
    assert loss[2] == pytest.approx(float((images[2] - colour).pow(2).mean()))
    for shift in (0.05, -0.2):  # any other flat colour reconstructs worse
        assert float((images[2] - colour - shift).pow(2).mean()) > loss[2]

    tokens = torch.tensor([[[2.0, 0.0], [-2.0, 0.0]]])  # [B=1, N=2, D=2]: mean token (0, 0)
    assert flat_reconstruction_loss(tokens).tolist() == pytest.approx([2.0])  # (4+0+4+0)/4
