"""Loading a sweep file: its name or path, its base config, the variants and seeds it
expands to, and the checks that every searched value builds a valid trial config, all
before Ray starts (the keys themselves are `slotsweep.sweep.spec`)."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slotsweep.config import build_config, known_keys
from slotsweep.config_io import ConfigError, format_validation_error, read_yaml
from slotsweep.shipped import known_sweeps, sweep_folders
from slotsweep.sweep.spec import (
    COMPARABLE_METRICS,
    CONFIGS_DIR,
    MAX_SEEDS,
    REPORTED_METRICS,
    VARIANT,
    Param,
    Sweep,
    SweepFile,
)


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
    base = _base_config(spec, path, overrides or {})
    keys = known_keys()
    _check_objectives(spec, path)
    if spec.published is not None:
        _check_published(spec, path)
    spec = _expand_variants_and_seeds(spec, path, keys, int(base["seed"]))
    _check_space(spec, path, keys)
    sweep = Sweep(path.stem, path, spec, base)
    order = sweep.order()
    for key, param in spec.search_space.items():
        for value in param.candidates():
            _check_value(sweep, order, key, value)
    return sweep


def _base_config(spec: SweepFile, path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The validated base config tree: `base:` file, then inline `config:`, then `--set`."""
    base: dict[str, Any] = {}
    if spec.base:
        base = read_yaml(_base_path(path, spec.base))
    base = build_config(_merge(base, spec.config), source=f"{path} (base config)",
                        overrides=overrides).to_dict()
    # Trials run in Ray's per-trial working directories, on any node: data paths are
    # made absolute here, relative to where the sweep is started (as a user reads them).
    for split in ("train", "val"):
        value = base["data"][split]
        if "://" not in value and not Path(value).is_absolute():
            base["data"][split] = str(Path.cwd() / value)
    return base


def _check_space(spec: SweepFile, path: Path, keys: set[str]) -> None:
    """Every searched key and `when` condition names a config key, every condition can
    hold, and a grid search has only values and no conditions."""
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


def _check_objectives(spec: SweepFile, path: Path) -> None:
    """The search's objectives and the scheduler's metric are metrics trials report."""
    keys = [f"search.objectives.{m}" if spec.search.objectives else "search.metric"
            for m in spec.search.directions()]
    metrics = list(spec.search.directions())
    if spec.scheduler.metric is not None:
        keys.append("scheduler.metric")
        metrics.append(spec.scheduler.metric)
    for key, metric in zip(keys, metrics, strict=True):
        if metric not in REPORTED_METRICS:
            raise ConfigError(f"{path}: {key}: {metric!r} is not a metric that trials "
                              f"report; {_closest(metric, REPORTED_METRICS)}")


def _closest(name: str, names) -> str:
    """The hint for a name that is not one of `names`: the closest, else all of them."""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"one of {', '.join(names)}"


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
                raise ConfigError(f"{path}: published.values.{name}.{metric}: not a reported "
                                  f"metric; {_closest(metric, COMPARABLE_METRICS)}")
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
