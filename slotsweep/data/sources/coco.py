"""COCO images and instance label maps, prepared as DINOSAUR evaluates them.

PAPER.md section "COCO evaluation (DINOSAUR)": images are resized to 224 and
centre-cropped for the ViT; instance masks are resized (nearest) to short side 320 and
centre-cropped; pixels covered by several instances are ignored.

Conventions
-----------
- Label maps: 0 = background, 1..N = the image's non-crowd instances in annotation-id
  order, -1 = ignored (a crowd annotation, ``iscrowd=1``, or more than one non-crowd
  instance covers the pixel). An instance whose pixels are all ignored keeps its number,
  which then never appears.
- Short-side resize follows torchvision's ``Resize(size)``: the short side becomes
  ``size`` and the long side ``floor(size * long / short)`` (integer arithmetic).
- Centre crop follows torchvision's ``CenterCrop``: offset ``round((extent - size) / 2)``
  with Python's round-half-to-even, so an odd surplus of 1 gives offset 0 and of 3 gives 2.
  Image and mask go through the same two functions, so their crops cover the same part of
  the picture up to this rounding (less than one pixel of each output).
- Nearest-neighbour resizing of label maps takes source index ``floor(i * in / out)``
  (torch's ``interpolate(mode="nearest")``), computed exactly with integers.
- Images are resized with PIL's bicubic filter (antialiased when shrinking), as ocl's
  COCO configs do for the ViT input; the reconstruction target uses the same filter.
- EXIF orientation is ignored, as COCO's annotations are in raw pixel coordinates.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

IGNORE_LABEL = -1


def instance_label_map(coco: COCO, image_id: int) -> np.ndarray:
    """Return the int16 [H, W] instance label map of one image at its original size."""
    info = coco.imgs[image_id]
    height, width = info["height"], info["width"]
    annotations = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
    labels = np.zeros((height, width), dtype=np.int16)
    coverage = np.zeros((height, width), dtype=np.int32)  # non-crowd instances per pixel
    crowd = np.zeros((height, width), dtype=bool)
    instance = 0
    for ann in annotations:
        # annToMask handles polygons, uncompressed (list counts) and compressed RLE.
        mask = coco.annToMask(ann).astype(bool)  # [H, W]
        if ann.get("iscrowd", 0):
            crowd |= mask
            continue
        instance += 1
        labels[mask] = instance
        coverage += mask
    # DINOSAUR ignores pixels of several instances; crowd regions are never scored.
    labels[(coverage > 1) | crowd] = IGNORE_LABEL
    return labels


def _short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output (height, width) with the short side ``short_side`` (torchvision's rule)."""
    if height <= width:
        return short_side, short_side * width // height
    return short_side * height // width, short_side


def _crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top and left offsets of a centred ``size`` × ``size`` crop (torchvision's rule)."""
    if height < size or width < size:
        raise ValueError(f"cannot centre-crop {size}×{size} from {height}×{width}")
    return round((height - size) / 2), round((width - size) / 2)


def resize_label_map(labels: np.ndarray, short_side: int = 320) -> np.ndarray:
    """Nearest-neighbour resize of a [H, W] label map so that its short side is ``short_side``."""
    height, width = labels.shape
    new_height, new_width = _short_side_shape(height, width, short_side)
    rows = np.arange(new_height) * height // new_height
    cols = np.arange(new_width) * width // new_width
    return labels[rows[:, None], cols[None, :]]


def center_crop(labels: np.ndarray, size: int = 320) -> np.ndarray:
    """Centred ``size`` × ``size`` crop of a [H, W, ...] array."""
    top, left = _crop_offsets(labels.shape[0], labels.shape[1], size)
    return labels[top : top + size, left : left + size]


def _resize_and_crop(img: Image.Image, size: int) -> np.ndarray:
    """Short side to ``size`` (bicubic), centre crop; uint8 [size, size, 3]."""
    img = img.convert("RGB")
    new_height, new_width = _short_side_shape(img.height, img.width, size)
    img = img.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = _crop_offsets(new_height, new_width, size)
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def prepare_image(img: Image.Image, size: int = 224) -> np.ndarray:
    """The ViT input: uint8 [size, size, 3], short side resized (bicubic) then centre-cropped."""
    return _resize_and_crop(img, size)


def downsample_image(img: Image.Image, size: int) -> np.ndarray:
    """An image-reconstruction target: uint8 [size, size, 3], same geometry as the ViT input."""
    return _resize_and_crop(img, size)


def load_coco(annotations_file: str | Path) -> COCO:
    """Load a COCO annotation file, without pycocotools' progress prints."""
    path = Path(annotations_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _open_image(path: Path, info: dict, annotations_file: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(
            f"COCO image {info['id']} file not found: {path} (listed in {annotations_file}); "
            "check that images_dir holds the images of this annotation file"
        )
    img = Image.open(path)
    img.load()
    if (img.height, img.width) != (info["height"], info["width"]):
        raise ValueError(
            f"{path} is {img.height}×{img.width} but {annotations_file} says "
            f"{info['height']}×{info['width']}; the masks would not line up with the image"
        )
    return img.convert("RGB")  # grayscale and CMYK JPEGs exist in COCO


class CocoImages(Dataset[dict]):
    """Map-style view of a COCO split (usable by a DataLoader with decode workers).

    Item i is the i-th image in increasing image-id order, prepared as `iterate_coco`
    describes. The COCO index is loaded lazily in each process.
    """

    def __init__(self, images_dir: str | Path, annotations_file: str | Path, *,
                 image_size: int = 224, mask_size: int = 320, target_size: int = 128) -> None:
        self.images_dir, self.annotations_file = Path(images_dir), Path(annotations_file)
        self.image_size, self.mask_size, self.target_size = image_size, mask_size, target_size
        self._coco: COCO | None = None

    @property
    def coco(self) -> COCO:
        if self._coco is None:
            self._coco = load_coco(self.annotations_file)
            self.image_ids = sorted(self._coco.getImgIds())
        return self._coco

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_coco": None}  # each worker loads its own index

    def __len__(self) -> int:
        return len(self.coco.getImgIds())

    def __getitem__(self, index: int) -> dict:
        coco = self.coco
        image_id = self.image_ids[index]
        info = coco.imgs[image_id]
        img = _open_image(self.images_dir / info["file_name"], info, self.annotations_file)
        labels = instance_label_map(coco, image_id)  # [H, W]
        return {
            "id": np.int64(image_id),
            "image_vit": prepare_image(img, self.image_size),
            "image": downsample_image(img, self.target_size),
            "segmentation": center_crop(resize_label_map(labels, self.mask_size),
                                        self.mask_size),
        }


def iterate_coco(
    images_dir: str | Path,
    annotations_file: str | Path,
    *,
    image_size: int = 224,
    mask_size: int = 320,
    target_size: int = 128,
    start: int = 0,
    count: int | None = None,
) -> Iterator[dict]:
    """Yield prepared COCO images in increasing image-id order, from ``start``, ``count`` many.

    Each item: ``id`` (int64), ``image_vit`` uint8 [image_size, image_size, 3],
    ``image`` uint8 [target_size, target_size, 3] and ``segmentation`` int16
    [mask_size, mask_size]. Images without annotations are included (all-zero labels).
    """
    images = CocoImages(images_dir, annotations_file, image_size=image_size,
                        mask_size=mask_size, target_size=target_size)
    stop = len(images) if count is None else min(len(images), start + count)
    for index in range(start, stop):
        yield images[index]


def _stack(rows: list[dict]) -> dict:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def write_coco(images: str, annotations: str, out: str | Path, encoder, *,
               batch_size: int = 64, device: str = "cpu", target_size: int = 128,
               rows_per_shard: int = 1024, workers: int = 0, progress=None,
               total=None) -> Path:
    """COCO images → shards of tokens (frozen ViT), target images and label maps.

    JPEG decoding and label maps run in `workers` DataLoader processes while the encoder
    runs batches on `device`. Resumable: a rerun skips the complete shards' images.
    `total(n)` is told the number of images once the annotations are read, then
    `progress(k)` after every k images (the complete shards' first, on a resume).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from slotsweep.data.sources.features import extract_tokens
    from slotsweep.data.writer import ShardWriter

    dataset = CocoImages(images, annotations, image_size=encoder.image_size,
                         target_size=target_size)
    attributes = {"dataset": "coco", "annotations": Path(annotations).name,
                  "image_size": target_size, "mask_geometry": "short side 320, centre crop",
                  "encoder_geometry": f"short side {encoder.image_size}, centre crop",
                  **encoder.attributes()}
    if total:
        total(len(dataset))
    with ShardWriter(out, rows_per_shard=rows_per_shard, attributes=attributes,
                     resume=True) as writer:
        if progress:
            progress(writer.rows_done)
        todo = Subset(dataset, range(writer.rows_done, len(dataset)))
        loader = DataLoader(todo, batch_size=batch_size, num_workers=workers,
                            collate_fn=_stack, pin_memory=torch.cuda.is_available())
        for columns in loader:
            vit = columns.pop("image_vit")
            columns["features"] = extract_tokens(encoder, vit, device=device,
                                                 autocast=device != "cpu")
            writer.write(columns)
            if progress:
                progress(len(columns["id"]))
    return Path(out)
