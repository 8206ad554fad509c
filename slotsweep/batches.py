"""From Arrow shards to model inputs: a deterministic batch order and tensor conversion.

The training order is a pure function of (seed, step): epoch e is a seeded permutation
of the split, and step s reads its slice. A resumed run therefore sees exactly the
batches it would have seen, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from slotsweep.config import ModelConfig
from slotsweep.data.remote import local_split
from slotsweep.data.shards import ShardDataset, ShardError, read_manifest


def columns_for(model: ModelConfig, *, eval: bool) -> list[str]:
    """The shard columns a model reads (segmentation only to score it)."""
    cols = {"features" if model.encoder == "features" else "image"}
    cols.add("features" if model.target == "features" else "image")
    if eval:
        cols.add("segmentation")
    return sorted(cols)


def expected_shapes(model: ModelConfig, columns: list[str]) -> dict[str, tuple[int, ...]]:
    """Shapes the model needs, for the columns it reads (a wrong ViT size fails early)."""
    shapes = {"features": (model.num_patches, model.feature_dim)}
    return {k: v for k, v in shapes.items() if k in columns}


class _IndexBatches(Dataset):
    """A dataset whose items are whole batches: item = a list of row indices."""

    def __init__(self, shards: ShardDataset) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.shards.get_batch(np.asarray(indices))
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class _StepSampler:
    """Yields the row indices of steps start, start+1, ... forever."""

    def __init__(self, order: Batches, start: int, batch_size: int, seed: int) -> None:
        self.order, self.start, self.batch_size, self.seed = order, start, batch_size, seed

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.start
        while True:
            yield self.order.indices(step, self.batch_size, self.seed)
            step += 1


class Batches:
    """Training and evaluation batches over one split."""

    def __init__(self, shards: ShardDataset) -> None:
        self.shards = shards
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    @classmethod
    def open(cls, path: str, model: ModelConfig, *, eval: bool) -> Batches:
        path = str(local_split(path))  # s3://, gs://, file://: a verified local cache
        columns = columns_for(model, eval=eval)
        if eval and "image" not in columns and "image" in read_manifest(path)["columns"]:
            columns.append("image")  # for mask pictures of feature models
        shards = ShardDataset(path, columns=columns, expect_shapes=expected_shapes(model, columns))
        if len(shards) == 0:
            raise ShardError(f"{path}: the split is empty (0 rows); re-run prepare")
        return cls(shards)

    def __len__(self) -> int:
        return len(self.shards)

    def indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Row indices of training step `step` (epochs drop their last partial batch)."""
        per_epoch = len(self) // batch_size
        if per_epoch == 0:
            raise ShardError(
                f"{self.shards.path}: {len(self)} rows is fewer than one batch of {batch_size}"
            )
        epoch, offset = divmod(step, per_epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            perm = np.random.default_rng([seed, epoch]).permutation(len(self))
            self._epoch_cache = (epoch, perm)
        return self._epoch_cache[1][offset * batch_size : (offset + 1) * batch_size]

    def train_batches(
        self, *, start: int, batch_size: int, seed: int, num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches from step `start` on; workers read shards in parallel."""
        sampler = _StepSampler(self, start, batch_size, seed)
        if num_workers == 0:
            view = _IndexBatches(self.shards)
            return (view[idx] for idx in sampler)
        loader = DataLoader(
            _IndexBatches(self.shards), sampler=sampler, batch_size=None,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
            prefetch_factor=4,
        )
        return iter(loader)

    def eval_batches(self, batch_size: int, max_images: int) -> Iterator[dict[str, torch.Tensor]]:
        """The first `max_images` rows, in order, so every trial scores the same images."""
        view = _IndexBatches(self.shards)
        total = min(max_images, len(self))
        for start in range(0, total, batch_size):
            yield view[np.arange(start, min(start + batch_size, total))]


def to_model_inputs(
    batch: dict[str, torch.Tensor], model: ModelConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, reconstruction target, segmentation or None) on `device`.

    Images: uint8 [B, H, W, 3] → float [B, 3, R, R] in [-1, 1] (resized to the model's
    resolution if the shards differ). Features: float16 [B, N, D] → float32.
    """
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    image = None
    if "image" in tensors:
        image = tensors["image"].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        if image.shape[-1] != model.resolution or image.shape[-2] != model.resolution:
            image = F.interpolate(
                image, size=(model.resolution, model.resolution), mode="bilinear",
                antialias=True, align_corners=False,
            )
    features = tensors["features"].float() if "features" in tensors else None
    inputs = features if model.encoder == "features" else image
    target = features if model.target == "features" else image
    segmentation = tensors.get("segmentation")
    return inputs, target, segmentation.long() if segmentation is not None else None
