"""COCO label maps and DINOSAUR evaluation geometry, on a tiny COCO-format dataset.

Expected label maps come from an independent rasterisation: rectangles with integer
corners by array slicing (pycocotools fills pixel (r, c) when its centre (c + 0.5,
r + 0.5) lies inside the polygon, so such rectangles have no ambiguous edge pixels),
uncompressed RLE decoded by hand, compressed RLE compared with the mask it encodes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from slotsweep.data.sources.coco import (
    center_crop,
    downsample_image,
    instance_label_map,
    iterate_coco,
    load_coco,
    prepare_image,
    resize_label_map,
)
from tests.support.coco import COMPRESSED, CROWD_COUNTS, RLE_COUNTS, rect_mask

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _decode_counts(counts: list[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE by hand: alternating 0/1 runs, column-major, 0s first."""
    flat = np.concatenate([np.full(n, i % 2, dtype=bool) for i, n in enumerate(counts)])
    assert flat.size == height * width
    return flat.reshape(width, height).T


def test_label_map_polygon_rle_crowd_overlap(coco_dir):
    coco = load_coco(coco_dir / "instances.json")
    labels = instance_label_map(coco, 7)

    polygon = rect_mask(40, 50, 5, 4, 20, 16)
    far_polygon = rect_mask(40, 50, 28, 28, 45, 38)
    crowd = _decode_counts(CROWD_COUNTS, 40, 50)
    expected = np.zeros((40, 50), dtype=np.int16)
    expected[polygon] = 1  # annotation 10
    expected[COMPRESSED] = 2  # annotation 11
    expected[far_polygon] = 3  # annotation 13; the crowd annotation 12 gets no number
    expected[polygon & COMPRESSED] = -1
    expected[crowd] = -1
    assert labels.dtype == np.int16 and labels.shape == (40, 50)
    np.testing.assert_array_equal(labels, expected)
    assert (polygon & COMPRESSED).sum() == 5 * 6 and (crowd & far_polygon).sum() == 15


def test_label_map_uncompressed_rle_and_multipart_polygon(coco_dir):
    coco = load_coco(coco_dir / "instances.json")
    expected = np.zeros((30, 20), dtype=np.int16)
    expected[_decode_counts(RLE_COUNTS, 30, 20)] = 1  # annotation 20
    expected[rect_mask(30, 20, 10, 2, 15, 6) | rect_mask(30, 20, 12, 20, 18, 25)] = 2
    np.testing.assert_array_equal(instance_label_map(coco, 3), expected)
    np.testing.assert_array_equal(instance_label_map(coco, 5), np.zeros((24, 36), np.int16))


def test_resize_and_crop_geometry():
    # 400×600: 8 row bands of 50 px, 8 column stripes of 75 px. Short side 400 → 320 is a
    # factor 0.8, so bands become 40 px and stripes 60 px of a 480-wide map; the crop keeps
    # columns 80..399, i.e. 40 px of stripe 1, 60 px of stripes 2..5, 40 px of stripe 6.
    rows, cols = np.mgrid[0:400, 0:600]
    labels = (rows // 50 * 10 + cols // 75).astype(np.int16)
    resized = resize_label_map(labels, 320)
    assert resized.shape == (320, 480) and resized.dtype == np.int16
    out = center_crop(resized, 320)
    expected_rows = np.repeat(np.arange(8), 40)
    expected_cols = np.repeat([1, 2, 3, 4, 5, 6], [40, 60, 60, 60, 60, 40])
    np.testing.assert_array_equal(out, expected_rows[:, None] * 10 + expected_cols[None, :])
    # Portrait: the same with rows and columns swapped.
    np.testing.assert_array_equal(center_crop(resize_label_map(labels.T, 320), 320), out.T)


def test_center_crop_rounding_matches_torchvision():
    # Offset round(surplus / 2), half to even: surplus 3 → 2, surplus 1 → 0.
    line = np.arange(13)[None, :].repeat(10, axis=0)
    np.testing.assert_array_equal(center_crop(line, 10)[0], np.arange(2, 12))
    np.testing.assert_array_equal(center_crop(line[:, :11], 10)[0], np.arange(10))
    with pytest.raises(ValueError, match="centre-crop"):
        center_crop(line, 11)


def test_image_sizes_and_modes():
    gray = Image.fromarray(np.full((90, 60), 77, dtype=np.uint8))
    vit = prepare_image(gray)
    assert vit.shape == (224, 224, 3) and vit.dtype == np.uint8
    assert (vit == 77).all()
    small = downsample_image(Image.new("RGB", (300, 200), (1, 2, 3)), 128)
    assert small.shape == (128, 128, 3) and (small == [1, 2, 3]).all()


def test_iterate_coco(coco_dir):
    items = list(iterate_coco(coco_dir / "images", coco_dir / "instances.json"))
    assert [int(item["id"]) for item in items] == [3, 5, 7, 9]
    for item in items:
        assert item["id"].dtype == np.int64
        assert item["image_vit"].shape == (224, 224, 3) and item["image_vit"].dtype == np.uint8
        assert item["image"].shape == (128, 128, 3) and item["image"].dtype == np.uint8
        assert item["segmentation"].shape == (320, 320)
        assert item["segmentation"].dtype == np.int16
    gray, cmyk, _, halves = items
    assert (gray["image_vit"][..., 0] == gray["image_vit"][..., 1]).all()  # gray as RGB
    assert not cmyk["segmentation"].any()  # no annotation: all background
    # Image 9: left half white and labelled 1; both crops keep the same half.
    seg = halves["segmentation"]
    assert (seg[:, :160] == 1).all() and (seg[:, 160:] == 0).all()
    for image, half in ((halves["image_vit"], 112), (halves["image"], 64)):
        assert (image[:, : half - 2] > 200).all() and (image[:, half + 2 :] < 50).all()

    window = list(
        iterate_coco(
            coco_dir / "images",
            coco_dir / "instances.json",
            image_size=32,
            mask_size=16,
            target_size=8,
            start=1,
            count=2,
        )
    )
    assert [int(item["id"]) for item in window] == [5, 7]
    assert window[1]["segmentation"].shape == (16, 16)
    assert window[1]["image_vit"].shape == (32, 32, 3)


def test_missing_image_names_the_file(coco_dir, tmp_path):
    dataset = json.loads((coco_dir / "instances.json").read_text())
    dataset["images"][0]["file_name"] = "nowhere.jpg"
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(dataset))
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        list(iterate_coco(coco_dir / "images", annotations))


class _Crash(RuntimeError):
    pass


def test_prepare_coco_is_resumable_and_trainable(coco_dir, tmp_path):
    from slotsweep.config import build_config
    from slotsweep.data.format import read_manifest
    from slotsweep.data.reader import ShardDataset, verify
    from slotsweep.data.sources.coco import write_coco
    from slotsweep.data.sources.features import create_encoder
    from slotsweep.training.loop import fit

    enc = create_encoder("vit_base_patch16_224.dino", weights="random", img_size=32,
                         depth=2, embed_dim=32, num_heads=2)
    args = (str(coco_dir / "images"), str(coco_dir / "instances.json"))
    kw = {"batch_size": 1, "rows_per_shard": 1, "target_size": 16}
    straight = write_coco(*args, tmp_path / "straight", enc, **kw)

    seen = []

    def crash_after_two(n):
        seen.append(n)
        if sum(seen) >= 2:
            raise _Crash

    with pytest.raises(_Crash):
        write_coco(*args, tmp_path / "resumed", enc, progress=crash_after_two, **kw)
    resumed = write_coco(*args, tmp_path / "resumed", enc, **kw)
    for name in sorted(p.name for p in straight.iterdir()):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    verify(resumed)

    ds = ShardDataset(resumed)
    assert len(ds) == 4 and [int(ds[i]["id"]) for i in range(4)] == [3, 5, 7, 9]
    row = ds[2]  # image 7: the polygon, RLE, crowd and overlap image
    assert row["features"].shape == (4, 32) and row["features"].dtype == np.float16
    assert row["segmentation"].shape == (320, 320) and row["image"].shape == (16, 16, 3)
    assert {-1, 0, 1, 2, 3} <= set(np.unique(row["segmentation"]).tolist())
    attrs = read_manifest(resumed)["attributes"]
    assert attrs["dataset"] == "coco" and attrs["weights"] == "random"

    cfg = build_config({
        "model": {"encoder": "features", "decoder": "mlp_patch", "feature_dim": 32,
                  "num_patches": 4, "slot_size": 16, "mlp_hidden_size": 16, "num_slots": 3,
                  "decoder_hidden": [32]},
        "data": {"train": str(resumed), "val": str(resumed)},
        "train": {"steps": 2, "batch_size": 2, "device": "cpu", "log_every": 1},
        "eval": {"every": 2, "max_images": 4, "batch_size": 4},
    })
    result = fit(cfg, workdir=tmp_path / "run", log=None)
    assert np.isfinite(result["train/loss"])
