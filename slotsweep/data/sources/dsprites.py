"""Deterministic colored-on-colored multi-dSprites scenes (numpy only).

DeepMind's multi_object_datasets describe "colored_on_colored" multi-dSprites (64×64 RGB,
1–4 sprites with occlusion, random RGB sprite and background colours; PAPER.md section
"Colored multi-dSprites") but never released the generator. This module reproduces that
description so that the paper's experiments can run on data we generate ourselves.

Conventions
-----------
- Coordinates are fractions of the image: pixel (row i, column j) has its centre at
  x = (j + 0.5) / R, y = (i + 0.5) / R, so x grows to the right and y grows downwards.
- Shape ids (``SHAPES``): 0 = square, 1 = ellipse, 2 = heart (dSprites' order).
- ``scale`` is continuous, uniform in [0.5, 1] (dSprites uses the six values
  linspace(0.5, 1, 6)). At scale 1 a square's side is ``SPRITE_SIZE`` = 0.3 of the image
  (19 px at 64×64), an ellipse is 0.375 × 0.19 and a heart about 0.34 wide.
- ``orientation`` is uniform in [0, 2π): the sprite is turned counter-clockwise on screen
  by that angle. At 0 the ellipse's long axis is horizontal and the heart is upright
  (lobes at the top, tip at the bottom).
- ``x``, ``y`` (sprite centre) are uniform in [0.1, 0.9], so sprites stay mostly inside
  the image; a large sprite near an edge may be clipped a little.
- Colours are uniform RGB in [0, 1]; a sprite colour within L∞ distance 0.15
  (``MIN_COLOR_DISTANCE``) of the background is redrawn so that no sprite is
  near-invisible. Sprites are not forced to differ from each other.
- Sprites are painted in order, later ones occluding earlier ones. A sprite hidden
  entirely by later ones is kept (its properties are stored) with ``visible`` = 0 and
  ``visibility`` = 0; its label never appears in the segmentation.

Sample i depends only on (seed, start + i) through ``np.random.SeedSequence([seed,
start + i])``, so any chunking of the index range yields identical arrays. The sampled
properties do not depend on the resolution.
"""

from __future__ import annotations

import numpy as np

# Bump when a change to the generator changes its output, so stale shards are noticed.
GENERATOR_VERSION = 1

SHAPES = ("square", "ellipse", "heart")
OBJECT_FIELDS = (
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
FIELD_INDEX = {name: i for i, name in enumerate(OBJECT_FIELDS)}

SPRITE_SIZE = 0.3  # square side at scale 1, as a fraction of the image width
SCALE_RANGE = (0.5, 1.0)
POSITION_RANGE = (0.1, 0.9)
ELLIPSE_AXES = (1.25, 0.625)  # semi-axes in units of half the square side (aspect 2:1)
HEART_Y_OFFSET = 0.118  # centres the bounding box of the implicit heart on the origin
MIN_COLOR_DISTANCE = 0.15

_CHUNK_SCENES = 256  # scenes rendered together: a few tens of MB of temporaries at 64×64


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    a, b = ELLIPSE_AXES
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The classic implicit heart (x² + y² − 1)³ − x² y³ ≤ 0: 2.28 wide, 2.24 tall,
    # bottom tip at y = −1. Its area (3.66) is close to the square's (4).
    # Products instead of ``** 3``, which numpy evaluates with a slow general pow.
    y = v + HEART_Y_OFFSET
    u2, y2 = u * u, y * y
    t = u2 + y2 - 1.0
    return t * t * t <= u2 * y2 * y


_SHAPE_TESTS = (_square, _ellipse, _heart)


def _local_coords(scale, x, y, orientation, resolution: int):
    """Pixel centres in sprite-local coordinates, in units of half the square side.

    scale, x, y, orientation: [N]. Returns u, v float32 [N, R, R]; v points up on screen.
    Float32 halves the memory traffic; stored properties are float32 anyway.
    """
    scale, x, y, orientation = (
        np.asarray(a, dtype=np.float32).reshape(-1, 1, 1) for a in (scale, x, y, orientation)
    )
    centres = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    dx = centres[None, None, :] - x  # [N, 1, R]
    dy = y - centres[None, :, None]  # [N, R, 1]
    inv_half = 2.0 / (SPRITE_SIZE * scale)  # [N, 1, 1]
    cos, sin = np.cos(orientation) * inv_half, np.sin(orientation) * inv_half
    # Rotating the pixel offsets by −orientation turns the sprite by +orientation.
    u = cos * dx + sin * dy  # [N, R, R]
    v = cos * dy - sin * dx  # [N, R, R]
    return u, v


def sprite_mask(shape, scale, x, y, orientation, resolution: int = 64) -> np.ndarray:
    """Pixels covered by a sprite: bool [R, R], or [*batch, R, R] for array arguments.

    Arguments broadcast against each other; the renderer calls this once per chunk with
    arrays of many sprites, and tests call it with scalars from the stored properties.
    """
    shape, scale, x, y, orientation = np.broadcast_arrays(
        *(np.asarray(a) for a in (shape, scale, x, y, orientation))
    )
    batch_shape = shape.shape
    shape = shape.reshape(-1).astype(np.int64)
    if np.any((shape < 0) | (shape >= len(SHAPES))):
        raise ValueError(f"sprite shape ids must be in 0..{len(SHAPES) - 1} {SHAPES}")
    scale, x, y, orientation = (a.reshape(-1) for a in (scale, x, y, orientation))

    mask = np.zeros((len(shape), resolution, resolution), dtype=bool)
    for shape_id, inside in enumerate(_SHAPE_TESTS):
        selected = shape == shape_id
        if selected.any():
            u, v = _local_coords(
                scale[selected], x[selected], y[selected], orientation[selected], resolution
            )
            mask[selected] = inside(u, v)
    return mask.reshape(batch_shape + (resolution, resolution))


def _sample_scene(rng: np.random.Generator, min_objects: int, max_objects: int):
    """Background colour [3] and per-sprite properties of one scene, all float32."""
    num_objects = int(rng.integers(min_objects, max_objects + 1))
    background = rng.random(3)
    colors = rng.random((num_objects, 3))
    while True:
        too_close = np.abs(colors - background).max(axis=1) < MIN_COLOR_DISTANCE
        if not too_close.any():
            break
        colors[too_close] = rng.random((int(too_close.sum()), 3))
    sprites = np.zeros((num_objects, len(OBJECT_FIELDS)), dtype=np.float64)
    sprites[:, FIELD_INDEX["shape"]] = rng.integers(0, len(SHAPES), num_objects)
    sprites[:, FIELD_INDEX["r"] : FIELD_INDEX["b"] + 1] = colors
    sprites[:, FIELD_INDEX["scale"]] = rng.uniform(*SCALE_RANGE, num_objects)
    sprites[:, FIELD_INDEX["x"]] = rng.uniform(*POSITION_RANGE, num_objects)
    sprites[:, FIELD_INDEX["y"]] = rng.uniform(*POSITION_RANGE, num_objects)
    sprites[:, FIELD_INDEX["orientation"]] = rng.uniform(0.0, 2 * np.pi, num_objects)
    # Round to float32 before rendering so that the stored properties re-render exactly.
    return background.astype(np.float32), sprites.astype(np.float32)


def _render_chunk(backgrounds: np.ndarray, objects: np.ndarray, resolution: int):
    """Paint a chunk of scenes; fills objects' visible/visibility columns in place.

    backgrounds: [C, 3]; objects: [C, K, F] with padding rows all zero.
    Returns image uint8 [C, R, R, 3] and segmentation int16 [C, R, R].
    """
    num_scenes, max_objects, _ = objects.shape
    exists = objects[:, :, FIELD_INDEX["scale"]] > 0  # [C, K]; real sprites have scale ≥ 0.5
    sprites = objects[exists]  # [S, F]
    masks = np.zeros((num_scenes, max_objects, resolution, resolution), dtype=bool)
    masks[exists] = sprite_mask(
        sprites[:, FIELD_INDEX["shape"]],
        sprites[:, FIELD_INDEX["scale"]],
        sprites[:, FIELD_INDEX["x"]],
        sprites[:, FIELD_INDEX["y"]],
        sprites[:, FIELD_INDEX["orientation"]],
        resolution,
    )  # [C, K, R, R]

    # Paint order: sprite k + 1 occludes sprites 1..k, so a pixel's label is the largest
    # label among the sprites covering it (0 where none does).
    labels = np.arange(1, max_objects + 1, dtype=np.int16)[None, :, None, None]
    segmentation = (masks * labels).max(axis=1)  # [C, R, R]

    own_pixels = masks.sum(axis=(2, 3))  # [C, K]
    scene_offsets = (max_objects + 1) * np.arange(num_scenes)[:, None, None]
    label_counts = np.bincount(
        (segmentation + scene_offsets).reshape(-1), minlength=num_scenes * (max_objects + 1)
    ).reshape(num_scenes, max_objects + 1)
    visible_pixels = label_counts[:, 1:]  # [C, K]
    objects[:, :, FIELD_INDEX["visibility"]] = visible_pixels / np.maximum(own_pixels, 1)
    objects[:, :, FIELD_INDEX["visible"]] = visible_pixels > 0

    palette = np.concatenate(
        [backgrounds[:, None, :], objects[:, :, FIELD_INDEX["r"] : FIELD_INDEX["b"] + 1]],
        axis=1,
    )  # [C, K + 1, 3], entry 0 = background
    palette = np.round(palette * 255).astype(np.uint8)
    image = palette[np.arange(num_scenes)[:, None, None], segmentation]  # [C, R, R, 3]
    return image, segmentation


def generate(
    num: int,
    *,
    seed: int,
    start: int = 0,
    resolution: int = 64,
    min_objects: int = 1,
    max_objects: int = 4,
) -> dict[str, np.ndarray]:
    """Scenes start .. start + num − 1 of the dataset named by ``seed``.

    Returns ``id`` int64 [N], ``image`` uint8 [N, R, R, 3], ``segmentation`` int16
    [N, R, R] (0 = background, i = i-th sprite in paint order where it is top-most) and
    ``objects`` float32 [N, max_objects, len(OBJECT_FIELDS)] (padding rows all zero).
    """
    if num < 0 or start < 0 or seed < 0:
        raise ValueError(
            f"num, start and seed must be non-negative, got num={num}, start={start}, seed={seed}"
        )
    if not 0 <= min_objects <= max_objects or max_objects < 1:
        raise ValueError(
            f"need 0 <= min_objects <= max_objects and max_objects >= 1, got "
            f"min_objects={min_objects}, max_objects={max_objects}"
        )
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")

    backgrounds = np.zeros((num, 3), dtype=np.float32)
    objects = np.zeros((num, max_objects, len(OBJECT_FIELDS)), dtype=np.float32)
    for i in range(num):
        rng = np.random.default_rng(np.random.SeedSequence([seed, start + i]))
        backgrounds[i], sprites = _sample_scene(rng, min_objects, max_objects)
        objects[i, : len(sprites)] = sprites

    image = np.zeros((num, resolution, resolution, 3), dtype=np.uint8)
    segmentation = np.zeros((num, resolution, resolution), dtype=np.int16)
    for lo in range(0, num, _CHUNK_SCENES):
        hi = min(lo + _CHUNK_SCENES, num)
        image[lo:hi], segmentation[lo:hi] = _render_chunk(
            backgrounds[lo:hi], objects[lo:hi], resolution
        )
    return {
        "id": np.arange(start, start + num, dtype=np.int64),
        "image": image,
        "segmentation": segmentation,
        "objects": objects,
    }
