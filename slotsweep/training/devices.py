"""Which device a trainer runs on: a pure rule of what was asked and what is visible.

`train.device: auto` takes the first CUDA device the process sees, else the CPU; `cuda`
needs one; `cpu` is the CPU. The first visible device is always `cuda:0`, whichever
physical GPU it is: CUDA numbers the devices listed in CUDA_VISIBLE_DEVICES from 0. So
a Ray trial given GPU 1 (Ray sets CUDA_VISIBLE_DEVICES=1, also for a share of a GPU,
`resources.gpu: 0.25`) sees one device and trains on `cuda:0`, which is GPU 1; on a
machine without a GPU the same trial sees none, and `auto` trains on the CPU.
"""

from __future__ import annotations

import torch

from slotsweep.config_io import ConfigError


def visible_cuda_devices(cuda_visible_devices: str | None, installed: int) -> int:
    """How many CUDA devices a process sees, given CUDA_VISIBLE_DEVICES (None: unset) and
    the GPUs installed. CUDA's rule, as torch mirrors it (`torch.cuda._parse_visible_devices`):
    a comma list of indices, read up to the first entry that is not an installed index;
    an index listed twice hides every device; a list of UUIDs (`GPU-...`, `MIG-...`)
    counts its entries (checking them needs the driver)."""
    if cuda_visible_devices is None:
        return installed
    entries = [e.strip() for e in cuda_visible_devices.split(",")]
    if entries[0].startswith(("GPU-", "MIG-")):
        return 0 if len(set(entries)) < len(entries) else len(entries)
    seen: list[int] = []
    for entry in entries:
        if not entry.isdigit() or int(entry) >= installed:
            break
        if int(entry) in seen:
            return 0
        seen.append(int(entry))
    return len(seen)


def choose_device(requested: str, visible: int) -> str:
    """The device for `train.device: requested` in a process that sees `visible` CUDA
    devices: `cuda:0` or `cpu`."""
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"train.device: {requested!r}; expected auto, cuda or cpu")
    if requested == "cpu":
        return "cpu"
    if visible > 0:
        return "cuda:0"
    if requested == "cuda":
        raise ConfigError("train.device: 'cuda', but no CUDA device is visible here; "
                          "set train.device=cpu (or auto)")
    return "cpu"


def pick_device(requested: str) -> torch.device:
    """`choose_device` for this process (torch counts the devices CUDA shows it)."""
    return torch.device(choose_device(requested, torch.cuda.device_count()))
