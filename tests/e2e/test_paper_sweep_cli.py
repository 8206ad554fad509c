"""End-to-end half of test_paper_sweeps.py: the tests marked slow (see that file)."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from slotsweep.sweep.load import load_sweep
from slotsweep.sweep.spec import SWEEPS_DIR
from tests.support.paper_sweeps import smoke_overrides
from tests.support.sweeps import mlflow_runs, run

# The paper's models are large; these ones train a step in well under a second.
SMOKE_TOKENS, SMOKE_FEATURE_DIM = 16, 32  # a 4x4 token grid of width 32


@pytest.mark.slow
def test_a_paper_sweep_runs_through_the_sweep_cli(shards, tmp_path):
    """The real CLI on a real paper sweep file: the frozen-ViT image reconstruction
    baseline's 3-point grid, on CPUs (--gpus-per-trial 0), shrunk with --set."""
    name = "paper_coco_image_recon_baseline"
    sweep = load_sweep(name)
    sets = [f"{k}={json.dumps(v)}" for k, v in
            smoke_overrides(sweep.trial_config({}), shards).items()]
    storage = tmp_path / "storage"
    done = run(SWEEPS_DIR / f"{name}.yaml", "--storage", str(storage), "--cpus-per-trial", "1",
               "--gpus-per-trial", "0", *itertools.chain.from_iterable(("--set", s)
                                                                        for s in sets))
    assert done.returncode == 0, done.stderr[-3000:]
    _, parents, trials = mlflow_runs(storage, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.params["model.slot_size"]) for r in trials) == [64, 128, 256]
    for r in trials:
        assert r.data.tags["slotsweep.outcome"] == "finished", r.data.tags
        assert r.data.params["model.feature_dim"] == str(SMOKE_FEATURE_DIM)
        assert r.data.metrics["step"] == 3 and math.isfinite(r.data.metrics["val/fg_ari"])
    assert f"sweep {name}: 3 trials" in done.stdout
