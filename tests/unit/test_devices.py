"""The trainer's device: a pure rule of `train.device` and the CUDA devices visible.

A Ray trial given GPU 1 of a node (CUDA_VISIBLE_DEVICES=1, also for a share of it) sees
one device and must train on cuda:0; on a machine without a GPU it sees none, and
`train.device: auto` trains on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from slotsweep.config_io import ConfigError
from slotsweep.training.devices import choose_device, pick_device, visible_cuda_devices


@pytest.mark.parametrize("requested, visible, device", [
    ("auto", 1, "cuda:0"), ("auto", 4, "cuda:0"), ("auto", 0, "cpu"),
    ("cuda", 1, "cuda:0"), ("cpu", 2, "cpu"), ("cpu", 0, "cpu"),
])
def test_choose_device(requested, visible, device):
    assert choose_device(requested, visible) == device


def test_cuda_without_a_visible_device_names_the_key_and_the_way_out():
    with pytest.raises(ConfigError, match=r"train.device: 'cuda', but no CUDA device is "
                                          r"visible here; set train.device=cpu \(or auto\)"):
        choose_device("cuda", 0)
    with pytest.raises(ValueError, match="train.device: 'gpu'"):
        choose_device("gpu", 1)


@pytest.mark.parametrize("cuda_visible, installed, visible", [
    ("1", 2, 1),          # a Ray trial given GPU 1 of two (a share of it too)
    ("1", 8, 1),
    ("0", 2, 1),
    ("1", 0, 0),          # the same trial on a machine without a GPU
    ("1", 1, 0),          # GPU 1 does not exist: CUDA shows nothing
    (None, 2, 2),         # unset: every GPU
    (None, 0, 0),
    ("", 2, 0),           # empty: none
    ("0,1", 2, 2), ("1,0", 2, 2),
    ("0,2,1", 2, 1),      # read up to the first index that does not exist
    ("1,1", 2, 0),        # an index twice hides every device
    ("GPU-8f6c1a2e,GPU-1b2d", 2, 2),
])
def test_visible_cuda_devices_follows_cuda(cuda_visible, installed, visible):
    assert visible_cuda_devices(cuda_visible, installed) == visible


def test_a_ray_gpu_trial_trains_on_cuda_0_on_a_gpu_node_and_on_the_cpu_here():
    """The rule composed, for what Ray sets: GPU 1 of a two-GPU node is cuda:0 to the
    trial; on this CPU machine the same trial trains on the CPU."""
    assert choose_device("auto", visible_cuda_devices("1", 2)) == "cuda:0"
    assert choose_device("auto", visible_cuda_devices("1", 0)) == "cpu"


@pytest.mark.parametrize("cuda_visible", ["0", "1", "3", "0,1", "2,0", "0,3,1", "1,1", "",
                                          "-1", "0,-1,1"])
def test_visible_cuda_devices_agrees_with_torchs_reading(cuda_visible, monkeypatch):
    """torch's own reading of CUDA_VISIBLE_DEVICES (what it checks against the driver's
    count): with GPUs enough, the same number of devices."""
    parse = getattr(torch.cuda, "_parse_visible_devices", None)
    if parse is None:
        pytest.skip("torch.cuda._parse_visible_devices moved")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    assert visible_cuda_devices(cuda_visible, 64) == len(parse())


PICK = ("import torch; from slotsweep.training.devices import pick_device; "
        "print(torch.cuda.device_count(), pick_device('auto'))")


def _pick_in_a_process(cuda_visible: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    done = subprocess.run([sys.executable, "-c", PICK], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    count, device = done.stdout.split()[-2:]
    return int(count), device


def test_pick_device_in_a_process_told_cuda_visible_devices_1():
    """What a Ray trial given GPU 1 gets, on whatever this machine has: the devices
    CUDA shows it are the pure rule's, and the device is the rule's choice."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # this process sees a selection: ask a fresh one
        installed, _ = _pick_in_a_process(None)
    else:
        installed = torch.cuda.device_count()
    seen, device = _pick_in_a_process("1")
    assert seen == visible_cuda_devices("1", installed)
    assert device == choose_device("auto", seen)
    assert str(pick_device("cpu")) == "cpu"
