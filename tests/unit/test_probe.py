"""Feature-prediction probe: recovers properties slots encode, not ones they don't."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from slotsweep.data.sources.dsprites import generate
from slotsweep.training.probe import ProbeData, match, run_probe


def encoded(objects: np.ndarray, *, shuffle: bool, seed: int = 0) -> np.ndarray:
    """Slots holding each object's properties exactly (one fixed random linear code of
    shape one-hot, colour, scale, x, y), plus one pure-noise slot; optionally in a
    shuffled slot order per image."""
    code = np.random.default_rng(0).standard_normal((9, 32))  # the same code everywhere
    rng = np.random.default_rng(seed)
    n = objects.shape[0]
    props = np.concatenate([np.eye(3)[objects[..., 1].astype(int)], objects[..., 2:8]], -1)
    slots = props @ code  # (N, O, 32)
    absent = objects[..., 0] == 0
    slots[absent] = rng.standard_normal((int(absent.sum()), 32))
    slots = np.concatenate([slots, rng.standard_normal((n, 1, 32))], 1)
    if shuffle:
        for i in range(n):
            slots[i] = slots[i, rng.permutation(slots.shape[1])]
    return slots.astype(np.float32)


@pytest.fixture(scope="module")
def scenes():
    return generate(500, seed=3, resolution=32)["objects"]


@pytest.mark.parametrize("shuffle", [False, True])
def test_probe_recovers_properties_slots_encode(scenes, shuffle):
    slots = encoded(scenes, shuffle=shuffle)
    train = ProbeData.from_objects(slots[:400], scenes[:400])
    val = ProbeData.from_objects(slots[400:], scenes[400:])
    result = run_probe(train, val, epochs=30, seed=0)
    assert result["probe/shape_acc"] > 0.95
    # What a sweep file may cite published values for (sweep_spec) is what the probe reports.
    from slotsweep.sweep.spec import COMPARABLE_METRICS
    assert {m for m in COMPARABLE_METRICS if m.startswith("probe/")} <= set(result)
    for name in ("color_r2", "scale_r2", "x_r2", "y_r2"):
        assert result[f"probe/{name}"] > 0.9, (name, result)


def test_probe_finds_nothing_in_random_slots(scenes):
    rng = np.random.default_rng(0)
    train = ProbeData.from_objects(rng.standard_normal((400, 5, 32)).astype(np.float32),
                                   scenes[:400])
    val = ProbeData.from_objects(rng.standard_normal((100, 5, 32)).astype(np.float32),
                                 scenes[400:])
    result = run_probe(train, val, epochs=15, seed=0)
    assert result["probe/shape_acc"] < 0.6  # chance: 1/3
    for name in ("color_r2", "scale_r2", "x_r2", "y_r2"):
        assert result[f"probe/{name}"] < 0.4, (name, result)


def test_hungarian_matching_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for objects, slots in [(1, 3), (2, 2), (3, 5), (4, 4), (2, 6)]:
        cost = rng.random((objects, slots))
        rows, cols = match(cost)
        best = min(sum(cost[r, c] for r, c in enumerate(perm))
                   for perm in itertools.permutations(range(slots), objects))
        assert cost[rows, cols].sum() == pytest.approx(best)
        assert len(set(cols)) == objects


def test_probe_cli_on_a_trained_checkpoint(tiny_config, tmp_path, capsys):
    from slotsweep.probe import main
    from slotsweep.training import checkpoint
    from slotsweep.training.loop import fit

    fit(tiny_config(), workdir=tmp_path, log=None)
    last = checkpoint.latest(tmp_path / "checkpoints")
    assert main([str(last), "--train-images", "64"]) == 0
    printed = capsys.readouterr().out
    assert "probe/shape_acc" in printed and "probe/x_r2" in printed
    # A run's folder or its checkpoints/ stands for the latest checkpoint in it.
    assert checkpoint.resolve(tmp_path) == checkpoint.resolve(tmp_path / "checkpoints") == last
    assert main([str(tmp_path), "--train-images", "64"]) == 0
    assert capsys.readouterr().out == printed  # seeded: the same probe, the same scores
    assert main([str(tmp_path / "absent")]) == 2
    assert "absent: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "empty: no checkpoint here" in capsys.readouterr().err


def test_probe_as_final_trial_step_reports_its_scores(tiny_config, tmp_path):
    """eval.probe: the last evaluation carries the probe's scores, earlier ones do not."""
    from slotsweep.training.loop import fit

    reports = []
    config = tiny_config(eval={"probe": True, "probe_train_images": 48})
    fit(config, lambda m, c: reports.append(m), workdir=tmp_path, log=None)
    assert [r["step"] for r in reports] == [4, 8]
    assert not any(k.startswith("probe/") for k in reports[0])
    final = reports[-1]
    assert 0.0 <= final["probe/shape_acc"] <= 1.0
    assert {"probe/x_r2", "probe/y_r2", "probe/scale_r2", "probe/color_r2"} <= set(final)
