"""Import DeepMind's multi-dSprites TFRecords (multi_object_datasets) as Arrow shards.

The released files (``multi_dsprites_{colored_on_colored,colored_on_grayscale,binarized}
.tfrecords``, GZIP) hold one ``tf.train.Example`` per scene, read in DeepMind's
multi_dsprites.py with these features (E = entities incl. the background, entity 0:
5 for colored_on_colored, 6 for colored_on_grayscale, 4 for binarized; C = 3 channels,
1 for binarized)::

    image        bytes_list, 64*64*C one-byte elements, layout [64, 64, C]
    mask         bytes_list, 64*64*E one-byte elements, layout [64, 64, E, 1]
                 (DeepMind transposes it to [E, 64, 64, 1]); 255 where the entity shows
    x, y, scale, orientation, shape, visibility   float_list [E]
    color        float_list [E * C]

``read_multi_dsprites`` turns them into exactly the batches that the built-in generator
``slotsweep.data.sources.dsprites.generate`` returns (PAPER.md, "Colored multi-dSprites"):

- ``id`` int64: the record index in the file.
- ``image`` uint8 [N, 64, 64, 3]; binarized images are repeated over three channels.
- ``segmentation`` int16 [N, 64, 64]: the entity whose mask is largest at the pixel
  (argmax over entities, as DeepMind's own readers do; masks are one-hot, so this is the
  entity whose mask is 255), 0 = background entity 0, i = entity i.
- ``objects`` float32 [N, E - 1, len(OBJECT_FIELDS)]: entity i in row i - 1.

Object fields from DeepMind's features: ``visible`` = (visibility > 0), ``visibility``
= visibility as stored, ``r, g, b`` = color (binarized: the one channel three times),
``scale``, ``x``, ``y``, ``orientation`` copied. ``shape``: DeepMind numbers shapes as
dSprites does, 1 = square, 2 = ellipse, 3 = heart, and 0 for an absent entity; slotsweep
uses 0 = square, 1 = ellipse, 2 = heart (``dsprites.SHAPES``), so present entities get
shape - 1 and absent ones stay all zero like the generator's padding rows. Coordinate
and colour conventions are DeepMind's and are not converted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from slotsweep.data.sources.dsprites import FIELD_INDEX, OBJECT_FIELDS, SHAPES
from slotsweep.data.sources.tfrecord import Feature, parse_example, read_tfrecord
from slotsweep.data.writer import ShardWriter

VARIANTS = ("colored_on_colored", "colored_on_grayscale", "binarized")
MAX_NUM_ENTITIES = {"colored_on_colored": 5, "colored_on_grayscale": 6, "binarized": 4}
SHAPE_OFFSET = 1  # DeepMind shape id of slotsweep shape 0 (square)
_PER_ENTITY = ("x", "y", "scale", "orientation", "shape", "visibility")
_BATCH = 1024


def variant_of(path: str | os.PathLike) -> str | None:
    """The dataset variant named in the file name, or None."""
    name = Path(path).name
    return next((v for v in VARIANTS if v in name), None)


def _require(feature: Feature | None, name: str, kind: str, where: str) -> Feature:
    if feature is None:
        raise ValueError(
            f"{where}: has no feature {name!r}; is this a multi_object_datasets "
            "multi_dsprites file?"
        )
    if feature.kind != kind:
        raise ValueError(f"{where}: feature {name!r} is a {feature.kind}, expected a {kind}")
    return feature


def _float_values(feature: Feature) -> np.ndarray:
    """A float_list's values (`Feature.values` gives an array for that kind)."""
    values = feature.values()
    assert isinstance(values, np.ndarray)
    return values


def decode_example(data: bytes, where: str) -> dict[str, np.ndarray]:
    """One serialised Example -> image [R, R, 3], segmentation [R, R], objects [E-1, F]."""
    try:
        features = parse_example(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: not a valid tf.train.Example ({err})") from err
    per_entity = {
        n: _float_values(_require(features.get(n), n, "float_list", where))
        for n in _PER_ENTITY
    }
    num_entities = len(per_entity["x"])
    if num_entities < 2 or any(len(v) != num_entities for v in per_entity.values()):
        lengths = {n: len(v) for n, v in per_entity.items()}
        raise ValueError(f"{where}: per-entity features differ in length or are empty: {lengths}")
    color = _float_values(_require(features.get("color"), "color", "float_list", where))
    channels = len(color) // num_entities
    image = _require(features.get("image"), "image", "bytes_list", where).as_uint8()
    mask = _require(features.get("mask"), "mask", "bytes_list", where).as_uint8()
    resolution = int(round(np.sqrt(len(image) / max(channels, 1))))
    if (
        channels not in (1, 3)
        or len(color) != num_entities * channels
        or len(image) != resolution * resolution * channels
        or len(mask) != resolution * resolution * num_entities
    ):
        raise ValueError(
            f"{where}: sizes do not fit a square image: {num_entities} entities, "
            f"{len(color)} colour values, {len(image)} image bytes, {len(mask)} mask bytes"
        )
    image = image.reshape(resolution, resolution, channels)  # [R, R, C]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)  # [R, R, 3]
    mask = mask.reshape(resolution, resolution, num_entities)  # [R, R, E]
    segmentation = np.argmax(mask, axis=2).astype(np.int16)  # [R, R]

    shape = per_entity["shape"]
    if not np.all(np.isin(shape, np.arange(len(SHAPES) + 1))):
        raise ValueError(
            f"{where}: shape ids {shape.tolist()} are not in 0..{len(SHAPES)} "
            f"(0 = absent, then {SHAPES}); the file uses another shape numbering"
        )
    color = color.reshape(num_entities, channels)  # [E, C]
    objects = np.zeros((num_entities, len(OBJECT_FIELDS)), dtype=np.float32)  # [E, F]
    present = shape > 0
    objects[:, FIELD_INDEX["visible"]] = per_entity["visibility"] > 0
    objects[:, FIELD_INDEX["shape"]] = np.where(present, shape - SHAPE_OFFSET, 0)
    objects[:, FIELD_INDEX["r"] : FIELD_INDEX["b"] + 1] = color if channels == 3 else color[:, :1]
    for name in ("scale", "x", "y", "orientation", "visibility"):
        objects[:, FIELD_INDEX[name]] = per_entity[name]
    return {"image": image, "segmentation": segmentation, "objects": objects[1:]}


def read_multi_dsprites(
    path: str | os.PathLike,
    *,
    start: int = 0,
    count: int | None = None,
    batch_size: int | None = None,
    verify: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield scenes ``start .. start + count - 1`` in batches of ``generate``'s format.

    ``count=None`` reads to the end of the file; ``batch_size`` defaults to 1024 rows.
    ``verify`` checks the record CRCs.
    """
    path = Path(path)
    batch_size = batch_size or _BATCH
    rows: list[dict[str, np.ndarray]] = []
    first_id = start

    def batch() -> dict[str, np.ndarray]:
        try:
            stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        except ValueError as err:
            raise ValueError(
                f"{path}: records {first_id}..{first_id + len(rows) - 1} differ in image "
                f"size or entity count ({err}); the file mixes dataset variants"
            ) from err
        ids = np.arange(first_id, first_id + len(rows), dtype=np.int64)
        return {"id": ids, **stacked}

    records = read_tfrecord(path, start=start, count=count, verify=verify)
    for index, data in enumerate(records, start=start):
        rows.append(decode_example(data, f"{path}: record {index}"))
        if len(rows) == batch_size:
            yield batch()
            first_id, rows = index + 1, []
    if rows:
        yield batch()


def import_multi_dsprites(
    tfrecord: str | os.PathLike,
    out: str | os.PathLike,
    *,
    start: int = 0,
    count: int | None = None,
    rows_per_shard: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write scenes ``start .. start + count - 1`` of a DeepMind file as shards at ``out``.

    Resumes an interrupted import: the rows already in completed shards are skipped.
    The paper trains on the first 60,000 scenes and tests on the next 320.
    ``progress`` is called with the number of rows done (first with those resumed).
    """
    tfrecord, out = Path(tfrecord), Path(out)
    attributes = {
        "dataset": "deepmind-multi-dsprites",
        "source": tfrecord.name,
        "variant": variant_of(tfrecord),
        "start": start,
        "count": count,
        "object_fields": list(OBJECT_FIELDS),
    }
    with ShardWriter(
        out, rows_per_shard=rows_per_shard, attributes=attributes, resume=True
    ) as writer:
        done = writer.rows_done
        if progress and done:
            progress(done)
        remaining = None if count is None else count - done
        for batch in read_multi_dsprites(tfrecord, start=start + done, count=remaining):
            writer.write(batch)
            if progress:
                progress(len(batch["id"]))
    return out
