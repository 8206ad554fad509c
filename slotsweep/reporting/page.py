"""The sweep dashboard: one self-contained HTML page per sweep (CLI: slotsweep/report.py).

It reads the sweep's trial runs from MLflow (the same store `slotsweep.run` writes) and
renders `slotsweep/templates/sweep_report.html.j2`: FG-ARI, mBO and stripe score against β per
loss type and against slot size and head depth, the learning curves, the best trial's
masks next to the block baseline's, a table of every trial sortable by any column
(scores, probe, the last value of each loss term), and the sweep's progress (trials,
steps, an estimate of the hours left). Plotly's JavaScript is inlined, so the page opens
offline.

    python -m slotsweep.report quickstart                  # → dashboards/reports/quickstart.html
    python -m slotsweep.report coco_beta_sweep --out /tmp/coco.html
    python -m slotsweep.report paper_small --markdown results.md   # + a Markdown summary
    python -m slotsweep.report paper_small --png page.png  # + a picture of the page

The Markdown summary (for a README or an issue) is the seeded table (mean ± 95% CI per
setting, in three tables: mask scores, probe, loss terms), the loss-type tests, the
comparison with the sweep file's `published` values (with the seeds each difference
would need) and the trivial baselines, or the trials ranked by the sweep metric when
nothing was repeated over seeds. The statistics behind it are in `slotsweep.reporting.seeds`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from slotsweep.config_io import ConfigError
from slotsweep.files import atomic_write
from slotsweep.reporting.figures import AXES, curve_figures, param_figures, seed_figure
from slotsweep.reporting.front import front_section
from slotsweep.reporting.markdown import mean_pm, seeds_needed
from slotsweep.reporting.seeds import (
    loss_type_tests,
    published_comparison,
    seed_groups,
    seeds_label,
)
from slotsweep.reporting.trials import (
    LOSS_TERMS,
    METRICS,
    PROBE_LABELS,
    TrialView,
    best_trial,
    finite,
    fmt,
    load_trials,
    metric_label,
    png_uri,
    progress_text,
    step_progress,
)
from slotsweep.sweep.spec import COMPARABLE_METRICS, Sweep

log = logging.getLogger(__name__)

TEMPLATE = "sweep_report.html.j2"  # in slotsweep/templates, shipped in the wheel


def baseline_scores(sweep: Sweep) -> tuple[dict[str, dict[str, float]], bytes | None]:
    """The trivial baselines on the sweep's validation images (FG-ARI, mBO and stripe
    score, as the report's metric names), and the 2x2 block baseline's mask picture on
    the images the trials' pictures show. ({}, None) without the data."""
    from slotsweep.data.format import ShardError
    from slotsweep.metrics.baselines import block_masks, on_validation_set
    from slotsweep.training.pictures import mask_picture, to_uint8

    try:
        found = on_validation_set(sweep.trial_config({}))
    except (ShardError, OSError, ValueError) as exc:
        log.warning("no baselines (%s)", exc)
        return {}, None
    if found is None:
        return {}, None
    scores = {name: {f"val/{m}": v for m, v in s.items()} for name, s in found.scores.items()}
    picture = None
    if found.images is not None:
        n, _, height, width = found.images.shape
        masks = block_masks(2, height, width).unsqueeze(0).expand(n, -1, -1, -1)
        picture = mask_picture(to_uint8(found.images), masks)
    return scores, picture


def build_context(sweep: Sweep, trials: list[TrialView], *, client, experiment_id: str,
                  instance: str | None, tracking_uri: str, with_baselines: bool = True
                  ) -> dict[str, Any]:
    """Everything the template shows (JSON-serialisable but for the Plotly bundle)."""
    spec = sweep.spec
    keys = sweep.order()
    best = best_trial(trials, spec.search.metric, spec.search.mode)
    baselines, baseline_png = baseline_scores(sweep) if with_baselines else ({}, None)
    # One slot (FG-ARI 0 by definition) only clutters the plots; the front's reference
    # point is chosen from every baseline, as in the run's summary.
    references = {name: s for name, s in baselines.items() if name != "one slot"}
    numeric = [k for k in keys if all(finite(t.config.get(k)) for t in trials if t.relevant(k))]
    axes = [a for a in dict.fromkeys([*AXES, *numeric])
            if len({t.config.get(a) for t in trials if t.relevant(a)}) > 1]
    counts = {s: sum(t.status == s for t in trials)
              for s in ("finished", "stopped early", "failed", "running", "interrupted")}
    requested = max(sweep.num_trials(), len(trials))
    counts["pending"] = requested - len(trials)
    steps = step_progress(trials, counts["pending"], int(sweep.base_flat()["train.steps"]))
    order = list(PROBE_LABELS)
    probes = sorted({m for t in trials for m in t.metrics if m.startswith("probe/")},
                    key=lambda m: (order.index(m) if m in order else len(order), m))
    terms = [m for m in LOSS_TERMS if any(finite(t.metrics.get(m)) for t in trials)]
    shown = [*METRICS, *probes, *terms]  # every value the tables show per trial or setting
    columns, rows = _trials_table(trials, keys, [*probes, *terms], shown)
    return {
        **_seeds_section(sweep, trials, keys, shown),
        "sweep": sweep.name, "description": (spec.description or "").strip(),
        "instance": instance or "all instances", "tracking_uri": tracking_uri,
        "experiment_id": experiment_id, "metric": spec.search.metric, "mode": spec.search.mode,
        "counts": counts, "requested": requested, "steps": steps,
        "figures": [*param_figures(trials, keys, axes, references),
                    *curve_figures(trials, best, references)],
        "columns": columns, "rows": rows,
        "best": _best_section(best, keys, client, references),
        "front": front_section(trials, spec.search.directions(), keys, baselines, client,
                               spec.search.reference_point)
        if spec.search.multi_objective else None,
        "baselines": {name: {METRICS[m]: fmt(v) for m, v in s.items()}
                      for name, s in references.items()},
        "baseline_masks": png_uri(baseline_png),
    }


def _trials_table(trials: list[TrialView], keys: list[str], extra: list[str],
                  shown: list[str]) -> tuple[list[dict], list[dict]]:
    """The sortable table of every trial: its columns and its rows."""
    columns = [{"key": "trial", "label": "trial", "numeric": False},
               *({"key": k, "label": k, "numeric": all(
                   finite(t.config.get(k)) for t in trials if t.relevant(k))} for k in keys),
               *({"key": m, "label": label, "numeric": True} for m, label in METRICS.items()),
               *({"key": m, "label": metric_label(m), "numeric": True} for m in extra),
               {"key": "step", "label": "step", "numeric": True},
               {"key": "status", "label": "status", "numeric": False},
               {"key": "error", "label": "error", "numeric": False}]
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.trial_id, "run_id": t.run_id, "status": t.status,
                               "error": t.error or "", "step": t.metrics.get("step")}
        row.update({k: t.config.get(k) if t.relevant(k) else None for k in keys})
        row.update({m: t.metrics.get(m) if finite(t.metrics.get(m)) else None
                    for m in shown})
        rows.append(row)
    return columns, rows


def _seeds_section(sweep: Sweep, trials: list[TrialView], keys: list[str],
                   shown: list[str]) -> dict[str, Any]:
    """Means over seeds per setting, the loss-type tests and the published comparison
    (empty when no setting was repeated over seeds)."""
    spec = sweep.spec
    groups = seed_groups(trials, keys, shown)
    repeated = any(g["size"] >= 2 for g in groups)  # the design repeats seeds
    return {
        "seed_groups": [
            {"setting": g["setting"], "loss": g["loss"], "n": g["n"], "trials": g["trials"],
             "seeds": seeds_label(g),
             "cells": {m: (g["mean"].get(m), g["ci"].get(m)) for m in shown}}
            for g in sorted(groups, key=lambda g: -(g["mean"].get(spec.search.metric) or 0))
        ] if repeated else [],
        "seed_metrics": {m: metric_label(m) for m in shown},
        "tests": loss_type_tests(groups, spec.search.metric, spec.search.mode) if repeated else [],
        "published": None if spec.published is None else {
            "source": spec.published.source,
            "rows": published_comparison(groups, spec.published, spec.search.metric,
                                         spec.search.mode),
            "labels": {m: metric_label(m) for m in COMPARABLE_METRICS}},
        "seeds_figure": seed_figure(groups) if repeated else None,
    }


def _best_section(best: TrialView | None, keys: list[str], client,
                  references: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """The best trial: its parameters, scores, latest masks and the baselines' verdict."""
    from slotsweep.metrics.baselines import against_baselines
    from slotsweep.sweep.tracking import latest_picture

    if best is None:
        return None
    masks, masks_path = latest_picture(client, best.run_id)
    return {
        "trial": best.trial_id, "run_id": best.run_id, "status": best.status,
        "params": {k: fmt(best.config.get(k)) for k in keys if best.relevant(k)},
        "metrics": {label: fmt(best.metrics.get(m)) for m, label in METRICS.items()},
        "masks": png_uri(masks), "masks_path": masks_path,
        "against": against_baselines(
            best.metrics, {name: {m: s[f"val/{m}"] for m in ("fg_ari", "mbo")}
                           for name, s in references.items()}) if references else None,
    }


def render(context: dict[str, Any]) -> str:
    import jinja2
    import plotly.offline

    env = jinja2.Environment(loader=jinja2.PackageLoader("slotsweep", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "allow_nan": False}
    env.filters["mean_pm"] = lambda cell: mean_pm(*cell)
    env.filters["seeds_needed"] = seeds_needed
    env.filters["progress_text"] = progress_text
    page = env.get_template(TEMPLATE)
    data = _clean(context)
    return page.render(data=data, plotly_js=plotly.offline.get_plotlyjs(), **data)


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def report(sweep: Sweep, *, storage: str | None = None, tracking_uri: str | None = None,
           instance: str | None = None, all_instances: bool = False,
           with_baselines: bool = True) -> tuple[dict[str, Any], int]:
    """What the page shows for `sweep`'s latest instance (or `instance`), and its trial
    count: `render` makes the HTML of it, `markdown` the summary tables."""
    from slotsweep.sweep.driver import instance_dirs, sweep_location, tracking_default
    from slotsweep.sweep.tracking import open_experiment

    sweep_dir = sweep_location(sweep, storage)
    uri = tracking_default(sweep, sweep_dir, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{sweep.name}: no MLflow store at {uri}; run the sweep first "
                          f"(python -m slotsweep.run {sweep.name}) or pass --tracking-uri")
    name = sweep.spec.tracking.experiment or sweep.name
    client, experiment_id = open_experiment(uri, name)
    if experiment_id is None:
        raise ConfigError(f"{sweep.name}: {uri} has no experiment {name!r}")
    known = [d.name for d in instance_dirs(sweep_dir)]
    if instance is None and not all_instances:
        instance = known[-1] if known else None
    tag = f"{sweep.name}/{instance}" if instance else None
    trials = load_trials(client, experiment_id, tag)
    if instance and not trials and instance not in known:  # a typo, not a sweep starting
        raise ConfigError(f"{sweep.name}: no instance {instance!r} in {sweep_dir} or {uri} "
                          f"(instances here: {', '.join(known) or 'none'})")
    context = build_context(sweep, trials, client=client,
                            experiment_id=experiment_id, instance=tag,
                            tracking_uri=uri, with_baselines=with_baselines)
    return context, len(trials)


def write_page(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
