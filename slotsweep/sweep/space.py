"""The search of a sweep: its space as each search algorithm wants it, the algorithm
(Optuna, random or grid), and the early-stopping scheduler.

Optuna gets a define-by-run space (`OptunaSpace`): a conditional key (`when:`) is
suggested only when its condition holds, so the sampler never learns from values a trial
did not use. Random and grid search get Tune's own distributions (no conditionals).
An extension of a finished sweep warm-starts Optuna with every earlier result
(`warm_study`).
"""

from __future__ import annotations

from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from slotsweep.metrics.pareto import scored
from slotsweep.sweep.ledger import TrialRecord
from slotsweep.sweep.spec import Param, Sweep


def _primitive(values: list[Any]) -> bool:
    """Optuna categoricals hold primitives; other choices (lists, dicts) go by index."""
    return all(isinstance(v, (bool, int, float, str)) or v is None for v in values)


def _suggest(trial: optuna.Trial, key: str, param: Param) -> Any:
    kind = param.kind
    if kind in ("choice", "grid"):
        values = getattr(param, kind)
        if _primitive(values):
            return trial.suggest_categorical(key, values)
        return values[trial.suggest_categorical(key + "#", list(range(len(values))))]
    low, high = getattr(param, kind)
    if kind == "int":
        return trial.suggest_int(key, low, high)
    return trial.suggest_float(key, low, high, log=kind == "loguniform")


class OptunaSpace:
    """A define-by-run space: conditional keys are suggested only when active.

    A class rather than a closure: Tune pickles the searcher (and so this) into its
    experiment state with the standard pickle.
    """

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.order = sweep.order()
        self.base = sweep.base_flat()

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = dict(self.base)
        for key in self.order:
            param = self.sweep.spec.search_space[key]
            if param.active(values):
                values[key] = _suggest(trial, key, param)
        return {k: values[k] for k in self.order}


def optuna_distributions(sweep: Sweep) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, p in sweep.spec.search_space.items():
        kind = p.kind
        if kind in ("choice", "grid"):
            values = getattr(p, kind)
            if _primitive(values):
                out[key] = optuna.distributions.CategoricalDistribution(values)
            else:
                out[key + "#"] = optuna.distributions.CategoricalDistribution(
                    list(range(len(values))))
        elif kind == "int":
            assert p.int is not None  # p.kind names the distribution that is given
            out[key] = optuna.distributions.IntDistribution(*p.int)
        else:
            low, high = getattr(p, kind)
            out[key] = optuna.distributions.FloatDistribution(
                low, high, log=kind == "loguniform")
    return out


def objective_values(sweep: Sweep, metrics: dict[str, Any]) -> float | list[float] | None:
    """A result as Optuna's study takes it: the objective's value, or the list of the
    objectives' values; None unless every one is a finite number."""
    directions = sweep.spec.search.directions()
    if not scored(metrics, directions):
        return None
    values = [float(metrics[m]) for m in directions]
    return values if len(values) > 1 else values[0]


def warm_study(sweep: Sweep, prior: list[TrialRecord], name: str) -> optuna.storages.BaseStorage:
    """An in-memory Optuna storage holding every earlier trial with its result (all its
    objectives' values for a multi-objective search)."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=study_directions(sweep))
    dists = optuna_distributions(sweep)
    for rec in prior:
        value = objective_values(sweep, rec.metrics)
        params, used = {}, {}
        for key, v in active_params(sweep, rec.params).items():
            if key in dists:
                params[key], used[key] = v, dists[key]
            elif key + "#" in dists:
                choices = getattr(sweep.spec.search_space[key], sweep.spec.search_space[key].kind)
                params[key + "#"], used[key + "#"] = choices.index(v), dists[key + "#"]
        ok = value is not None
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=used,
            **({"values": value} if isinstance(value, list) else {"value": value}),
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
        ))
    return storage


def active_params(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """Drop conditional keys whose condition does not hold (their value is the base's)."""
    values = {**sweep.base_flat(), **params}
    return {k: v for k, v in params.items()
            if k in sweep.spec.search_space and sweep.spec.search_space[k].active(values)}


def param_space(sweep: Sweep) -> dict[str, Any] | None:
    """For random/grid search: Tune's own distributions (no conditionals there)."""
    if sweep.spec.search.algorithm == "optuna":
        return None
    space = {}
    for key, p in sweep.spec.search_space.items():
        kind = p.kind
        # p.kind names the one distribution given: the asserts below hold.
        if kind == "grid":
            assert p.grid is not None
            space[key] = tune.grid_search(p.grid)
        elif kind == "choice":
            assert p.choice is not None
            space[key] = tune.choice(p.choice)
        elif kind == "int":
            assert p.int is not None
            space[key] = tune.randint(p.int[0], p.int[1] + 1)
        elif kind == "uniform":
            assert p.uniform is not None
            space[key] = tune.uniform(*p.uniform)
        else:
            assert p.loguniform is not None
            space[key] = tune.loguniform(*p.loguniform)
    return space


def tune_metric(sweep: Sweep) -> tuple[str | None, str | None]:
    """The metric and mode for Tune's own config: the objective of a single-objective
    search; none for several (the searcher and the scheduler each hold theirs, and Tune
    refuses a metric given both to it and to them)."""
    s = sweep.spec.search
    return (None, None) if s.multi_objective else (s.metric, s.mode)


def scheduler(sweep: Sweep):
    s = sweep.spec.scheduler
    stop_on = sweep.spec.stop_on()
    if stop_on is None:
        return FIFOScheduler()
    steps = sweep.trial_config({}).train.steps
    # One objective: Tune hands ASHA the metric. Several: ASHA judges the one named.
    metric, mode = (None, None) if tune_metric(sweep)[0] else stop_on
    return ASHAScheduler(time_attr="step", max_t=steps, grace_period=min(s.grace_period, steps),
                         reduction_factor=s.reduction_factor, metric=metric, mode=mode)


def sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    """The sweep file's Optuna sampler; both take one objective or several (TPE is what
    OptunaSearch builds by default, so single-objective sweeps draw as they always did)."""
    startup = sweep.spec.search.startup_trials
    if sweep.spec.search.sampler == "nsga2":
        if startup is None:
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=startup)
    if startup is None:
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def study_directions(sweep: Sweep) -> list[optuna.study.StudyDirection]:
    """Optuna's direction of each objective, in the sweep file's order."""
    return [optuna.study.StudyDirection.MAXIMIZE if mode == "max"
            else optuna.study.StudyDirection.MINIMIZE
            for mode in sweep.spec.search.directions().values()]


def search_algorithm(sweep: Sweep, prior: list[TrialRecord], tune_name: str):
    s = sweep.spec.search
    if s.algorithm == "optuna":
        seed = s.seed + len(prior)  # an extension must not replay the first random draws
        directions = s.directions()
        several = len(directions) > 1
        alg = OptunaSearch(
            space=OptunaSpace(sweep), sampler=sampler(sweep, seed),
            metric=list(directions) if several else s.metric,
            mode=list(directions.values()) if several else s.mode,
            study_name=tune_name, storage=warm_study(sweep, prior, tune_name),
        )
        return ConcurrencyLimiter(alg, s.max_concurrent) if s.max_concurrent else alg
    return BasicVariantGenerator(random_state=s.seed + len(prior),
                                 max_concurrent=s.max_concurrent)
