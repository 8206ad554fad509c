"""The shared trainer: reports, resume equivalence, checkpoints, NaN guard, schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slotsweep.config import TrainConfig, build_config
from slotsweep.data.batches import Batches
from slotsweep.data.reader import ShardDataset
from slotsweep.data.writer import ShardWriter
from slotsweep.models import build_model
from slotsweep.training import checkpoint
from slotsweep.training.loop import NonFiniteLossError, fit, get_lr, train_step
from tests.support.training import _finite_params, _params


def crash_at(step: int):
    """A report callback that crashes the run once it reports `step`."""

    def report(metrics, ckpt):
        if metrics["step"] == step:
            raise Crash

    return report


class Crash(RuntimeError):
    pass


def test_fit_reports_metrics_and_checkpoints(tiny_config, tmp_path):
    reports = []
    result = fit(tiny_config(), lambda m, c: reports.append((m, c)), workdir=tmp_path, log=None)
    assert [m["step"] for m, _ in reports] == [4, 8]
    metrics, ckpt = reports[-1]
    for key in ("val/fg_ari", "val/mbo", "val/stripe", "val/recon", "train/loss", "train/recon",
                "lr"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val/mbo"] <= 1.0 and -1.0 <= metrics["val/fg_ari"] <= 1.0
    assert result["val/fg_ari"] == metrics["val/fg_ari"]
    state = checkpoint.load(ckpt)
    assert state["step"] == 8
    assert (tmp_path / "checkpoints" / "step-00000008" / "config.yaml").read_text() == (
        tiny_config().to_yaml()
    )
    # Each evaluation's checkpoint holds what was reported with it (the sweep re-sends it
    # when Tune's record ends before that checkpoint).
    for reported, ckpt_dir in reports:
        saved = json.loads((Path(ckpt_dir) / checkpoint.REPORTED).read_text())
        assert saved == pytest.approx(reported)


def test_loss_terms_of_the_bottleneck_are_reported(tiny_config, tmp_path):
    cfg = tiny_config(loss={"type": "vicreg", "beta": 0.1, "proj_dim": 32})
    result = fit(cfg, workdir=tmp_path, log=None)
    for key in ("train/covariance", "train/variance", "val/covariance", "val/variance"):
        assert math.isfinite(result[key]), key


@pytest.mark.parametrize("loss", [{}, {"type": "covloss", "beta": 1.0, "proj_dim": 32,
                                        "proj_norm": "batchnorm"}])
def test_resume_continues_the_same_trajectory(tiny_config, tmp_path, loss):
    cfg = tiny_config(loss=loss)
    fit(cfg, workdir=tmp_path / "straight", log=None)

    with pytest.raises(Crash):
        fit(cfg, crash_at(4), workdir=tmp_path / "resumed", log=None)
    steps = []
    fit(cfg, lambda m, c: steps.append(m["step"]), workdir=tmp_path / "resumed", log=None)
    assert steps == [8]  # resumed at 4: only the second half ran
    straight, resumed = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_training_order_is_a_function_of_seed_and_step(dsprites16):
    batches = Batches(ShardDataset(dsprites16 / "train"))
    first = [batches.indices(s, 8, seed=1) for s in range(20)]
    again = Batches(ShardDataset(dsprites16 / "train"))
    assert all(np.array_equal(a, again.indices(s, 8, seed=1)) for s, a in enumerate(first))
    epoch0 = np.concatenate(first[:8])  # 64 rows / batch 8 = 8 steps per epoch
    assert sorted(epoch0.tolist()) == list(range(64))
    assert not np.array_equal(first[0], batches.indices(0, 8, seed=2))


def test_data_loader_workers_give_the_same_batches(dsprites16):
    batches = Batches(ShardDataset(dsprites16 / "train", columns=["image"]))
    plain = batches.train_batches(start=3, batch_size=8, seed=0)
    workers = batches.train_batches(start=3, batch_size=8, seed=0, num_workers=2)
    for _ in range(10):
        assert torch.equal(next(plain)["image"], next(workers)["image"])


def _nan_features(path, bad_row):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((32, 16, 8)).astype(np.float16)
    features[bad_row, 3, 2] = np.nan
    with ShardWriter(path, rows_per_shard=16) as writer:
        writer.write({"id": np.arange(32, dtype=np.int64), "features": features,
                      "segmentation": rng.integers(0, 3, (32, 4, 4)).astype(np.int16)})


def test_non_finite_loss_stops_with_step_and_terms_and_keeps_last_checkpoint(tmp_path):
    data = tmp_path / "feat"
    seed, batch = 0, 8
    _nan_features(data / "train", bad_row=0)
    _nan_features(data / "val", bad_row=31)
    order = Batches(ShardDataset(data / "train"))
    bad_step = next(s for s in range(100) if 0 in order.indices(s, batch, seed))
    cfg = build_config({
        "seed": seed,
        "model": {"encoder": "features", "decoder": "mlp_patch", "feature_dim": 8,
                  "num_patches": 16, "slot_size": 8, "mlp_hidden_size": 8, "num_slots": 2,
                  "decoder_hidden": [16]},
        "data": {"train": str(data / "train"), "val": str(data / "val")},
        "train": {"steps": 100, "batch_size": batch, "checkpoint_every": 1, "log_every": 50,
                  "device": "cpu"},
        "eval": {"every": 1000, "max_images": 8},
    })
    with pytest.raises(NonFiniteLossError, match=rf"at step {bad_step}: recon=nan, loss=nan"):
        fit(cfg, workdir=tmp_path / "run", log=None)
    last = checkpoint.latest(tmp_path / "run" / "checkpoints")
    if bad_step == 0:
        assert last is None
    else:
        state = checkpoint.load(last)
        assert state["step"] == bad_step
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_corrupt_checkpoint_names_its_path(tiny_config, tmp_path):
    fit(tiny_config(), workdir=tmp_path, log=None)
    last = checkpoint.latest(tmp_path / "checkpoints")
    (last / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=str(last)):
        fit(tiny_config(), workdir=tmp_path, log=None)


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "step-00000001"
    path.mkdir()
    torch.save({"x": Evil()}, path / "state.pt")
    with pytest.raises(checkpoint.CheckpointError, match="cannot load checkpoint"):
        checkpoint.load(path)


def test_lr_schedule_warmup_and_decay():
    t = TrainConfig(lr=1.0, warmup_steps=10, decay_rate=0.5, decay_steps=100)
    assert get_lr(0, t) == pytest.approx(0.1 * 0.5 ** (0 / 100))
    assert get_lr(9, t) == pytest.approx(0.5 ** (9 / 100))
    assert get_lr(109, t) == pytest.approx(0.5 ** (109 / 100))
    after = t.model_copy(update={"decay_after_warmup": True})
    assert get_lr(9, after) == pytest.approx(1.0)
    assert get_lr(110, after) == pytest.approx(0.5)


# ---- the GPU code paths, run on the CPU (issue 9)


def test_bf16_autocast_trains_and_stays_finite(tiny_config, tmp_path):
    cfg = tiny_config(loss={"type": "covloss", "beta": 1.0, "proj_dim": 32},
                      train={"precision": "bf16"})
    result = fit(cfg, workdir=tmp_path, log=None)
    for key in ("train/loss", "train/recon", "train/covariance", "val/fg_ari"):
        assert math.isfinite(result[key]), key
    state = _params(tmp_path)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert _finite_params(tmp_path)


def test_compile_flag_trains_the_compiled_forward(tiny_config, tmp_path, monkeypatch):
    """The dynamo path of `train.compile`, with the eager backend (inductor: the slow test)."""
    calls, real_compile = [], torch.compile

    def compile_eager(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    result = fit(tiny_config(train={"compile": True, "precision": "bf16"}), workdir=tmp_path,
                 log=None)
    torch._dynamo.reset()
    assert len(calls) == 1
    assert math.isfinite(result["train/loss"]) and _finite_params(tmp_path)


def test_adam_is_fused_on_cuda_only():
    from slotsweep.training.loop import make_optimizer

    model = torch.nn.Linear(3, 3)
    assert make_optimizer(model, 1e-3, torch.device("cuda")).defaults["fused"] is True
    assert not make_optimizer(model, 1e-3, torch.device("cpu")).defaults["fused"]


def test_staged_training_continues_the_streamed_trajectory(tiny_config, tmp_path):
    """data.stage=device (the CPU here) resumed mid-epoch = one streamed run, bit for bit."""
    streamed = tiny_config(data={"stage": "stream"})
    staged = tiny_config(data={"stage": "device"})
    fit(streamed, workdir=tmp_path / "streamed", log=None)

    with pytest.raises(Crash):
        fit(staged, crash_at(4), workdir=tmp_path / "staged", log=None)
    lines = []
    fit(staged, workdir=tmp_path / "staged", log=lines.append)
    assert any(line.startswith("staged the training split on cpu") for line in lines)
    a, b = _params(tmp_path / "streamed"), _params(tmp_path / "staged")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stage", ["device", "stream"])
def test_cuda_step_never_waits_for_the_device(tiny_config, stage):
    """Staged or pinned batches, fused Adam, loss sums on the device: no sync per step."""
    from slotsweep.training.loop import _Window, make_optimizer, training_batches

    cfg = tiny_config(train={"device": "cuda", "precision": "bf16"}, data={"stage": stage})
    device = torch.device("cuda")
    model = build_model(cfg.model, cfg.loss).to(device)
    optimizer = make_optimizer(model, cfg.train.lr, device)
    batches = training_batches(Batches.open(cfg.data.train, cfg.model, eval=False), cfg,
                               device, start=0)
    window = _Window(device)
    window.add(0, train_step(model, optimizer, next(batches), cfg, 0, device))  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            window.add(step, train_step(model, optimizer, next(batches), cfg, step, device))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    window.check()
