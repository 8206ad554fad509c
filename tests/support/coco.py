"""Helpers shared by tests/unit/test_coco.py and its end-to-end half."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def rect_mask(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Image 7 (40×50): polygon 10, compressed RLE 11 overlapping it, crowd RLE 12 over
# polygon 13. Image 3 (30×20, grayscale): uncompressed non-crowd RLE 20, two-part
# polygon 21. Image 5 (24×36, CMYK): no annotation. Image 9 (200×300): left half white,
# annotated as one rectangle, to check that image and mask are cropped alike.
CROWD_COUNTS = [1230, 5, 35, 5, 35, 5, 685]  # rows 30..34 of columns 30..32 in 40×50
RLE_COUNTS = [65, 4, 26, 4, 26, 4, 471]  # rows 5..8 of columns 2..4 in 30×20
COMPRESSED = rect_mask(40, 50, 15, 10, 30, 26)


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def annotation(ann_id: int, image_id: int, segmentation, iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": iscrowd,
        "segmentation": segmentation,
    }


def write_coco_dir(root: Path) -> Path:
    """A tiny COCO split under `root`: JPEGs (RGB, grey, CMYK) and instances JSON with
    polygons, RLE, a crowd region and annotations out of id order."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(images / "gray.jpg")
    Image.new("CMYK", (36, 24), (10, 20, 30, 40)).save(images / "cmyk.jpg")
    halves = np.zeros((200, 300, 3), dtype=np.uint8)
    halves[:, :150] = 255
    Image.fromarray(halves).save(images / "halves.jpg", quality=95)

    rle = mask_utils.encode(np.asfortranarray(COMPRESSED.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    annotations = [  # deliberately not in id order
        annotation(13, 7, [rect_polygon(28, 28, 45, 38)]),
        annotation(11, 7, rle),
        annotation(12, 7, {"size": [40, 50], "counts": CROWD_COUNTS}, iscrowd=1),
        annotation(10, 7, [rect_polygon(5, 4, 20, 16)]),
        annotation(21, 3, [rect_polygon(10, 2, 15, 6), rect_polygon(12, 20, 18, 25)]),
        annotation(20, 3, {"size": [30, 20], "counts": RLE_COUNTS}),
        annotation(30, 9, [rect_polygon(0, 0, 150, 200)]),
    ]
    dataset = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "height": 40, "width": 50},
            {"id": 3, "file_name": "gray.jpg", "height": 30, "width": 20},
            {"id": 5, "file_name": "cmyk.jpg", "height": 24, "width": 36},
            {"id": 9, "file_name": "halves.jpg", "height": 200, "width": 300},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "instances.json").write_text(json.dumps(dataset))
    return root
