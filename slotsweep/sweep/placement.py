"""Where a trial runs: the GPUs Ray gave it, what CUDA shows it, and the device its
trainer takes. The trial adds these to every result it reports (Tune's result.json,
not MLflow's metrics), so a sweep shows how Ray packed its trials on the GPUs."""

from __future__ import annotations

import os

import ray
import torch

from slotsweep.training.devices import choose_device

GPU_IDS = "placement/gpu_ids"  # Ray's GPU ids for this trial, comma-joined ("" for none)
CUDA_VISIBLE_DEVICES = "placement/cuda_visible_devices"  # None: unset in the trial
CUDA_DEVICES_SEEN = "placement/cuda_devices_seen"  # torch.cuda.device_count() in the trial
DEVICE = "placement/device"  # the trainer's device: "cuda:0" or "cpu"


def placement(requested_device: str) -> dict[str, str | int | None]:
    """This trial's GPUs and device, for `train.device: requested_device`; called in the
    trial's worker process after the trainer chose its device (the same rule, here)."""
    seen = torch.cuda.device_count()
    return {
        GPU_IDS: ",".join(str(i) for i in ray.get_gpu_ids()),
        CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES"),
        CUDA_DEVICES_SEEN: seen,
        DEVICE: choose_device(requested_device, seen),
    }
