"""Tests for the built-in colored multi-dSprites generator."""

import numpy as np
import pytest

from slotsweep.data.sources.dsprites import (
    FIELD_INDEX,
    MIN_COLOR_DISTANCE,
    OBJECT_FIELDS,
    POSITION_RANGE,
    SCALE_RANGE,
    SHAPES,
    SPRITE_SIZE,
    generate,
    sprite_mask,
)

SHAPE, SCALE, X, Y = (FIELD_INDEX[f] for f in ("shape", "scale", "x", "y"))
ORIENTATION, VISIBLE, VISIBILITY = (
    FIELD_INDEX[f] for f in ("orientation", "visible", "visibility")
)
RGB = slice(FIELD_INDEX["r"], FIELD_INDEX["b"] + 1)


@pytest.fixture(scope="module", params=[32, 64], ids=["res32", "res64"])
def data(request):
    return generate(48, seed=3, start=5, resolution=request.param)


def _exists(objects: np.ndarray) -> np.ndarray:
    """Real sprites have scale ≥ 0.5; padding rows are all zero."""
    return objects[..., SCALE] > 0


def _sprite_masks(sprites: np.ndarray, resolution: int) -> list[np.ndarray]:
    """Re-rasterise each stored sprite on its own, one scalar call at a time."""
    return [
        sprite_mask(
            int(s[SHAPE]),
            float(s[SCALE]),
            float(s[X]),
            float(s[Y]),
            float(s[ORIENTATION]),
            resolution,
        )
        for s in sprites
    ]


def test_object_fields_order():
    assert OBJECT_FIELDS == (
        "visible",
        "shape",
        "r",
        "g",
        "b",
        "scale",
        "x",
        "y",
        "orientation",
        "visibility",
    )
    assert SHAPES == ("square", "ellipse", "heart")


def test_shapes_and_dtypes(data):
    r = data["image"].shape[1]
    assert data["id"].dtype == np.int64 and data["id"].tolist() == list(range(5, 53))
    assert data["image"].shape == (48, r, r, 3) and data["image"].dtype == np.uint8
    assert data["segmentation"].shape == (48, r, r)
    assert data["segmentation"].dtype == np.int16
    assert data["objects"].shape == (48, 4, len(OBJECT_FIELDS))
    assert data["objects"].dtype == np.float32


def test_same_seed_identical_and_chunking_invariant():
    whole = generate(300, seed=11)
    chunks = [generate(min(37, 300 - lo), seed=11, start=lo) for lo in range(0, 300, 37)]
    again = generate(300, seed=11)
    for key in whole:
        joined = np.concatenate([c[key] for c in chunks])
        np.testing.assert_array_equal(whole[key], joined, err_msg=key)
        np.testing.assert_array_equal(whole[key], again[key], err_msg=key)


def test_other_seed_differs():
    a, b = generate(20, seed=0), generate(20, seed=1)
    assert not np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["objects"], b["objects"])


def test_properties_independent_of_resolution():
    small, large = generate(10, seed=2, resolution=32), generate(10, seed=2, resolution=64)
    fields = [i for i, f in enumerate(OBJECT_FIELDS) if f not in ("visible", "visibility")]
    np.testing.assert_array_equal(small["objects"][..., fields], large["objects"][..., fields])


def test_label_map_matches_independent_painter(data):
    resolution = data["image"].shape[1]
    for objects, segmentation in zip(data["objects"], data["segmentation"], strict=True):
        expected = np.zeros((resolution, resolution), dtype=np.int16)
        sprites = objects[_exists(objects)]
        for k, mask in enumerate(_sprite_masks(sprites, resolution)):
            expected[mask] = k + 1
        np.testing.assert_array_equal(segmentation, expected)


def test_image_colours_follow_label_map(data):
    for image, segmentation, objects in zip(
        data["image"], data["segmentation"], data["objects"], strict=True
    ):
        background = image[segmentation == 0]
        assert len(background) > 0
        assert (background == background[0]).all()
        for k, sprite in enumerate(objects[_exists(objects)]):
            pixels = image[segmentation == k + 1].astype(np.int32)
            expected = sprite[RGB] * 255
            assert np.abs(pixels - expected).max(initial=0) <= 0.5 + 1e-3
            # Sprite colours are kept away from the background colour.
            distance = np.abs(expected - background[0].astype(np.float64)).max()
            assert distance >= MIN_COLOR_DISTANCE * 255 - 0.5


def test_visible_and_visibility_agree_with_label_map(data):
    resolution = data["image"].shape[1]
    for objects, segmentation in zip(data["objects"], data["segmentation"], strict=True):
        exists = _exists(objects)
        assert (objects[~exists] == 0).all()
        masks = _sprite_masks(objects[exists], resolution)
        for k, (sprite, mask) in enumerate(zip(objects[exists], masks, strict=True)):
            visible_pixels = (segmentation == k + 1).sum()
            assert sprite[VISIBLE] == float(visible_pixels > 0)
            assert sprite[VISIBILITY] == pytest.approx(visible_pixels / mask.sum(), abs=1e-6)


def test_object_counts_within_bounds():
    data = generate(60, seed=4, min_objects=2, max_objects=3)
    counts = _exists(data["objects"]).sum(axis=1)
    assert data["objects"].shape[1] == 3
    assert counts.min() == 2 and counts.max() == 3
    assert data["segmentation"].max() <= 3


def test_every_shape_and_count_appears():
    objects = generate(100, seed=0)["objects"]
    sprites = objects[_exists(objects)]
    assert set(sprites[:, SHAPE].astype(int)) == {0, 1, 2}
    assert set(_exists(objects).sum(axis=1)) == {1, 2, 3, 4}
    # Occlusion happens: some sprites are partly hidden.
    assert (sprites[:, VISIBILITY] < 1).any()


def test_properties_in_documented_ranges(data):
    sprites = data["objects"][_exists(data["objects"])]
    assert np.isin(sprites[:, SHAPE], [0, 1, 2]).all()
    assert ((sprites[:, RGB] >= 0) & (sprites[:, RGB] <= 1)).all()
    assert ((sprites[:, SCALE] >= SCALE_RANGE[0]) & (sprites[:, SCALE] <= SCALE_RANGE[1])).all()
    for field in (X, Y):
        assert (sprites[:, field] >= POSITION_RANGE[0]).all()
        assert (sprites[:, field] <= POSITION_RANGE[1]).all()
    assert ((sprites[:, ORIENTATION] >= 0) & (sprites[:, ORIENTATION] <= 2 * np.pi)).all()
    assert np.isin(sprites[:, VISIBLE], [0, 1]).all()
    assert ((sprites[:, VISIBILITY] >= 0) & (sprites[:, VISIBILITY] <= 1)).all()


def test_sprite_mask_batched_equals_scalar():
    shape = np.array([0, 1, 2, 2, 0])
    scale = np.array([0.5, 0.7, 1.0, 0.6, 0.9], dtype=np.float32)
    x = np.array([0.2, 0.5, 0.5, 0.8, 0.4], dtype=np.float32)
    y = np.array([0.3, 0.5, 0.4, 0.7, 0.6], dtype=np.float32)
    orientation = np.array([0.0, 1.0, 2.0, 3.0, 6.0], dtype=np.float32)
    batched = sprite_mask(shape, scale, x, y, orientation, 64)
    assert batched.shape == (5, 64, 64) and batched.dtype == bool
    for i in range(5):
        single = sprite_mask(shape[i], scale[i], x[i], y[i], orientation[i], 64)
        assert single.shape == (64, 64)
        np.testing.assert_array_equal(batched[i], single)


def test_sprite_mask_geometry():
    square = sprite_mask(0, 1.0, 0.5, 0.5, 0.0, 64)
    side = SPRITE_SIZE * 64
    assert abs(square.sum() - side**2) < 4 * side
    # The ellipse's long axis is horizontal at orientation 0 and turns with it.
    flat = sprite_mask(1, 1.0, 0.5, 0.5, 0.0, 64)
    upright = sprite_mask(1, 1.0, 0.5, 0.5, np.pi / 2, 64)
    assert flat.any(axis=0).sum() > 1.5 * flat.any(axis=1).sum()
    assert upright.any(axis=1).sum() > 1.5 * upright.any(axis=0).sum()
    # The heart points down at orientation 0 (row index grows downwards): its widest
    # rows are in the upper half.
    heart = sprite_mask(2, 1.0, 0.5, 0.5, 0.0, 64)
    widths = heart.sum(axis=1)
    assert widths[:32].max() > widths[32:].max()


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="min_objects"):
        generate(2, seed=0, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="resolution"):
        generate(2, seed=0, resolution=4)
    with pytest.raises(ValueError, match="shape ids"):
        sprite_mask(3, 1.0, 0.5, 0.5, 0.0, 16)


def test_parallel_generation_writes_the_same_shards(tmp_path, monkeypatch):
    """write_dsprites in worker processes writes what one process writes, row for row."""
    import pyarrow as pa

    from slotsweep.data.sources import synthetic

    monkeypatch.setattr(synthetic, "_CHUNK", 8)  # 20 chunks: enough to start the pool
    chunks = []
    real = synthetic._chunks

    def counting(starts, **kw):
        chunks.append((len(starts), kw["workers"]))
        return real(starts, **kw)

    monkeypatch.setattr(synthetic, "_chunks", counting)
    tables = {}
    for workers in (1, 2):
        out = synthetic.write_dsprites(tmp_path / f"w{workers}", num=160, seed=1, start=7,
                                       resolution=16, rows_per_shard=64, workers=workers)
        files = sorted(out.glob("shard-*.arrow"))
        assert len(files) == 3
        tables[workers] = pa.concat_tables(
            pa.ipc.open_file(pa.memory_map(str(f))).read_all() for f in files)
    assert chunks == [(20, 1), (20, 2)] and synthetic._POOL_MIN_CHUNKS <= 20
    assert tables[1].num_rows == 160 and tables[1].equals(tables[2])


def test_ensure_synthetic_can_write_the_validation_split_alone(tmp_path):
    """An evaluation-only run needs the validation scenes, not the training set; they are
    the same scenes either way (they start after the training split's indices)."""
    import pyarrow as pa

    from slotsweep.config import DataConfig
    from slotsweep.data.sources.synthetic import ensure_synthetic

    def val_table(root, splits):
        data = DataConfig(train=str(root / "train"), val=str(root / "val"), synthetic=True,
                          synthetic_train=40, synthetic_val=12)
        ensure_synthetic(data, resolution=16, workers=1, splits=splits)
        assert (root / "train").exists() == ("train" in splits)
        files = sorted((root / "val").glob("shard-*.arrow"))
        return pa.concat_tables(pa.ipc.open_file(pa.memory_map(str(f))).read_all()
                                for f in files)

    alone = val_table(tmp_path / "alone", ("val",))
    assert alone.num_rows == 12
    assert alone.equals(val_table(tmp_path / "both", ("train", "val")))


def test_a_split_generated_by_older_code_is_still_taken(tmp_path):
    """The training split in tests/e2e/data/storage-97db71b was generated by 97db71b,
    before the module moved to data/sources/: its manifest's generator name still
    matches, so `ensure_synthetic` keeps it (rather than refusing the folder)."""
    import shutil
    from pathlib import Path

    from slotsweep.config import DataConfig
    from slotsweep.data.sources.synthetic import ensure_synthetic

    old = Path(__file__).resolve().parents[1] / "e2e" / "data" / "storage-97db71b" / "data"
    shutil.copytree(old / "train", tmp_path / "train")
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "train").iterdir())
    data = DataConfig(train=str(tmp_path / "train"), val=str(tmp_path / "val"),
                      synthetic=True, synthetic_train=64, synthetic_val=16)
    ensure_synthetic(data, resolution=16, workers=1, splits=("train",))
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "train").iterdir()) == before
