"""The device script runs end to end on the CPU in its smoke mode (the GPU path's CI):
benchmarks/device_binding.sh, which runs benchmarks/gpu.py and then the learning runs
that a GPU lease resumes (issue 28)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from tests.support.benchmarks import DEVICE_SCRIPT as SCRIPT
from tests.support.benchmarks import ROOT


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    """One smoke run of the whole script: OUT and its work folder, and what it printed."""
    tmp = tmp_path_factory.mktemp("device")
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp / "out"), "WORK": str(tmp / "work"),
           "OMP_NUM_THREADS": "1", "PY": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return tmp / "out", tmp / "work", proc.stdout


@pytest.mark.slow
def test_gpu_benchmark_smoke(device_run):
    out, _, _ = device_run
    result = json.loads((out / "gpu.json").read_text())
    printed = (out / "gpu.log").read_text()
    assert result["smoke"] and result["device"] == "cpu"
    assert "CPU SMOKE RUN" in printed and result["table"] in printed

    assert all(math.isfinite(v) and v > 0 for v in result["matmul"].values())
    rows = {(r["config"], r["mode"], r["data"]) for r in result["rows"]}
    for config in ("dsprites-covloss", "dinosaur"):
        for mode in ("fp32 eager", "bf16", "bf16+compile"):
            assert (config, mode, "streamed") in rows
            assert f"| {config} | {mode} | streamed |" in printed
    assert ("dinosaur", "bf16+compile", "staged") in rows  # staged to the CPU
    for row in result["rows"]:
        for key in ("steps_per_s", "tflops", "gflop_per_step", "peak_memory_gb",
                    "data_wait_ms", "first_step_s"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["config"], key)
        assert row["steps_per_s"] > 0 and row["gflop_per_step"] > 0

    assert [r["trials"] for r in result["packing"]] == [1, 2]
    assert all(math.isfinite(r["aggregate_steps_per_s"]) and r["aggregate_steps_per_s"] > 0
               for r in result["packing"])

    assert [r["config"] for r in result["numerics"]] == ["dsprites-covloss", "dinosaur"]
    for r in result["numerics"]:
        assert r["finite"] and math.isfinite(r["rel_diff"]) and r["ok"], r
    assert len(result["targets"]) == 3


@pytest.mark.slow
def test_device_script_trains_the_authors_model_and_resumes_run_a(device_run):
    """The default runs: G (the paper's recipe, the authors' model, fp32) from scratch and
    A from its state tracked in git; each curve counts lone sprites at every evaluation,
    and everything comes back in one tarball under the device call's 16 MB."""
    out, work, printed = device_run
    archive = out / "learn.tar.gz"
    assert archive.stat().st_size < 16 * 2**20
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        for run in ("G", "A"):
            assert {f"{run}.log", f"{run}.report", f"{run}/curve.jsonl"} <= names
            curve = [json.loads(line) for line in
                     tar.extractfile(f"{run}/curve.jsonl").read().decode().splitlines()]
            assert "lone/whole" in curve[-1]  # A's older rows predate the count
            assert all(0 <= r["lone/whole"] <= r["lone/images"] for r in curve
                       if "lone/whole" in r)
            assert f"== {run}: " in printed and "lone sprites whole" in printed
            states = [n for n in names if n.startswith(f"{run}/checkpoints/")
                      and n.endswith("config.yaml")]
            assert len(states) == 1  # the latest only
            config = yaml.safe_load(tar.extractfile(states[0]))
            if run == "G":
                assert curve[-1]["step"] == 2
                assert config["model"]["decoder"] == "broadcast_tconv"
                assert config["model"]["slot_init"] == "authors"
                assert config["train"]["precision"] == "fp32"
            else:  # resumed from benchmarks/results/device/A (109k steps on an H200)
                assert curve[-1]["step"] == 109_002 and curve[-2]["step"] == 109_000
                assert config["model"]["slot_init"] == "queries"
                assert config["train"]["precision"] == "fp32"  # the smoke's (CPU) default
    assert "A resumes from benchmarks/results/device/A" in printed
    for folder in ("results", "out"):  # the script writes only under OUT and WORK
        assert not (ROOT / "benchmarks" / folder / "device" / "G").exists()
