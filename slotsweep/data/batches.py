"""From Arrow shards to model inputs: a deterministic batch order and tensor conversion.

The training order is a pure function of (seed, step): epoch e is a seeded permutation
of the split, and step s reads its slice. A resumed run therefore sees exactly the
batches it would have seen, with no sampler state to save.

Training batches come either streamed from the memory-mapped shards (copied to the
device every step) or gathered from the whole split staged once in device memory;
both follow the same order and give bit-identical batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from slotsweep.config import DataConfig, ModelConfig
from slotsweep.config_io import ConfigError
from slotsweep.data.format import ShardError, read_manifest
from slotsweep.data.reader import ShardDataset
from slotsweep.data.remote import local_split


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

    def __getitem__(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
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
        self._epoch_cache: tuple[tuple[int, int], np.ndarray] | None = None

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
        return self.permutation(epoch, seed)[offset * batch_size : (offset + 1) * batch_size]

    def permutation(self, epoch: int, seed: int) -> np.ndarray:
        """The row order of `epoch` (cached: consecutive steps share it)."""
        if self._epoch_cache is None or self._epoch_cache[0] != (seed, epoch):
            perm = np.random.default_rng([seed, epoch]).permutation(len(self))
            self._epoch_cache = ((seed, epoch), perm)
        return self._epoch_cache[1]

    def train_batches(
        self, *, start: int, batch_size: int, seed: int, num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches from step `start` on; workers read shards in parallel.

        `pin_memory` (CUDA only) puts each batch in page-locked memory, so that the
        trainer's non-blocking copy to the GPU does not wait for the step before it.
        """
        sampler = _StepSampler(self, start, batch_size, seed)
        if num_workers == 0:
            view = _IndexBatches(self.shards)
            if pin_memory:
                return (_pinned(view[idx]) for idx in sampler)
            return (view[idx] for idx in sampler)
        loader = DataLoader(
            _IndexBatches(self.shards), sampler=sampler, batch_size=None,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
            prefetch_factor=4,
        )
        return iter(loader)

    def nbytes(self) -> int:
        """Bytes of the columns this split reads: what staging it on a device costs."""
        specs = self.shards.manifest["columns"]
        return len(self) * sum(_row_bytes(specs[name]) for name in self.shards.columns)

    def stage(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The whole split's columns as tensors on `device`, copied once in chunks.

        Chunks of at most `_STAGE_CHUNK_BYTES` go through host memory, so staging 35 GB
        of ViT tokens never holds more than one chunk on the host.
        """
        specs = self.shards.manifest["columns"]
        staged = {
            name: torch.empty((len(self), *specs[name]["shape"]), device=device,
                              dtype=_torch_dtype(specs[name]["dtype"]))
            for name in self.shards.columns
        }
        row_bytes = sum(_row_bytes(specs[name]) for name in self.shards.columns)
        chunk = max(1, _STAGE_CHUNK_BYTES // max(row_bytes, 1))
        for lo in range(0, len(self), chunk):
            part = self.shards.get_batch(np.arange(lo, min(lo + chunk, len(self))))
            for name, array in part.items():
                staged[name][lo : lo + len(array)].copy_(torch.from_numpy(array))
        return staged

    def staged_batches(
        self, staged: dict[str, torch.Tensor], *, start: int, batch_size: int, seed: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of `train_batches`, gathered on the device from `stage()`'s tensors.

        Each epoch's permutation goes to the device once; a step slices it there, so
        no step copies anything from the host.
        """
        self.indices(start, batch_size, seed)  # the "fewer rows than a batch" check
        device = next(iter(staged.values())).device
        per_epoch = len(self) // batch_size
        step, order = start, None
        while True:
            epoch, offset = divmod(step, per_epoch)
            if offset == 0 or order is None:
                order = torch.from_numpy(self.permutation(epoch, seed)).to(device)  # (N,)
            rows = order[offset * batch_size : (offset + 1) * batch_size]  # (B,)
            yield {name: tensor.index_select(0, rows) for name, tensor in staged.items()}
            step += 1

    def eval_batches(self, batch_size: int, max_images: int) -> Iterator[dict[str, torch.Tensor]]:
        """The first `max_images` rows, in order, so every trial scores the same images."""
        view = _IndexBatches(self.shards)
        total = min(max_images, len(self))
        for start in range(0, total, batch_size):
            yield view[np.arange(start, min(start + batch_size, total))]


_STAGE_CHUNK_BYTES = 256 * 2**20


def _row_bytes(spec: dict) -> int:
    return int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize


def _torch_dtype(name: str) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=name)).dtype


def _pinned(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPU only: the batch in page-locked host memory (needs a CUDA device)."""
    return {k: v.pin_memory() for k, v in batch.items()}


def free_device_bytes(device: torch.device) -> int | None:
    """GPU only: free memory on a CUDA device; None for other devices."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def stage_on_device(
    data: DataConfig, *, nbytes: int, device: torch.device, free_bytes: int | None
) -> bool:
    """Whether to stage the training split on `device` (`data.stage`, see DataConfig).

    "auto" stages only on CUDA (`free_bytes` known) and only when the split takes at
    most `data.stage_memory_fraction` of the free memory; the rest is the model's.
    """
    if data.stage == "stream":
        return False
    budget = None if free_bytes is None else data.stage_memory_fraction * free_bytes
    if data.stage == "device":
        if budget is not None and nbytes > budget:
            raise ConfigError(
                f"data.stage: 'device', but the training split needs {nbytes / 1e9:.2f} GB "
                f"and {data.stage_memory_fraction:g} of {device}'s free memory is "
                f"{budget / 1e9:.2f} GB; use data.stage: auto or stream, or raise "
                "data.stage_memory_fraction"
            )
        return True
    return budget is not None and nbytes <= budget


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
    # A batch from `Batches.open` holds the model's columns (`columns_for`), so inputs
    # and target are tensors; a caller passing fewer columns reads only what it gave.
    return (cast(torch.Tensor, inputs), cast(torch.Tensor, target),
            segmentation.long() if segmentation is not None else None)
