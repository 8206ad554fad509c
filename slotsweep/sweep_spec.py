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
import difflib
import graphlib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slotsweep.config import (
    ConfigError,
    TrialConfig,
    build_config,
    format_validation_error,
    known_keys,
    read_yaml,
)
from slotsweep.shipped import known_sweeps, shipped, sweep_folders

SWEEPS_DIR = shipped("sweeps")
CONFIGS_DIR = shipped("configs")
VARIANT = "variant"  # the search key of a sweep file's `variants`
# What a trial reports that a sweep file's `published` values can be compared with
# (the probe's names are those of `slotsweep.probe.evaluate_probe`).
COMPARABLE_METRICS = ("val/fg_ari", "val/mbo", "val/stripe", "probe/shape_acc",
                      "probe/color_r2", "probe/scale_r2", "probe/x_r2", "probe/y_r2")
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
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    metric: str = "val/fg_ari"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, gt=0)
    max_concurrent: int = Field(0, ge=0)  # 0: as many as resources allow
    seed: int = Field(0, ge=0)


class Scheduler(_Section):
    type: Literal["asha", "none"] = "none"
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


def resolve(name_or_path: str) -> Path:
    """`quickstart` → sweeps/quickstart.yaml; a path is taken as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        return path
    for folder in sweep_folders():
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    raise ConfigError(f"no sweep named {name_or_path!r} in sweeps/ "
                      f"(known: {', '.join(known_sweeps())})")


def _base_path(path: Path, base: str) -> Path:
    """A sweep file's `base`: a path relative to the sweep file, or the name of a shipped
    config (`base: quickstart`), so a user's own sweep can build on the packaged ones."""
    try:
        candidate = (path.parent / base).resolve()
        if candidate.is_file():
            return candidate
        if Path(base).name == base and (CONFIGS_DIR / f"{base}.yaml").is_file():
            return CONFIGS_DIR / f"{base}.yaml"
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{path}: base: {base[:80]!r} cannot name a file ({reason})") from None
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"{path}: base: no such config file {candidate}, nor a shipped config "
                      f"of that name (known: {known})")


def load_sweep(name_or_path: str, overrides: dict[str, Any] | None = None) -> Sweep:
    """Load and validate a sweep file; every error names the file and the key path."""
    path = resolve(name_or_path)
    data = read_yaml(path)
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), SweepFile)) from None

    base: dict[str, Any] = {}
    if spec.base:
        base = read_yaml(_base_path(path, spec.base))
    base = _merge(base, spec.config)
    source = f"{path} (base config)"
    base_cfg = build_config(base, source=source, overrides=overrides or {})
    base = base_cfg.to_dict()
    # Trials run in Ray's per-trial working directories, on any node: data paths are
    # made absolute here, relative to where the sweep is started (as a user reads them).
    for split in ("train", "val"):
        value = base["data"][split]
        if "://" not in value and not Path(value).is_absolute():
            base["data"][split] = str(Path.cwd() / value)

    keys = known_keys()
    if spec.published is not None:
        _check_published(spec, path)
    spec = _expand_variants_and_seeds(spec, path, keys, int(base["seed"]))
    if not spec.search_space:
        raise ConfigError(f"{path}: search_space: is empty; name at least one config key "
                          "(or give variants)")
    for key, param in spec.search_space.items():
        where = f"{path}: search_space.{key}"
        if key == VARIANT and spec.variants:
            continue
        if key not in keys:
            raise ConfigError(f"{where}: not a trial config key{_did_you_mean(key, keys)}")
        for cond, allowed in (param.when or {}).items():
            if cond not in keys and not (cond == VARIANT and spec.variants):
                raise ConfigError(
                    f"{where}.when.{cond}: not a trial config key{_did_you_mean(cond, keys)}")
            if allowed == []:
                raise ConfigError(f"{where}.when.{cond}: lists no value, so {key} would never "
                                  "be searched")
            if cond in spec.search_space and spec.search_space[cond].kind in ("choice", "grid"):
                drawn = spec.search_space[cond].candidates()
                never = [v for v in (allowed if isinstance(allowed, list) else [allowed])
                         if v not in drawn]
                if never:
                    raise ConfigError(
                        f"{where}.when.{cond}: {', '.join(map(repr, never))} is never drawn "
                        f"({cond} takes {', '.join(map(repr, drawn))}), so {key} would never "
                        "be searched")
    if spec.search.algorithm == "grid":
        conditional = [k for k, p in spec.search_space.items() if p.when]
        if conditional:
            raise ConfigError(
                f"{path}: search_space.{conditional[0]}.when: a grid search tries every "
                "combination, so conditions do not apply; use search.algorithm: optuna, or "
                "one sweep file per condition")
        bad = [k for k, p in spec.search_space.items() if p.kind not in ("grid", "choice")]
        if bad:
            raise ConfigError(f"{path}: search.algorithm: grid needs choice/grid values; "
                              f"{', '.join(bad)} are ranges")
    sweep = Sweep(path.stem, path, spec, base)
    order = sweep.order()
    for key, param in spec.search_space.items():
        for value in param.candidates():
            _check_value(sweep, order, key, value)
    return sweep


def _expand_variants_and_seeds(spec: SweepFile, path: Path, keys, base_seed: int) -> SweepFile:
    """`variants` and `seeds` become search axes: `variant` (grid or choice over the
    names) and `seed` (a grid of `seeds` consecutive seeds from the base config's)."""
    space = dict(spec.search_space)
    grid = spec.search.algorithm == "grid"
    if spec.variants:
        if VARIANT in space:
            raise ConfigError(f"{path}: search_space.{VARIANT}: reserved for `variants`")
        for name, overrides in spec.variants.items():
            for key in overrides:
                if key not in keys:
                    raise ConfigError(f"{path}: variants.{name}.{key}: not a trial config "
                                      f"key{_did_you_mean(key, keys)}")
                if key in space:
                    raise ConfigError(f"{path}: variants.{name}.{key}: also in search_space; "
                                      "set a key in one place")
        names = list(spec.variants)
        space = {VARIANT: Param(grid=names) if grid else Param(choice=names), **space}
    if spec.seeds > 1:
        if spec.seeds > MAX_SEEDS:  # every seed is a trial, and a grid value checked here
            raise ConfigError(f"{path}: seeds: {spec.seeds} is more than {MAX_SEEDS}")
        if not grid:
            raise ConfigError(f"{path}: seeds: repeating every configuration over seeds needs "
                              "search.algorithm: grid")
        if "seed" in space:
            raise ConfigError(f"{path}: seeds: and search_space.seed: give one of them")
        space["seed"] = Param(grid=list(range(base_seed, base_seed + spec.seeds)))
    return spec.model_copy(update={"search_space": space})


def _check_published(spec: SweepFile, path: Path) -> None:
    """Published values name variants of this file and metrics that trials report."""
    if not spec.variants:
        raise ConfigError(f"{path}: published: its values are per variant; give `variants`")
    assert spec.published is not None  # the caller checks
    for name, metrics in spec.published.values.items():
        if name not in spec.variants:
            raise ConfigError(f"{path}: published.values.{name}: not a variant "
                              f"(variants: {', '.join(spec.variants)})")
        for metric, value in metrics.items():
            if metric not in COMPARABLE_METRICS:
                close = difflib.get_close_matches(metric, COMPARABLE_METRICS, n=1, cutoff=0.6)
                hint = (f"did you mean {close[0]!r}?" if close
                        else f"one of {', '.join(COMPARABLE_METRICS)}")
                raise ConfigError(f"{path}: published.values.{name}.{metric}: not a reported "
                                  f"metric; {hint}")
            if not math.isfinite(value):
                raise ConfigError(f"{path}: published.values.{name}.{metric}: {value} is not "
                                  "a finite number")


def _did_you_mean(key: str, keys) -> str:
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else " (e.g. loss.beta, model.slot_size)"


def _check_value(sweep: Sweep, order: list[str], key: str, value: Any) -> None:
    """Refuse `key: value` if no choice of the other keys' candidates makes it valid.

    Only the value that is wrong on its own is blamed: `loss.beta: 0.001` is fine even
    though it fails next to `loss.proj_depth: 0`, because it works with depth 2.
    """
    fixed = {key: value, **_first_allowed(sweep.spec.search_space[key])}
    tries = [fixed] + [
        {**fixed, other: c}
        for other in order if other not in fixed
        for c in sweep.spec.search_space[other].candidates()
    ]
    first_error = None
    for attempt in tries:
        params = _representative(sweep, order, attempt)
        try:
            sweep.trial_config(params)
            return
        except ConfigError as exc:
            if first_error is None:
                trial = ", ".join(f"{k}={v!r}" for k, v in params.items())
                first_error = f"({trial}): {str(exc).removeprefix(f'{sweep.path}: ')}"
    raise ConfigError(
        f"{sweep.path}: search_space.{key}: value {value!r} gives no valid trial "
        f"{first_error}"
    )


def _first_allowed(param: Param) -> dict[str, Any]:
    """Values that make `param` active (the first allowed value of each condition)."""
    return {k: (v[0] if isinstance(v, list) else v) for k, v in (param.when or {}).items()}


def _representative(sweep: Sweep, order: list[str], fixed: dict[str, Any]) -> dict[str, Any]:
    """A full assignment that keeps `fixed` and gives every other active key its first
    candidate, to check each value against the base config before anything runs."""
    values = {**sweep.base_flat(), **fixed}
    params = dict(fixed)
    for key in order:
        param = sweep.spec.search_space[key]
        if key not in fixed and param.active(values):
            params[key] = values[key] = param.candidates()[0]
    return {k: v for k, v in params.items() if k in sweep.spec.search_space}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out
