"""End-to-end half of test_train.py: the tests marked slow (see that file)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from slotsweep.training.loop import fit
from tests.support.training import _finite_params


@pytest.mark.slow
def test_cli_trains_and_resumes(tiny_config, tmp_path):
    cfg_path = tmp_path / "trial.yaml"
    cfg_path.write_text(tiny_config().to_yaml())
    cmd = [sys.executable, "-m", "slotsweep.train", str(cfg_path), "--workdir",
           str(tmp_path / "run")]
    first = subprocess.run(cmd + ["train.steps=4"], capture_output=True, text=True, check=True)
    # Progress is logged (stderr); the summary line is the output (stdout).
    assert "step 4/4" in first.stderr and "FG-ARI" in first.stderr
    assert first.stdout.startswith("done: step 4/4")
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "resumed from" in second.stderr and "step 8/8" in second.stderr
    # A finished run trains nothing more and says what it ended with.
    (done,) = second.stdout.splitlines()
    third = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert third.stdout.splitlines() == [done]
    assert third.stderr.splitlines() == [
        f"resumed from {tmp_path / 'run' / 'checkpoints' / 'step-00000008'} at step 8"]
    quiet = subprocess.run(cmd + ["-q"], capture_output=True, text=True, check=True)
    assert quiet.stderr == "" and quiet.stdout.splitlines() == [done]
    bad = subprocess.run(cmd + ["loss.betta=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "loss.betta: unknown key" in bad.stderr
    (tmp_path / "a-file").write_text("")
    blocked = subprocess.run(cmd[:-1] + [str(tmp_path / "a-file" / "run")],
                             capture_output=True, text=True)
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr
    assert blocked.stderr.splitlines()[-1].startswith(f"error: {tmp_path / 'a-file' / 'run'}")
    if not torch.cuda.is_available():
        gpu = subprocess.run(cmd + ["train.device=cuda"], capture_output=True, text=True)
        assert gpu.returncode == 2 and "Traceback" not in gpu.stderr
        assert "train.device: 'cuda', but no CUDA device is visible" in gpu.stderr


@pytest.mark.slow
def test_cli_logs_one_mlflow_run_that_a_resumed_rerun_continues(tiny_config, tmp_path):
    """--tracking-uri: every evaluation in one MLflow run with the config as params and
    the mask pictures as artifacts; the rerun that resumes continues that run, no step
    twice; without the option nothing is logged anywhere."""
    from mlflow.tracking import MlflowClient

    cfg_path = tmp_path / "trial.yaml"
    cfg_path.write_text(tiny_config(eval={"every": 2, "max_images": 16}).to_yaml())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "slotsweep.train", str(cfg_path), "--workdir",
           str(tmp_path / "run"), "--tracking-uri", uri, "--experiment", "single", "-q"]
    first = subprocess.run(cmd + ["train.steps=4"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True)  # resumes to 8 steps
    assert second.returncode == 0, second.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("single").experiment_id])
    assert run.info.status == "FINISHED" and f"MLflow: run {run.info.run_id}" in second.stdout
    # Params are the first start's config (MLflow's are immutable); config.yaml is the last
    assert run.data.params["train.steps"] == "4" and run.data.params["model.num_slots"]
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config).read_text())["train"]["steps"] == 8
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/fg_ari")]
    assert steps == [2, 4, 6, 8]
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "masks")]
    assert pictures == [f"masks/step-{s:08d}" for s in steps]
    untracked = subprocess.run(cmd[:6] + ["-q"], capture_output=True, text=True,
                               env={k: v for k, v in os.environ.items()
                                    if k != "MLFLOW_TRACKING_URI"})
    assert untracked.returncode == 0 and "MLflow" not in untracked.stdout


@pytest.mark.slow
def test_compile_with_inductor_on_the_cpu(tiny_config, tmp_path):
    """Real torch.compile (inductor's C++ kernels): ~75 s cold, ~5 s with its cache."""
    result = fit(tiny_config(train={"compile": True, "precision": "bf16"}), workdir=tmp_path,
                 log=None)
    torch._dynamo.reset()
    assert math.isfinite(result["train/loss"]) and _finite_params(tmp_path)
