"""Every sweep file, the paper's experiments first: each loads and validates, holds the
paper's hyperparameters as its base (PAPER.md), and trains its first trial for a few steps
in a smoke mode: the real trainer at a reduced size, its data replaced by tiny generated
shards of the same schema (images, or frozen-ViT tokens beside images)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from slotsweep.config import TrialConfig, build_config
from slotsweep.data.features import add_features, create_encoder
from slotsweep.run import first_params
from slotsweep.sweep_spec import SWEEPS_DIR, Sweep, load_sweep
from slotsweep.training.loop import fit
from tests.sweep_helpers import mlflow_runs, run

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
            # the authors' model (tests/test_authors_model.py checks it layer by layer)
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


def smoke_overrides(config: TrialConfig, shards: Path) -> dict[str, Any]:
    """Dotted overrides that shrink `config` to a few CPU seconds on the tiny shards of
    the schema its model reads. Loss, slot count and slot size stay as the sweep says."""
    m = config.model
    split = shards / ("features" if m.encoder == "features" else "images")
    out: dict[str, Any] = {
        "data.train": str(split / "train"), "data.val": str(split / "val"),
        "data.synthetic": False, "data.num_workers": 0,
        "model.mlp_hidden_size": 32,
        "train.steps": 3, "train.batch_size": 4, "train.warmup_steps": 1,
        "train.log_every": 1, "train.checkpoint_every": 3, "train.device": "cpu",
        "train.precision": "fp32", "train.compile": False,
        "eval.every": 3, "eval.batch_size": 8, "eval.max_images": 8, "eval.num_pictures": 2,
        "eval.probe_train_images": 16,
    }
    if m.encoder == "cnn":
        out.update({"model.resolution": 16, "model.encoder_channels": 8})
    else:
        out.update({"model.feature_dim": SMOKE_FEATURE_DIM, "model.num_patches": SMOKE_TOKENS})
    if m.decoder in ("broadcast_cnn", "broadcast_tconv"):
        out.update({"model.decoder_channels": 8, "model.decoder_layers": 2})
    elif m.decoder == "broadcast_mlp_upsample":  # broadcast 4x4, one upsampling to 16x16
        out.update({"model.resolution": 16, "model.broadcast_size": 4,
                    "model.decoder_channels": 8})
    else:
        out["model.decoder_hidden"] = [32]
    return out


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


@pytest.fixture(scope="module")
def shards(dsprites16, tmp_path_factory):
    """images/: the 16x16 synthetic multi-dSprites shards (image, segmentation, objects),
    the schema of `prepare dsprites` and `prepare multi-dsprites`; features/: the same
    with frozen-ViT tokens added by the real `prepare features` code from a seeded random
    4x4-patch ViT (16 tokens of 32), the schema of `prepare coco`."""
    root = tmp_path_factory.mktemp("paper_sweeps")
    (root / "images").symlink_to(dsprites16, target_is_directory=True)
    vit = create_encoder("vit_base_patch16_224.dino", weights="random", img_size=16,
                         patch_size=4, depth=1, embed_dim=SMOKE_FEATURE_DIM, num_heads=2)
    assert (vit.grid, vit.dim) == ((4, 4), SMOKE_FEATURE_DIM)
    for split in ("train", "val"):
        add_features(dsprites16 / split, root / "features" / split, vit, batch_size=32)
    return root


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
