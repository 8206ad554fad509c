"""Every sweep file, the paper's experiments first: each loads and validates, holds the
paper's hyperparameters as its base (PAPER.md), and trains its first trial for a few steps
in a smoke mode: the real trainer at a reduced size, its data replaced by tiny generated
shards of the same schema (images, or frozen-ViT tokens beside images)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from slotsweep.config import TrialConfig, build_config
from slotsweep.sweep.console import first_params
from slotsweep.sweep.load import load_sweep
from slotsweep.sweep.spec import SWEEPS_DIR, Sweep
from slotsweep.training.loop import fit
from tests.support.paper_sweeps import smoke_overrides

SWEEPS = sorted(SWEEPS_DIR.glob("*.yaml"))

# The paper's models are large; these ones train a step in well under a second.
SMOKE_TOKENS, SMOKE_FEATURE_DIM = 16, 32  # a 4x4 token grid of width 32

# PAPER.md's table, row by row: the sweep file and the settings its base config must hold.
SLOT_ATTENTION = {  # Locatello et al. 2020, the reference hyperparameters
    "train.lr": 4e-4, "train.batch_size": 64, "train.steps": 500_000,
    "train.warmup_steps": 10_000, "train.decay_rate": 0.5, "train.decay_steps": 100_000,
    "model.num_iterations": 3,
}
DSPRITES = {**SLOT_ATTENTION, "model.encoder": "cnn", "model.num_slots": 5,
            "model.slot_size": 64, "model.resolution": 64,
            # the authors' model (tests/unit/test_authors_model.py checks it layer by layer)
            "model.decoder": "broadcast_tconv", "model.decoder_channels": None,
            "model.decoder_layers": 3, "model.decoder_kernel": 5,
            "model.slot_init": "authors", "model.eval_slot_init": "fresh",
            "data.synthetic_train": 60_000, "data.synthetic_val": 320}
COVLOSS_HEAD = {"loss.type": "covloss", "loss.beta": 1.0, "loss.proj_depth": 2,
                "loss.proj_dim": 1024, "loss.proj_norm": "layernorm", "loss.cov_normalize": "p2"}
IMAGE_RECON = {**SLOT_ATTENTION, "model.encoder": "features",
               "model.decoder": "broadcast_mlp_upsample", "model.feature_dim": 768,
               "model.num_patches": 196, "model.num_slots": 7, "model.slot_size": 64,
               "model.resolution": 128, "model.broadcast_size": 8}
DINOSAUR = {**SLOT_ATTENTION, "model.encoder": "features", "model.decoder": "mlp_patch",
            "model.feature_dim": 768, "model.num_patches": 196, "model.num_slots": 7,
            "model.slot_size": 256, "model.decoder_hidden": [2048, 2048, 2048],
            "train.decay_after_warmup": True, "train.grad_clip": 1.0, "loss.type": "none"}
DINOSAUR_COVLOSS = {"loss.type": "vicreg", "loss.proj_depth": 0, "loss.proj_dim": None,
                    "loss.gamma": 1.0, "loss.cov_normalize": "p"}
PAPER_ROWS = {
    "paper_dsprites_baseline": {**DSPRITES, "loss.type": "none"},
    "paper_dsprites_covloss": {**DSPRITES, **COVLOSS_HEAD},
    "paper_dsprites_cosine": {**DSPRITES, "loss.type": "cosine", "loss.beta": 0.01,
                              "loss.cosine_margin": 0.2},
    "paper_coco_image_recon_baseline": {**IMAGE_RECON, "loss.type": "none"},
    "paper_coco_image_recon_covloss": {**IMAGE_RECON, **COVLOSS_HEAD},
    "paper_coco_image_recon_cosine": {**IMAGE_RECON, "model.slot_size": 128,
                                      "loss.type": "cosine", "loss.cosine_margin": 0.2},
    "paper_dinosaur": DINOSAUR,
    "paper_dinosaur_covloss": {**DINOSAUR, **DINOSAUR_COVLOSS},
    "paper_dinosaur_slot1024": {**DINOSAUR, "model.slot_size": 1024},
    "paper_dinosaur_slot1024_covloss": {**DINOSAUR, **DINOSAUR_COVLOSS,
                                        "model.slot_size": 1024},
    # The two questions the paper left open, on its multi-dSprites covloss model.
    "covloss_beta_depth": {**DSPRITES, **COVLOSS_HEAD},
    "cov_over_slots": {**DSPRITES, **COVLOSS_HEAD, "loss.cov_over": "features"},
}


def _id(path: Path) -> str:
    return path.stem


# ---------------------------------------------------------------- smoke mode


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Models this small run faster on one thread: on 2 busy cores each parallel operator
    waits milliseconds for its second thread (BENCHMARKS.md), 6x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smoke_config(sweep: Sweep, shards: Path) -> TrialConfig:
    """The sweep's first trial, shrunk for the smoke run."""
    config = sweep.trial_config(first_params(sweep))
    return build_config(config.to_dict(), source=f"{sweep.path} (smoke)",
                        overrides=smoke_overrides(config, shards))


# ---------------------------------------------------------------- the files


def test_every_paper_experiment_has_a_sweep_file():
    assert set(PAPER_ROWS) <= {p.stem for p in SWEEPS}


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_file_loads_and_every_trial_it_can_run_is_valid(path):
    sweep = load_sweep(str(path))
    assert sweep.spec.description.strip(), f"{path}: give it a description"
    sweep.trial_config(first_params(sweep))
    if sweep.spec.search.algorithm == "grid":  # small enough to check every point
        keys = sweep.order()
        grid = [sweep.spec.search_space[k].candidates() for k in keys]
        points = list(itertools.product(*grid))
        assert len(points) * sweep.spec.search.num_samples == sweep.num_trials() <= 16
        for values in points:
            sweep.trial_config(dict(zip(keys, values, strict=True)))


@pytest.mark.parametrize("name", sorted(PAPER_ROWS))
def test_paper_sweep_is_built_around_the_papers_setting(name):
    sweep = load_sweep(name)
    base = sweep.trial_config({}).flat()
    want = PAPER_ROWS[name]
    got = {k: base[k] for k in want}
    assert got == {k: list(v) if isinstance(v, tuple) else v for k, v in want.items()}
    # Every searched setting spans the base (the paper's) value: a search *around* it.
    for key, param in sweep.spec.search_space.items():
        if key == "seed":
            continue
        values = getattr(param, param.kind)
        if param.kind in ("choice", "grid"):
            assert base[key] in values, (name, key, base[key], values)
        else:
            assert values[0] <= base[key] <= values[1], (name, key, base[key], values)


# ---------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_trains_a_few_steps_in_smoke_mode(path, shards, tmp_path):
    sweep = load_sweep(str(path))
    config = smoke_config(sweep, shards)
    first = sweep.trial_config(first_params(sweep))
    assert (config.loss, config.model.slot_size, config.model.num_slots) == (
        first.loss, first.model.slot_size, first.model.num_slots)
    result = fit(config, workdir=tmp_path, log=None)
    assert result["step"] == config.train.steps
    for key in ("train/loss", "train/recon", "val/fg_ari", "val/mbo"):
        assert math.isfinite(result[key]), (key, result)
    terms = {"none": [], "cosine": ["cosine"], "covloss": ["covariance"],
             "vicreg": ["covariance", "variance"]}[config.loss.type]
    for term in terms:
        assert math.isfinite(result[f"train/{term}"]), (term, result)
    if config.eval.probe:
        assert any(k.startswith("probe/") for k in result), result
