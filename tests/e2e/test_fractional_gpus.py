"""Fractional GPUs at the scheduling level, on a machine without a GPU (issue 32).

A real `ray start --head --num-gpus 2 --num-cpus 8` node declares two GPUs. Ray schedules
declared GPUs as it does real ones: it hands each trial GPU ids and sets the trial's
CUDA_VISIBLE_DEVICES to them, whether or not a GPU is there. A sweep of eight trials at
`resources: {gpu: 0.25, cpu: 1}` must run all eight at once, four on each GPU id, each
told exactly its one GPU, and pick the device it would pick on a real GPU node. A sweep
that asks for a GPU where none is declared fails before any trial starts.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time

import pytest
import torch

from slotsweep.sweep.placement import CUDA_DEVICES_SEEN, CUDA_VISIBLE_DEVICES, DEVICE, GPU_IDS
from slotsweep.training.devices import choose_device, visible_cuda_devices
from tests.support.ray_nodes import ray_head
from tests.support.sweeps import end_session, run, sweep_file, trial_results

pytestmark = pytest.mark.slow

HEAD_IP = "127.0.0.2"
TRIALS, GPUS = 8, 2


@pytest.fixture(scope="module")
def gpu_node(tmp_path_factory):
    """One node declaring 8 CPUs and 2 GPUs; yields (address, env)."""
    with ray_head(tmp_path_factory.mktemp("gpu-node"), ip=HEAD_IP, num_cpus=8,
                  num_gpus=GPUS) as joined:
        yield joined


def _quarter_gpu_sweep(tmp_path, data, **sections):
    """Eight trials at a quarter GPU each that train until stopped (a million steps):
    none can end before the test has seen all eight run."""
    return sweep_file(
        tmp_path, data,
        config={"train": {"steps": 1_000_000, "batch_size": 8, "warmup_steps": 2,
                          "log_every": 4, "checkpoint_every": 4, "device": "auto"},
                "eval": {"every": 4, "batch_size": 16, "max_images": 16, "num_pictures": 0}},
        search_space={"train.lr": {"loguniform": [1e-4, 1e-2]}},
        search={"algorithm": "random", "num_samples": TRIALS, "max_concurrent": 0, "seed": 0},
        resources={"cpu": 1, "gpu": 0.25}, **sections)


def _spans(results: dict[str, list[dict]]) -> dict[str, tuple[int, int]]:
    """Each trial's running interval as its own reports stamp it: (first, last), in the
    whole seconds of Tune's `timestamp`, taken in the trial's process."""
    return {t: (min(r["timestamp"] for r in rows), max(r["timestamp"] for r in rows))
            for t, rows in results.items()}


def _all_ran_at_once(results: dict[str, list[dict]]) -> bool:
    """Eight intervals share a moment iff the latest start precedes the earliest end;
    strictly, in whole seconds, so that the real (finer) times overlap too."""
    spans = _spans(results)
    return (len(spans) == TRIALS
            and max(a for a, _ in spans.values()) < min(b for _, b in spans.values()))


def _results_or_none(storage) -> dict[str, list[dict]]:
    try:
        return trial_results(storage)
    except (IndexError, ValueError, OSError):  # no instance yet, or a line half-written
        return {}


def test_eight_quarter_gpu_trials_run_at_once_four_per_declared_gpu(tmp_path, dsprites16,
                                                                     gpu_node):
    address, env = gpu_node
    path = _quarter_gpu_sweep(tmp_path, dsprites16)
    storage = tmp_path / "storage"
    cmd = [sys.executable, "-m", "slotsweep.run", str(path), "--address", address, "--quiet"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 480  # eight trials starting on two busy cores
        while (time.monotonic() < deadline and driver.poll() is None
               and not _all_ran_at_once(_results_or_none(storage))):
            time.sleep(1)
        driver.send_signal(signal.SIGINT)  # Ctrl-C: Tune stops the trials and returns
        out, err = driver.communicate(timeout=240)
    finally:
        end_session(driver.pid)
    assert driver.returncode == 130, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"

    results = trial_results(storage)
    assert len(results) == TRIALS, sorted(results)
    assert _all_ran_at_once(results), f"not all {TRIALS} ran at once: {_spans(results)}"

    told = {}
    for trial_id, rows in results.items():
        seen = {(r[GPU_IDS], r[CUDA_VISIBLE_DEVICES], r[CUDA_DEVICES_SEEN], r[DEVICE])
                for r in rows}
        assert len(seen) == 1, f"trial {trial_id} moved: {seen}"
        told[trial_id] = seen.pop()
        assert {r["node_ip"] for r in rows} == {HEAD_IP}
    # Four trials on each declared GPU, each told exactly its one GPU id, as Ray tells a
    # trial on a GPU node (the same code path: Ray does not look for the GPU).
    per_gpu = collections.Counter(gpu_ids for gpu_ids, *_ in told.values())
    assert per_gpu == {"0": 4, "1": 4}, told
    for trial_id, (gpu_ids, cuda_visible, cuda_seen, device) in told.items():
        assert cuda_visible == gpu_ids, (trial_id, told[trial_id])
        # Here: CUDA shows the trial what this machine has of its GPU (nothing on a CPU
        # machine), and `train.device: auto` trains on what it sees (the CPU here).
        installed = torch.cuda.device_count()
        assert cuda_seen == visible_cuda_devices(cuda_visible, installed), told[trial_id]
        assert device == choose_device("auto", cuda_seen), told[trial_id]
        # On a node with the two GPUs it declares: one device, cuda:0, whichever GPU.
        assert choose_device("auto", visible_cuda_devices(cuda_visible, GPUS)) == "cuda:0"


def test_a_quarter_gpu_where_no_gpu_is_declared_fails_before_any_trial(tmp_path, dsprites16):
    """The sweep's own local Ray instance on this CPU machine declares no GPU: nothing
    could ever run a trial, so the CLI refuses with the file and the key."""
    path = _quarter_gpu_sweep(tmp_path, dsprites16)
    done = run(path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert (f"error: {path}: resources.gpu: 0.25 GPU per trial, but this Ray cluster has "
            "no GPU; run it on the CPUs with --gpus-per-trial 0") in done.stderr, done.stderr
    storage = tmp_path / "storage"
    assert not list(storage.rglob("run-*")) and not list(storage.rglob("result.json"))


CHECK_JOINED = """
import logging, sys
from slotsweep.sweep import cluster
from slotsweep.sweep.load import load_sweep
from slotsweep.sweep.spec import with_resources
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stdout)
cluster.connect(sys.argv[2])
for gpu in (0.25, 4.0):
    print("asking", gpu, flush=True)
    cluster.check_resources(with_resources(load_sweep(sys.argv[1], {}), None, gpu),
                            started_locally=False)
print("checked", flush=True)
"""


def test_a_joined_cluster_short_of_gpus_warns_and_does_not_refuse(tmp_path, dsprites16,
                                                                  gpu_node):
    """A cluster that was joined may gain GPU nodes (an autoscaler adds them when trials
    wait): asking more GPUs than any node has now is a warning naming the file and key,
    not an error; a quarter GPU on this node is neither."""
    address, env = gpu_node
    path = _quarter_gpu_sweep(tmp_path, dsprites16)
    done = subprocess.run([sys.executable, "-c", CHECK_JOINED, str(path), address], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr[-3000:]
    quarter, four = done.stdout.split("asking 4.0", 1)
    assert "resources.gpu" not in quarter, quarter
    assert (f"WARNING {path}: resources.gpu: 4.0 GPU per trial, but this Ray cluster has at "
            f"most {GPUS} GPU on a node now; its trials wait") in four, four
