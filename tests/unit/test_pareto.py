"""Multi-objective search: the Pareto front, its hypervolume, the sweep file's
`objectives`, and the searcher that Tune gets for them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from slotsweep.config_io import ConfigError
from slotsweep.metrics.pareto import dominates, hypervolume, pareto_front, reference_baseline
from slotsweep.sweep.ledger import TrialRecord
from slotsweep.sweep.load import load_sweep

THREE = {"val/fg_ari": "max", "val/mbo": "max", "val/stripe": "min"}


def random_points(rng: random.Random, n: int, metrics, grid: int = 6) -> dict[str, dict]:
    """Points on a coarse grid (so that ties and equal vectors occur), some unscored."""
    points = {}
    for i in range(n):
        values = {m: rng.randrange(grid) / grid for m in metrics}
        if rng.random() < 0.1:
            values[rng.choice(list(metrics))] = rng.choice([math.nan, math.inf])
        points[f"t{i}"] = values
    return points


def brute_force_front(points, directions):
    """The definition, written out again: nobody better-or-equal everywhere and better once."""
    def better_or_equal(a, b, m):
        return a[m] >= b[m] if directions[m] == "max" else a[m] <= b[m]

    ok = {k: v for k, v in points.items() if all(math.isfinite(v[m]) for m in directions)}
    return [k for k, v in ok.items() if not any(
        all(better_or_equal(w, v, m) for m in directions)
        and any(w[m] != v[m] for m in directions) for w in ok.values())]


@pytest.mark.parametrize("seed", range(20))
def test_front_is_the_non_dominated_set(seed):
    rng = random.Random(seed)
    directions = dict(list(THREE.items())[: 2 + seed % 2])
    points = random_points(rng, rng.randrange(1, 30), directions)
    front = pareto_front(points, directions)
    assert front == brute_force_front(points, directions)
    for name in front:  # nothing on the front dominates another point of it
        assert not any(dominates(points[o], points[name], directions) for o in front)


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_equals_optunas(seed):
    rng = random.Random(100 + seed)
    directions = dict(list(THREE.items())[: 2 + seed % 2])
    points = [v for v in random_points(rng, rng.randrange(1, 25), directions, grid=20).values()
              if all(math.isfinite(x) for x in v.values())]
    reference = {m: rng.uniform(0.3, 0.7) for m in directions}
    ours = hypervolume(points, reference, directions)
    # Optuna minimises: turn the maximised objectives round, keep only points that beat
    # the reference everywhere (Optuna's routine expects that).
    sign = np.array([-1.0 if d == "max" else 1.0 for d in directions.values()])
    losses = np.array([[p[m] for m in directions] for p in points]) * sign
    ref = np.array([reference[m] for m in directions]) * sign
    inside = losses[(losses < ref).all(axis=1)] if len(losses) else losses
    theirs = optuna._hypervolume.compute_hypervolume(inside, ref) if len(inside) else 0.0
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_hypervolume_by_hand():
    directions = {"val/fg_ari": "max", "val/mbo": "max"}
    ref = {"val/fg_ari": 0.5, "val/mbo": 0.2}
    a = {"val/fg_ari": 0.7, "val/mbo": 0.3}  # box 0.2 x 0.1
    b = {"val/fg_ari": 0.6, "val/mbo": 0.5}  # box 0.1 x 0.3, overlapping a's in 0.1 x 0.1
    below = {"val/fg_ari": 0.9, "val/mbo": 0.1}  # worse than the reference on mBO: nothing
    assert hypervolume([a, b, below], ref, directions) == pytest.approx(0.02 + 0.03 - 0.01)
    assert hypervolume([below], ref, directions) == 0.0
    assert hypervolume([], ref, directions) == 0.0


def test_reference_is_the_baseline_best_on_the_first_objective():
    baselines = {  # as the summary has them: one slot has no boundary, so no stripe score
        "one slot": {"val/fg_ari": 0.0, "val/mbo": 0.40, "val/stripe": math.nan},
        "blocks 2x2": {"val/fg_ari": 0.545, "val/mbo": 0.21, "val/stripe": 1.0},
        "blocks 3x3": {"val/fg_ari": 0.40, "val/mbo": 0.25, "val/stripe": 1.0},
    }
    assert reference_baseline(baselines, THREE) == "blocks 2x2"
    assert reference_baseline(baselines, {"val/mbo": "max", "val/fg_ari": "max"}) == "one slot"
    assert reference_baseline(baselines, {"val/fg_ari": "max", "probe/x_r2": "max"}) is None


def test_baselines_score_the_stripe_of_their_masks():
    import torch

    from slotsweep.metrics.baselines import trivial_baselines

    seg = torch.randint(0, 4, (3, 32, 32))
    scores = trivial_baselines(seg)
    assert math.isnan(scores["one slot"]["stripe"])  # a single segment: no boundary
    for grid in (2, 3, 4):  # full-length straight boundaries: the stripe score's maximum
        assert scores[f"blocks {grid}x{grid}"]["stripe"] == pytest.approx(1.0)


# --- the sweep file -------------------------------------------------------------------

def sweep(tmp_path: Path, search: dict, scheduler: dict | None = None) -> Path:
    tree = {"config": {"model": {"resolution": 16, "slot_size": 16}},
            "search_space": {"loss.type": {"choice": ["none", "cosine"]},
                             "loss.beta": {"loguniform": [1e-3, 1.0]}},
            "search": search, "scheduler": scheduler or {"type": "none"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_one_objective_stays_the_default(tmp_path):
    s = load_sweep(str(sweep(tmp_path, {"num_samples": 2}))).spec
    assert s.search.directions() == {"val/fg_ari": "max"} and not s.search.multi_objective
    s = load_sweep(str(sweep(tmp_path, {"metric": "val/mbo", "mode": "max"},
                             {"type": "asha"}))).spec
    assert s.search.directions() == {"val/mbo": "max"} and s.stop_on() == ("val/mbo", "max")


def test_objectives_keep_their_order_and_name_the_first_as_metric(tmp_path):
    s = load_sweep(str(sweep(tmp_path, {"objectives": THREE, "sampler": "nsga2"},
                             {"type": "asha", "metric": "val/stripe"}))).spec
    assert list(s.search.directions().items()) == list(THREE.items())
    assert (s.search.metric, s.search.mode) == ("val/fg_ari", "max")
    assert s.search.multi_objective and s.stop_on() == ("val/stripe", "min")


@pytest.mark.parametrize("search, scheduler, words", [
    ({"objectives": {"val/fg_ari": "max", "val/mbo": None}}, None,
     ["search.objectives.val/mbo", "no direction"]),
    ({"objectives": ["val/fg_ari", "val/mbo"]}, None, ["search.objectives", "direction"]),
    ({"objectives": {"val/fg_ari": "up"}}, None, ["search.objectives.val/fg_ari", "'up'"]),
    ({"objectives": {"val/fgari": "max", "val/mbo": "max"}}, None,
     ["search.objectives.val/fgari", "did you mean 'val/fg_ari'"]),
    ({"metric": "val/mob"}, None, ["search.metric", "did you mean 'val/mbo'"]),
    ({"objectives": THREE, "mode": "max"}, None, ["search.mode", "not both"]),
    ({"objectives": THREE}, {"type": "asha"}, ["scheduler.metric", "3 objectives"]),
    ({"objectives": THREE}, {"type": "asha", "metric": "val/loss"},
     ["scheduler.metric", "not an objective"]),
    ({"objectives": THREE, "algorithm": "random"}, None, ["search.objectives", "optuna"]),
    ({"algorithm": "grid", "sampler": "nsga2"}, None, ["search.sampler", "grid"]),
])
def test_bad_objectives_name_file_and_key(tmp_path, search, scheduler, words):
    path = sweep(tmp_path, search, scheduler)
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    message = str(err.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


# --- the search ------------------------------------------------------------------------

def records(n: int, rng: random.Random) -> list[TrialRecord]:
    out = []
    for i in range(n):
        metrics = {"val/fg_ari": rng.random(), "val/mbo": rng.random(), "val/stripe": rng.random()}
        if i == 1:
            metrics["val/mbo"] = math.nan  # an unscored objective: a failed trial to Optuna
        params = {"loss.type": "cosine", "loss.beta": 10 ** rng.uniform(-3, 0)}
        out.append(TrialRecord(f"t{i}", params, metrics, "finished"))
    return out


def test_warm_study_holds_every_objective(tmp_path):
    from slotsweep.sweep.space import warm_study

    s = load_sweep(str(sweep(tmp_path, {"objectives": THREE})))
    prior = records(4, random.Random(0))
    study = optuna.load_study(study_name="w", storage=warm_study(s, prior, "w"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert trials[1].state == optuna.trial.TrialState.FAIL
    for t, rec in zip(trials, prior, strict=True):
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.values == [rec.metrics[m] for m in THREE]
    # Optuna's own front of the warm study is ours, over the trials that have every value
    front = {t.number for t in study.best_trials}
    ours = pareto_front({i: r.metrics for i, r in enumerate(prior)}, THREE)
    assert front == set(ours)


@pytest.mark.parametrize("sampler, kind", [("tpe", optuna.samplers.TPESampler),
                                           ("nsga2", optuna.samplers.NSGAIISampler)])
def test_search_gets_the_metric_and_mode_lists_and_the_sampler(tmp_path, sampler, kind):
    from ray.tune.schedulers import ASHAScheduler

    from slotsweep.sweep.space import scheduler, search_algorithm, tune_metric

    s = load_sweep(str(sweep(tmp_path, {"objectives": THREE, "sampler": sampler, "seed": 4},
                             {"type": "asha", "metric": "val/mbo"})))
    alg = search_algorithm(s, [], "tune-000")
    assert alg.metric == list(THREE) and alg._mode == list(THREE.values())
    assert isinstance(alg._sampler, kind)
    assert tune_metric(s) == (None, None)  # Tune refuses a metric given twice
    asha = scheduler(s)
    assert isinstance(asha, ASHAScheduler) and (asha.metric, asha._mode) == ("val/mbo", "max")
    single = load_sweep(str(sweep(tmp_path, {"num_samples": 2}, {"type": "asha"})))
    assert tune_metric(single) == ("val/fg_ari", "max") and scheduler(single).metric is None


# --- the summary and the report ---------------------------------------------------------

BASELINES = {  # as `on_validation_set` scores them
    "one slot": {"fg_ari": 0.0, "mbo": 0.40, "stripe": math.nan},
    "blocks 2x2": {"fg_ari": 0.545, "mbo": 0.20, "stripe": 1.0},
    "blocks 4x4": {"fg_ari": 0.35, "mbo": 0.33, "stripe": 1.0},
}


def result_of(trials: list[TrialRecord]):
    from slotsweep.sweep.driver import SweepResult

    return SweepResult("s", Path("/nowhere"), "sqlite:///x", "1", "p", trials,
                       planned=len(trials))


def test_summary_prints_the_front_and_its_hypervolume_against_the_best_baseline(tmp_path):
    from slotsweep.sweep.console import front_lines

    s = load_sweep(str(sweep(tmp_path, {"objectives": THREE})))
    params = {"loss.type": "none"}
    a = TrialRecord("a", params, {"val/fg_ari": 0.7, "val/mbo": 0.3, "val/stripe": 0.5},
                    "finished")
    b = TrialRecord("b", params, {"val/fg_ari": 0.6, "val/mbo": 0.5, "val/stripe": 0.4},
                    "stopped early")
    dominated = TrialRecord("c", params, {"val/fg_ari": 0.6, "val/mbo": 0.3,
                                          "val/stripe": 0.6}, "finished")
    failed = TrialRecord("d", params, {"val/fg_ari": 0.9, "val/mbo": 0.9,
                                       "val/stripe": 0.1}, "failed", "NaN loss")
    lines = front_lines(s, result_of([a, b, dominated, failed]), BASELINES)
    text = "\n".join(lines)
    assert "Pareto front over FG-ARI (max), mBO (max), stripe (min): 2 of 4 trials" in text
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]
    assert rows == ["a", "b"]  # best on the first objective first; no failed trial
    ref = {"val/fg_ari": 0.545, "val/mbo": 0.20, "val/stripe": 1.0}
    expected = hypervolume([a.metrics, b.metrics], ref, THREE)
    assert expected > 0
    assert lines[-1] == (f"hypervolume {expected:.4g} against blocks 2x2 "
                         "(FG-ARI 0.545, mBO 0.200, stripe 1.000)")

    weak = TrialRecord("w", params, {"val/fg_ari": 0.3, "val/mbo": 0.1, "val/stripe": 0.5},
                       "finished")
    assert front_lines(s, result_of([weak]), BASELINES)[-1].endswith(
        ": no trial beats it on every objective")
    given = load_sweep(str(sweep(tmp_path, {"objectives": THREE, "reference_point": {
        "val/fg_ari": 0.0, "val/mbo": 0.0, "val/stripe": 1.0}})))
    assert front_lines(given, result_of([weak]), BASELINES)[-1] == (
        f"hypervolume {0.3 * 0.1 * 0.5:.4g} against the sweep file's reference point "
        "(FG-ARI 0.000, mBO 0.000, stripe 1.000)")


def test_report_front_leaves_out_trials_that_did_not_end():
    from slotsweep.reporting.front import front_figure, front_trials
    from slotsweep.reporting.trials import TrialView

    def view(trial_id, status, fg, mbo, stripe):
        return TrialView(trial_id, "run-" + trial_id, trial_id, status, None,
                         {"loss.type": "none"},
                         {"val/fg_ari": fg, "val/mbo": mbo, "val/stripe": stripe})

    trials = [view("a", "finished", 0.5, 0.2, 0.5), view("b", "stopped early", 0.4, 0.3, 0.6),
              view("c", "finished", 0.4, 0.2, 0.7), view("r", "running", 0.9, 0.9, 0.1),
              view("f", "failed", 0.9, 0.9, 0.1)]
    front = front_trials(trials, THREE)
    assert [t.trial_id for t in front] == ["a", "b"]
    references = {f"{n}": {f"val/{k}": v for k, v in s.items()} for n, s in BASELINES.items()}
    spec = front_figure(trials, front, THREE, ["loss.type"], references)["spec"]
    traces = {t["name"]: t for t in spec["data"]}
    assert traces["Pareto front"]["customdata"] == ["a", "b"]
    assert traces["trials"]["customdata"] == ["a", "b", "c"]
    assert traces["trials"]["marker"]["color"] == [0.5, 0.6, 0.7]  # by the third objective
    assert traces["trivial baselines"]["text"] == list(BASELINES)
