"""Sweep files (`sweeps/NAME.yaml`): validated before Ray starts, no Ray import here.

A sweep file names a base trial config, a search space over its dotted keys, the
search algorithm, the scheduler, per-trial resources, storage and tracking:

    base: ../configs/dsprites_small.yaml      # path relative to the sweep file; or
    config: {model: {...}, ...}               # an inline config (or both: inline wins)
    search_space:
      loss.type: {choice: [none, covloss, cosine]}
      loss.beta: {loguniform: [1.0e-3, 1.0], when: {loss.type: [covloss, cosine]}}
      loss.proj_depth: {int: [0, 3], when: {loss.type: covloss}}
    search: {algorithm: optuna, metric: val/fg_ari, mode: max, num_samples: 8, seed: 0}
    scheduler: {type: asha, grace_period: 1000, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}
    storage: runs/sweeps
    tracking: {uri: null, experiment: null}

With `variants` (named sets of overrides) and `seeds: N`, every variant is repeated over
N seeds; `published: {source: ..., values: {variant: {metric: value}}}` names numbers to
compare the variants with (a paper's table), which the report checks direction by direction.

Distributions: `choice` (list), `uniform` / `loguniform` ([low, high]), `int`
([low, high], inclusive), `grid` (list; every value is tried). A key with `when`
is sampled only if every named key has one of the listed values; otherwise it keeps
the base config's value.
"""

from __future__ import annotations

import builtins
import graphlib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slotsweep.config import TrialConfig, build_config
from slotsweep.config_io import ConfigError, format_validation_error
from slotsweep.shipped import shipped

SWEEPS_DIR = shipped("sweeps")
CONFIGS_DIR = shipped("configs")
VARIANT = "variant"  # the search key of a sweep file's `variants`
# What a trial reports that a sweep file's `published` values can be compared with
# (the probe's names are those of `slotsweep.probe.evaluate_probe`).
COMPARABLE_METRICS = ("val/fg_ari", "val/mbo", "val/stripe", "probe/shape_acc",
                      "probe/color_r2", "probe/scale_r2", "probe/x_r2", "probe/y_r2")
# What a search may optimise or stop on: the scores and probe results above, and the
# validation value of each loss term (`slotsweep.losses.compute_losses`'s names).
REPORTED_METRICS = (*COMPARABLE_METRICS, "probe/r_r2", "probe/g_r2", "probe/b_r2",
                    *(f"val/{t}" for t in ("loss", "recon", "covariance", "variance", "cosine")))
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "grid")
MAX_SEEDS = 1000  # a sweep file's `seeds`


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Param(_Section):
    """One search-space entry: exactly one distribution, optionally conditional."""

    choice: list[Any] | None = None
    grid: list[Any] | None = None
    uniform: tuple[float, float] | None = Field(None, strict=False)
    loguniform: tuple[float, float] | None = Field(None, strict=False)
    int: tuple[builtins.int, builtins.int] | None = Field(None, strict=False)
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_distribution(self) -> Param:
        given = [d for d in DISTRIBUTIONS if getattr(self, d) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one distribution of {', '.join(DISTRIBUTIONS)} "
                f"(got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind in ("choice", "grid") and not getattr(self, kind):
            raise ValueError(f"{kind}: needs at least one value")
        if kind in ("uniform", "loguniform", "int"):
            low, high = getattr(self, kind)
            if not low < high:
                raise ValueError(f"{kind}: needs low < high (got [{low}, {high}])")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: needs low > 0 (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(d for d in DISTRIBUTIONS if getattr(self, d) is not None)

    def candidates(self) -> list[Any]:
        """Values to check against the config at load time (endpoints of ranges)."""
        value = getattr(self, self.kind)
        return list(value)

    def active(self, values: dict[str, Any]) -> bool:
        for key, allowed in (self.when or {}).items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if values.get(key) not in allowed:
                return False
        return True


class Search(_Section):
    """One objective (`metric`, `mode`) or several (`objectives`, each metric with its
    direction, searched by a multi-objective Optuna sampler). With `objectives`, `metric`
    and `mode` are the first objective's: what "best" means where one ranking is asked."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    metric: str = "val/fg_ari"
    mode: Literal["max", "min"] = "max"
    objectives: dict[str, Literal["max", "min"]] | None = None
    sampler: Literal["tpe", "nsga2"] = "tpe"  # Optuna's: both handle several objectives
    # Trials drawn at random before the sampler learns from results: TPE's startup
    # trials (Optuna's default 10), NSGA-II's population (default 50). A sweep of fewer
    # trials than this is a random search.
    startup_trials: int | None = Field(None, ge=1)
    # The hypervolume's reference point, a value per objective (default: the best
    # trivial baseline's scores on the sweep's validation images).
    reference_point: dict[str, float] | None = Field(None, strict=False)
    num_samples: int = Field(8, gt=0)
    max_concurrent: int = Field(0, ge=0)  # 0: as many as resources allow
    seed: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _first_objective(cls, data: Any) -> Any:
        objectives = data.get("objectives") if isinstance(data, dict) else None
        if objectives is None:
            return data
        if isinstance(objectives, (list, str)):
            raise ValueError(
                "objectives: give each objective its direction, a mapping of metric to "
                "max or min (e.g. {val/fg_ari: max, val/mbo: max, val/stripe: min}), "
                f"not {type(objectives).__name__} {objectives!r}")
        if not isinstance(objectives, dict) or not objectives:
            raise ValueError("objectives: needs at least one metric with its direction "
                             "(e.g. {val/fg_ari: max, val/mbo: max})")
        for metric, direction in objectives.items():
            if direction not in ("max", "min"):
                what = "no direction" if direction is None else f"direction {direction!r}"
                raise ValueError(f"objectives.{metric}: {what}; give max or min "
                                 f"({metric}: max)")
        given = [k for k in ("metric", "mode") if k in data]
        if given:
            raise ValueError(f"{given[0]}: give either metric and mode (one objective) or "
                             "objectives (one or several), not both")
        metric, mode = next(iter(objectives.items()))
        return {**data, "metric": metric, "mode": mode}

    @model_validator(mode="after")
    def _sampler_is_optuna(self) -> Search:
        if self.startup_trials is not None and self.algorithm != "optuna":
            raise ValueError(f"startup_trials: {self.algorithm} search draws every trial "
                             "at random; only optuna has startup trials")
        if self.sampler == "nsga2" and self.startup_trials == 1:
            raise ValueError("startup_trials: NSGA-II's population needs at least 2")
        if self.sampler != "tpe" and self.algorithm != "optuna":
            raise ValueError(f"sampler: {self.sampler} is an Optuna sampler; "
                             f"algorithm {self.algorithm} has none")
        if self.objectives and len(self.objectives) > 1 and self.algorithm != "optuna":
            raise ValueError(f"objectives: {self.algorithm} search does not learn from "
                             "results; several objectives need algorithm: optuna")
        if self.reference_point is not None:
            directions = self.directions()
            for metric, value in self.reference_point.items():
                if metric not in directions:
                    raise ValueError(f"reference_point.{metric}: not an objective of the "
                                     f"search (objectives: {', '.join(directions)})")
                if not math.isfinite(value):
                    raise ValueError(f"reference_point.{metric}: {value} is not a finite "
                                     "number")
            missing = [m for m in directions if m not in self.reference_point]
            if missing:
                raise ValueError(f"reference_point: gives no value for {', '.join(missing)}; "
                                 "it needs one per objective")
        return self

    def directions(self) -> dict[str, str]:
        """Every objective with its direction (one for a single-objective search)."""
        return dict(self.objectives) if self.objectives else {self.metric: self.mode}

    @property
    def multi_objective(self) -> bool:
        return len(self.directions()) > 1


class Scheduler(_Section):
    type: Literal["asha", "none"] = "none"
    # The objective ASHA stops on: one metric, as ASHA judges one. Default: the
    # search's metric, and required when the search has several objectives.
    metric: str | None = None
    grace_period: int = Field(1, gt=0)  # in training steps
    reduction_factor: float = Field(2.0, gt=1)


class Resources(_Section):
    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _fractional(self) -> Resources:
        if self.gpu > 1 and not self.gpu.is_integer():  # int(inf) would overflow
            raise ValueError(f"gpu: above 1 must be a whole number (got {self.gpu})")
        return self


class Tracking(_Section):
    uri: str | None = None  # default: sqlite in the sweep's storage directory
    experiment: str | None = None  # default: the sweep's name


class Published(_Section):
    """Published numbers per variant, e.g. a paper's table: the report checks whether
    each difference between two variants goes the same way in this sweep."""

    source: str
    values: dict[str, dict[str, float]] = Field(strict=False)


class SweepFile(_Section):
    description: str = ""
    base: str | None = None
    config: dict[str, Any] = {}
    # Named sets of dotted overrides, one axis of the search (e.g. the paper's rows:
    # {baseline: {loss.type: none}, covloss: {loss.type: covloss, loss.beta: 1.0}}).
    variants: dict[str, dict[str, Any]] = {}
    # Every configuration repeated over this many seeds (seed, seed+1, ...): grid only.
    seeds: int = Field(1, ge=1)
    # Values to compare the variants with: {source: "...", values: {variant: {metric: v}}}.
    published: Published | None = None
    search_space: dict[str, Param] = {}
    search: Search = Search()
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    storage: str = "runs/sweeps"
    tracking: Tracking = Tracking()
    max_failures: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _scheduler_objective(self) -> SweepFile:
        """ASHA judges one metric: which objective, when the search has several."""
        metric, directions = self.scheduler.metric, self.search.directions()
        if self.scheduler.type == "none" or metric in directions:
            return self
        if metric is None and self.search.multi_objective:
            raise ValueError(
                f"scheduler.metric: ASHA judges one metric and the search has "
                f"{len(directions)} objectives ({', '.join(directions)}); name the one "
                "it stops trials on, or turn early stopping off (scheduler: {type: none})")
        if metric is not None:
            raise ValueError(f"scheduler.metric: {metric} is not an objective of the "
                             f"search (objectives: {', '.join(directions)})")
        return self

    def stop_on(self) -> tuple[str, str] | None:
        """(metric, mode) ASHA stops trials on; None without early stopping."""
        if self.scheduler.type == "none":
            return None
        metric = self.scheduler.metric or self.search.metric
        return metric, self.search.directions()[metric]


class Sweep:
    """A loaded, validated sweep: its name, file, base config tree and spec."""

    def __init__(self, name: str, path: Path, spec: SweepFile, base: dict[str, Any]) -> None:
        self.name, self.path, self.spec, self.base = name, path, spec, base
        self._base_flat: dict[str, Any] | None = None

    def order(self) -> list[str]:
        """Search keys ordered so every `when` key is sampled before the key it gates.

        Keys that are ready together keep the file's order: the order is what Optuna
        samples in, so it must not change between a run and its resume."""
        space = self.spec.search_space
        position = {key: i for i, key in enumerate(space)}
        graph = graphlib.TopologicalSorter(
            {k: [c for c in (p.when or {}) if c in space] for k, p in space.items()})
        try:
            graph.prepare()
        except graphlib.CycleError as exc:
            raise ConfigError(f"{self.path}: search_space: `when` conditions form a cycle: "
                              f"{' → '.join(exc.args[1])}") from None
        done: list[str] = []
        while graph.is_active():
            ready = sorted(graph.get_ready(), key=position.__getitem__)
            done.extend(ready)
            graph.done(*ready)
        return done

    def trial_config(self, params: dict[str, Any], *, seed: int | None = None) -> TrialConfig:
        """The one place that turns sampled parameters into a TrialConfig."""
        variant = params.get(VARIANT)
        overrides = dict(self.spec.variants.get(variant, {})) if isinstance(variant, str) else {}
        overrides.update({k: v for k, v in params.items()
                          if k in self.spec.search_space and k != VARIANT})
        if seed is not None:
            overrides["seed"] = seed
        return build_config(self.base, source=str(self.path), overrides=overrides)

    def grid_size(self) -> int:
        """Trials in one pass over a grid search's grid (1 for other algorithms)."""
        if self.spec.search.algorithm != "grid":
            return 1
        return math.prod(len(p.grid) for p in self.spec.search_space.values() if p.grid)

    def num_trials(self, num_samples: int | None = None) -> int:
        """Trials the sweep runs: num_samples, or for a grid num_samples passes over it."""
        return (num_samples or self.spec.search.num_samples) * self.grid_size()

    def base_flat(self) -> dict[str, Any]:
        """The base config as dotted keys (what an inactive conditional key keeps).

        Validated once and kept: load-time checks and every trial's bookkeeping ask
        for it, and the base never changes. Callers get a copy."""
        if getattr(self, "_base_flat", None) is None:  # also for sweeps pickled before
            self._base_flat = build_config(self.base, source=str(self.path)).flat()
        assert self._base_flat is not None
        return dict(self._base_flat)


def with_resources(sweep: Sweep, cpu: float | None, gpu: float | None) -> Sweep:
    """The sweep with its per-trial resources replaced (None keeps the file's value)."""

    from slotsweep.config_io import ConfigError
    from slotsweep.sweep.spec import Resources

    res = sweep.spec.resources
    try:
        resources = Resources(cpu=res.cpu if cpu is None else cpu,
                              gpu=res.gpu if gpu is None else gpu)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(
            exc, "--cpus-per-trial/--gpus-per-trial", Resources)) from None
    sweep.spec = sweep.spec.model_copy(update={"resources": resources})
    return sweep
