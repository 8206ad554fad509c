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
nothing was repeated over seeds. The statistics behind it are in `slotsweep.seeds`.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slotsweep.config import ConfigError
from slotsweep.files import atomic_write
from slotsweep.seeds import (
    finite,
    fmt,
    loss_type_tests,
    published_comparison,
    seed_groups,
    seeds_label,
)
from slotsweep.sweep_spec import COMPARABLE_METRICS, Sweep

log = logging.getLogger(__name__)

TEMPLATE = "sweep_report.html.j2"  # in slotsweep/templates, shipped in the wheel
METRICS = {"val/fg_ari": "FG-ARI", "val/mbo": "mBO", "val/stripe": "stripe score"}
# In the order of the paper's Table 2, each colour channel after the colour's mean.
PROBE_LABELS = {"probe/shape_acc": "shape (acc.)", "probe/color_r2": "colour R²",
                "probe/r_r2": "red R²", "probe/g_r2": "green R²", "probe/b_r2": "blue R²",
                "probe/scale_r2": "scale R²", "probe/x_r2": "x R²", "probe/y_r2": "y R²"}
# The final training value of each loss term (the paper's Sec. 4.3.1: "the model is
# easily able to bring the covariance loss to a value on the order of 1e-10").
LOSS_TERMS = {"train/recon": "recon loss", "train/covariance": "covariance term",
              "train/variance": "variance term", "train/cosine": "cosine term"}
# Plotted against these keys (when they vary) plus every numeric key of the search space.
AXES = {"loss.beta": "β", "model.slot_size": "slot size", "loss.proj_depth": "head depth"}
LOSS_COLOURS = {"none": "#4c72b0", "covloss": "#dd8452", "vicreg": "#55a868",
                "cosine": "#c44e52"}
HEAD_KEYS = ("loss.proj_depth", "loss.proj_dim", "loss.proj_norm")


@dataclass
class TrialView:
    """One trial run as the report sees it."""

    trial_id: str
    run_id: str
    name: str
    status: str  # finished | stopped early | failed | running | interrupted
    error: str | None
    config: dict[str, Any]  # the flattened resolved trial config (MLflow params)
    metrics: dict[str, float]  # last values
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pace: float | None = None  # steps per wall-clock second over its last evaluations

    @property
    def loss_type(self) -> str:
        return str(self.config.get("loss.type", "none"))

    def relevant(self, key: str) -> bool:
        """False where a key has no effect on this trial (β without a bottleneck loss,
        head depth for the cosine loss, which acts on the slots themselves)."""
        if key.startswith("loss.") and key != "loss.type" and self.loss_type == "none":
            return False
        return not (key in HEAD_KEYS and self.loss_type == "cosine")


def _label(metric: str) -> str:
    """How a table heads a metric: 'FG-ARI', 'shape (acc.)', 'x R²', 'probe/new' → 'new'."""
    return (METRICS.get(metric) or PROBE_LABELS.get(metric) or LOSS_TERMS.get(metric)
            or metric.removeprefix("probe/"))


def _dom_id(text: str) -> str:
    """An HTML id that is also a plain CSS selector (no dots or slashes)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def load_trials(client, experiment_id: str, instance: str | None) -> list[TrialView]:
    """Every trial run of the sweep instance (all instances if None), with histories."""
    from slotsweep.tracking import TAG_INSTANCE, TAG_ROLE, search_all

    query = f"tags.`{TAG_ROLE}` = 'trial'"
    if instance:
        query += f" and tags.`{TAG_INSTANCE}` = '{instance}'"
    runs = search_all(client, [experiment_id], query)
    trials = []
    for run in runs:
        tags = run.data.tags
        outcome = tags.get("slotsweep.outcome")
        status = outcome or ("running" if run.info.status == "RUNNING" else
                             {"FAILED": "failed", "KILLED": "stopped early"}.get(
                                 run.info.status, "finished"))
        view = TrialView(
            trial_id=tags.get("slotsweep.trial_id", run.info.run_id[:8]),
            run_id=run.info.run_id, name=tags.get("mlflow.runName", ""), status=status,
            error=tags.get("slotsweep.error"),
            config={k: _value(v) for k, v in run.data.params.items()},
            metrics=dict(run.data.metrics),
        )
        for key in (*METRICS, "train/loss"):
            if key in view.metrics:
                history = client.get_metric_history(run.info.run_id, key)
                view.history[key] = sorted({m.step: m.value for m in history}.items())
                if key == "val/fg_ari" and status == "running":
                    resumed = tags.get("slotsweep.resumed_at")
                    view.pace = wall_pace(history, resumed_at=int(resumed) if resumed else None)
        trials.append(view)
    return sorted(trials, key=lambda t: t.trial_id)


# ------------------------------------------------------------------------- figures


def _hover(t: TrialView, keys: list[str]) -> str:
    parts = [f"<b>{t.trial_id}</b> ({t.status})"]
    parts += [f"{k} = {fmt(t.config.get(k))}" for k in keys if t.relevant(k)]
    parts += [f"{label} = {fmt(t.metrics.get(m))}" for m, label in METRICS.items()]
    return "<br>".join(parts)


def _reference_lines(fig, metric: str, references: dict[str, dict[str, float]]) -> None:
    for name, scores in references.items():
        value = scores.get(metric)
        if finite(value):
            fig.add_hline(y=value, line_dash="dot", line_color="#999", line_width=1,
                          annotation_text=name, annotation_font_size=10,
                          annotation_font_color="#777")


def param_figures(trials: list[TrialView], keys: list[str], axes: list[str],
                  references: dict[str, dict[str, float]]) -> list[dict]:
    """Each metric against each varied axis, one colour per loss type. Trials on which
    the axis has no effect (β with no bottleneck loss) appear as a dashed level."""
    import plotly.graph_objects as go

    figures = []
    for metric, label in METRICS.items():
        for axis in axes:
            fig = go.Figure()
            for loss in sorted({t.loss_type for t in trials}):
                group = [t for t in trials
                         if t.loss_type == loss and finite(t.metrics.get(metric))]
                on = [t for t in group if t.relevant(axis)]
                off = [t for t in group if not t.relevant(axis)]
                colour = LOSS_COLOURS.get(loss, "#8172b2")
                if on:
                    fig.add_trace(go.Scatter(
                        x=[t.config.get(axis) for t in on], y=[t.metrics[metric] for t in on],
                        mode="markers", name=loss, legendgroup=loss,
                        marker={"size": 10, "color": colour, "opacity": 0.85,
                                "symbol": ["x" if t.status == "failed" else "circle"
                                           for t in on]},
                        text=[_hover(t, keys) for t in on], hoverinfo="text",
                        customdata=[t.trial_id for t in on],
                    ))
                if off:
                    mean = sum(t.metrics[metric] for t in off) / len(off)
                    fig.add_hline(y=mean, line_dash="dash", line_color=colour,
                                  annotation_text=f"{loss} ({axis} n/a, mean of {len(off)})",
                                  annotation_font_size=10, annotation_font_color=colour)
            _reference_lines(fig, metric, references)
            log = axis in ("loss.beta", "train.lr") or axis.endswith(("_lr", ".eps"))
            fig.update_layout(
                title=f"{label} vs {AXES.get(axis, axis)}", height=340,
                margin={"l": 50, "r": 20, "t": 40, "b": 40}, template="plotly_white",
                xaxis={"title": AXES.get(axis, axis), "type": "log" if log else "-"},
                yaxis={"title": label}, legend={"title": "loss"},
            )
            figures.append({"id": _dom_id(f"fig-{metric.split('/')[-1]}-{axis}"),
                            "metric": metric, "axis": axis, "spec": json.loads(fig.to_json())})
    return figures


def curve_figures(trials: list[TrialView], best: TrialView | None,
                  references: dict[str, dict[str, float]]) -> list[dict]:
    """FG-ARI and mBO against steps, one line per trial, the best trial in bold."""
    import plotly.graph_objects as go

    figures = []
    for metric in ("val/fg_ari", "val/mbo"):
        fig = go.Figure()
        shown: set[str] = set()
        for t in trials:
            points = t.history.get(metric)
            if not points:
                continue
            is_best = best is not None and t.trial_id == best.trial_id
            fig.add_trace(go.Scatter(
                x=[s for s, _ in points], y=[v for _, v in points], mode="lines+markers",
                name=f"{t.trial_id} (best)" if is_best else t.loss_type,
                legendgroup=t.loss_type, showlegend=is_best or t.loss_type not in shown,
                line={"color": LOSS_COLOURS.get(t.loss_type, "#8172b2"),
                      "width": 4 if is_best else 1.5},
                opacity=1.0 if is_best else 0.6, marker={"size": 4},
                text=f"{t.trial_id} {t.status}", hoverinfo="text+y",
            ))
            shown.add(t.loss_type)
        _reference_lines(fig, metric, references)
        fig.update_layout(title=f"{METRICS[metric]} during training", height=360,
                          margin={"l": 50, "r": 20, "t": 40, "b": 40}, template="plotly_white",
                          xaxis={"title": "step"}, yaxis={"title": METRICS[metric]})
        figures.append({"id": f"curve-{metric.split('/')[-1]}", "metric": metric,
                        "axis": "step", "spec": json.loads(fig.to_json())})
    return figures


# ------------------------------------------------------------- baselines and masks


def baseline_scores(sweep: Sweep) -> tuple[dict[str, dict[str, float]], bytes | None]:
    """Trivial baselines on the sweep's validation images, and the 2x2 block baseline's
    mask picture on the images the trials' pictures show. ({}, None) without the data."""
    import torch

    from slotsweep.baselines import block_masks, trivial_baselines
    from slotsweep.batches import Batches
    from slotsweep.data.shards import ShardError
    from slotsweep.pictures import mask_picture, to_uint8

    base = sweep.trial_config({})
    try:
        val = Batches.open(base.data.val, base.model, eval=True)
        batches = list(val.eval_batches(base.eval.batch_size, base.eval.max_images))
    except (ShardError, OSError, ValueError) as exc:
        log.warning("no baselines (%s)", exc)
        return {}, None
    if not batches or "segmentation" not in batches[0]:
        return {}, None
    seg = torch.cat([b["segmentation"].long() for b in batches])
    scores = {name: {"val/fg_ari": s["fg_ari"], "val/mbo": s["mbo"]}
              for name, s in trivial_baselines(seg).items() if name != "one slot"}
    picture = None
    n = min(base.eval.num_pictures, seg.shape[0])
    if n and "image" in batches[0]:
        from slotsweep.batches import to_model_inputs

        image = to_model_inputs({"image": batches[0]["image"][:n]}, base.model,
                                torch.device("cpu"))[1]
        masks = block_masks(2, *image.shape[-2:]).unsqueeze(0).expand(n, -1, -1, -1)
        picture = mask_picture(to_uint8(image), masks)
    return scores, picture


def best_masks(client, trial: TrialView) -> tuple[bytes | None, str | None]:
    """The latest mask picture logged for `trial`, and its artifact path."""
    try:
        steps = client.list_artifacts(trial.run_id, "masks")
    except Exception:  # noqa: BLE001 - an unreachable artifact store: no picture
        return None, None
    if not steps:
        return None, None
    latest = sorted(steps, key=lambda f: f.path)[-1].path
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(trial.run_id, latest, tmp))
        files = sorted(local.rglob("*.png")) if local.is_dir() else [local]
        return (files[0].read_bytes(), f"{latest}/{files[0].name}") if files else (None, None)


def seed_figure(groups: list[dict[str, Any]]) -> dict | None:
    """Mean ± 95% CI over seeds per setting, FG-ARI and mBO side by side."""
    import plotly.graph_objects as go

    shown = [g for g in groups if g["n"] >= 2]
    if not shown:
        return None
    fig = go.Figure()
    for metric, colour in (("val/fg_ari", "#4c72b0"), ("val/mbo", "#dd8452")):
        with_metric = [g for g in shown if metric in g["mean"]]
        fig.add_trace(go.Bar(
            x=[g["setting"] for g in with_metric], y=[g["mean"][metric] for g in with_metric],
            error_y={"type": "data", "array": [g["ci"][metric] or 0 for g in with_metric]},
            name=METRICS[metric], marker_color=colour))
    fig.update_layout(title="mean ± 95% CI over seeds", barmode="group", height=380,
                      template="plotly_white", margin={"l": 50, "r": 20, "t": 40, "b": 90})
    return {"id": "fig-seeds", "metric": "seeds", "axis": "seeds",
            "spec": json.loads(fig.to_json())}


# ------------------------------------------------------------------------- the page


def _png(data: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(data).decode() if data else None


def wall_pace(history, last: int = 4, resumed_at: int | None = None) -> float | None:
    """Steps per second of wall-clock time over a trial's last `last` intervals between
    logged points of one metric (MLflow timestamps; evaluation and checkpointing
    included), leaving out the interval across the latest resume (`resumed_at`, ms): the
    sweep was stopped in it. The median, so that an older pause does not count either."""
    points = sorted({m.step: m.timestamp for m in history}.items())
    intervals = [(a, b) for a, b in itertools.pairwise(points) if b[1] > a[1]
                 and not (resumed_at is not None and a[1] < resumed_at <= b[1])]
    rates = [(b[0] - a[0]) / ((b[1] - a[1]) / 1000) for a, b in intervals[-last:]]
    return statistics.median(rates) if rates else None


def step_progress(trials: list[TrialView], pending: int, base_steps: int) -> dict[str, Any]:
    """Training steps done so far and the most still to do (early stopping can only cut
    it): what is left of running and interrupted trials plus the pending trials' steps.

    While trials run, also how long that takes: the running trials go on at their own
    pace and, as each ends, the next waiting trial takes its place at their mean pace,
    as many at a time as run now. So a last trial that runs alone is not counted as fast
    as all of them together (a trial on one core of two does not speed up alone).
    """
    trained = 0
    running = []  # (steps left, pace or None)
    interrupted = []  # steps left; these resume before the pending trials start
    for t in trials:
        planned = int(t.config.get("train.steps", base_steps))
        reached = min(int(t.metrics.get("step", 0)), planned)
        trained += reached
        if t.status == "running":
            running.append((planned - reached, t.pace))
        elif t.status == "interrupted":
            interrupted.append(planned - reached)
    waiting = interrupted + [base_steps] * pending  # trials yet to (re)start, in order
    to_go = sum(left for left, _ in running) + sum(waiting)
    paces = [p for _, p in running if p]
    if not paces or not to_go:
        return {"trained": trained, "to_go": to_go, "pace": None, "hours": None}
    each = statistics.fmean(paces)
    ends = sorted(left / (p or each) for left, p in running)  # seconds until a slot frees
    for steps in waiting:
        heapq.heappush(ends, heapq.heappop(ends) + steps / each)
    return {"trained": trained, "to_go": to_go, "pace": each, "at_once": len(running),
            "hours": max(ends) / 3600}


def progress_text(steps: dict[str, Any]) -> str:
    """'N steps trained, at most M to go (about H h, K at a time at P steps/s each)'."""
    text = f"{steps['trained']:,} steps trained, at most {steps['to_go']:,} to go"
    if steps.get("hours"):
        text += (f" (about {steps['hours']:.1f} h, {steps['at_once']} at a time at "
                 f"{steps['pace']:.1f} steps/s each)")
    return text


def best_trial(trials: list[TrialView], metric: str, mode: str) -> TrialView | None:
    scored = [t for t in trials if finite(t.metrics.get(metric))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.metrics[metric])


def build_context(sweep: Sweep, trials: list[TrialView], *, client, experiment_id: str,
                  instance: str | None, tracking_uri: str, with_baselines: bool = True
                  ) -> dict[str, Any]:
    """Everything the template shows (JSON-serialisable but for the Plotly bundle)."""
    from slotsweep.baselines import against_baselines

    spec = sweep.spec
    keys = sweep.order()
    best = best_trial(trials, spec.search.metric, spec.search.mode)
    references, baseline_png = baseline_scores(sweep) if with_baselines else ({}, None)
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
    columns = [{"key": "trial", "label": "trial", "numeric": False},
               *({"key": k, "label": k, "numeric": all(
                   finite(t.config.get(k)) for t in trials if t.relevant(k))} for k in keys),
               *({"key": m, "label": label, "numeric": True} for m, label in METRICS.items()),
               *({"key": m, "label": _label(m), "numeric": True}
                 for m in (*probes, *terms)),
               {"key": "step", "label": "step", "numeric": True},
               {"key": "status", "label": "status", "numeric": False},
               {"key": "error", "label": "error", "numeric": False}]
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.trial_id, "run_id": t.run_id, "status": t.status,
                               "error": t.error or "",
                               "step": t.metrics.get("step")}
        row.update({k: t.config.get(k) if t.relevant(k) else None for k in keys})
        row.update({m: t.metrics.get(m) if finite(t.metrics.get(m)) else None
                    for m in shown})
        rows.append(row)
    best_png, best_path = best_masks(client, best) if best is not None else (None, None)
    groups = seed_groups(trials, keys, shown)
    repeated = any(g["size"] >= 2 for g in groups)  # the design repeats seeds
    seeds_fig = seed_figure(groups) if repeated else None
    return {
        "seed_groups": [
            {"setting": g["setting"], "loss": g["loss"], "n": g["n"], "trials": g["trials"],
             "seeds": seeds_label(g),
             "cells": {m: (g["mean"].get(m), g["ci"].get(m)) for m in shown}}
            for g in sorted(groups, key=lambda g: -(g["mean"].get(spec.search.metric) or 0))
        ] if repeated else [],
        "seed_metrics": {m: _label(m) for m in shown},
        "tests": loss_type_tests(groups, spec.search.metric, spec.search.mode) if repeated else [],
        "published": None if spec.published is None else {
            "source": spec.published.source,
            "rows": published_comparison(groups, spec.published, spec.search.metric,
                                         spec.search.mode),
            "labels": {m: _label(m) for m in COMPARABLE_METRICS}},
        "seeds_figure": seeds_fig,
        "sweep": sweep.name, "description": (spec.description or "").strip(),
        "instance": instance or "all instances", "tracking_uri": tracking_uri,
        "experiment_id": experiment_id, "metric": spec.search.metric, "mode": spec.search.mode,
        "counts": counts, "requested": requested, "steps": steps,
        "figures": [*param_figures(trials, keys, axes, references),
                    *curve_figures(trials, best, references)],
        "columns": columns, "rows": rows,
        "best": None if best is None else {
            "trial": best.trial_id, "run_id": best.run_id, "status": best.status,
            "params": {k: fmt(best.config.get(k)) for k in keys if best.relevant(k)},
            "metrics": {label: fmt(best.metrics.get(m)) for m, label in METRICS.items()},
            "masks": _png(best_png), "masks_path": best_path,
            "against": against_baselines(
                best.metrics, {name: {m: s[f"val/{m}"] for m in ("fg_ari", "mbo")}
                               for name, s in references.items()}) if references else None,
        },
        "baselines": {name: {METRICS[m]: fmt(v) for m, v in s.items()}
                      for name, s in references.items()},
        "baseline_masks": _png(baseline_png),
    }


def mean_pm(value: Any, ci: Any = None) -> str:
    """'0.466 ± 0.151'; tiny values (loss terms) in e-notation, the interval alike, as
    the HTML trials table writes them; '–' for no value."""
    if not finite(value):
        return "–"
    spec = ".3f" if value == 0 or abs(value) >= 0.01 else ".2e"
    return f"{value:{spec}} ± {ci:{spec}}" if finite(ci) else f"{value:{spec}}"


def seeds_needed(row: dict[str, Any]) -> str:
    """A published-comparison row's 'seeds needed' cell: the number, '> 100' where the
    search gave up, '–' where there was no spread to judge by."""
    if row.get("seeds_needed"):
        return str(row["seeds_needed"])
    return "> 100" if row.get("p") is not None else "–"


def markdown(context: dict[str, Any]) -> str:
    """The summary tables of `context` as Markdown."""
    counts = ", ".join(f"{n} {s}" for s, n in context["counts"].items() if n)
    steps = context.get("steps")
    if steps and steps["to_go"]:
        counts += "; " + progress_text(steps)
    lines = [f"Sweep `{context['sweep']}` ({context['instance']}): {counts}.", ""]
    if context["seed_groups"]:
        # One table each for the masks' scores, the probe and the loss terms: narrow
        # enough to read in a README or an issue.
        tables: dict[str, dict[str, str]] = {}
        for m, label in context["seed_metrics"].items():
            tables.setdefault(m.split("/")[0], {})[m] = label
        for metrics in tables.values():
            lines += ["| setting | loss | seeds | " + " | ".join(metrics.values()) + " |",
                      "|---|---|---|" + "---|" * len(metrics)]
            for g in context["seed_groups"]:
                lines.append(f"| {g['setting']} | {g['loss']} | {g['seeds']} | "
                             + " | ".join(mean_pm(*g["cells"][m]) for m in metrics) + " |")
            lines.append("")
        lines.append("Mean ± half-width of the 95% Student-t interval over the finished "
                     "seeds; unfinished trials are counted beside them, not averaged.")
    else:
        columns = [c for c in context["columns"]
                   if c["key"] not in ("trial", "step", "status", "error")]
        keys = [c["key"] for c in columns]
        lines += ["| trial | " + " | ".join(c["label"] for c in columns) + " | step | status |",
                  "|---|" + "---|" * (len(keys) + 2)]
        metric, sign = context["metric"], (-1 if context["mode"] == "max" else 1)
        ranked = sorted(context["rows"], key=lambda r: (r.get(metric) is None,
                                                        sign * (r.get(metric) or 0)))
        for r in ranked:
            values = [mean_pm(r.get(k)) if isinstance(r.get(k), float) else fmt(r.get(k))
                      for k in keys]
            lines.append(f"| {r['trial']} | " + " | ".join(values)
                         + f" | {fmt(r['step'])} | {r['status']} |")
    if context["tests"]:
        lines += ["", f"| best setting of | vs | difference in {context['metric']} | seeds | "
                  "p (Welch) |", "|---|---|---|---|---|"]
        for t in context["tests"]:
            p = "–" if t["p"] is None else f"{t['p']:.3g}"
            lines.append(f"| {t['a']} | {t['b']} | {t['diff']:+.3f} | {t['n']} | {p} |")
    if context.get("published"):
        pub = context["published"]
        lines += ["", f"Against the published values ({pub['source']}): each difference "
                  "between two variants there, and here (Welch's t-test over the finished "
                  "seeds; 'agrees'/'disagrees' at p < 0.05). 'Seeds needed': seeds per "
                  "variant for an 80% chance to resolve the published difference, were it "
                  "the true one here, at this sweep's spread over seeds.", "",
                  "| metric | variants | published | here | seeds | p (Welch) | verdict | "
                  "seeds needed |", "|---|---|---|---|---|---|---|---|"]
        for r in pub["rows"]:
            here = f"{mean_pm(r['mean_a'], r['ci_a'])} vs {mean_pm(r['mean_b'], r['ci_b'])}"
            p = "–" if r["p"] is None else f"{r['p']:.3g}"
            lines.append(f"| {pub['labels'].get(r['metric'], r['metric'])} | {r['a']} vs "
                         f"{r['b']} | {r['paper_a']:.3f} vs {r['paper_b']:.3f} | {here} | "
                         f"{r['n']} | {p} | {r['verdict']} | {seeds_needed(r)} |")
    if context["baselines"]:
        labels = list(next(iter(context["baselines"].values())))
        lines += ["", "| trivial baseline | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for name, scores in context["baselines"].items():
            lines.append(f"| {name} | " + " | ".join(mean_pm(float(v)) for v in scores.values())
                         + " |")
    best = context.get("best")
    if best and best.get("against"):
        lines += ["", f"Best trial `{best['trial']}` {best['against']}."]
    return "\n".join(lines) + "\n"


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
    from mlflow.tracking import MlflowClient

    from slotsweep.sweep import instance_dirs
    from slotsweep.tracking import check_tracking_server, default_tracking_uri

    sweep_dir = Path(storage or sweep.spec.storage).resolve() / sweep.name
    uri = tracking_uri or sweep.spec.tracking.uri or default_tracking_uri(sweep_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{sweep.name}: no MLflow store at {uri}; run the sweep first "
                          f"(python -m slotsweep.run {sweep.name}) or pass --tracking-uri")
    check_tracking_server(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(sweep.spec.tracking.experiment or sweep.name)
    if experiment is None:
        raise ConfigError(f"{sweep.name}: {uri} has no experiment "
                          f"{sweep.spec.tracking.experiment or sweep.name!r}")
    known = [d.name for d in instance_dirs(sweep_dir)]
    if instance is None and not all_instances:
        instance = known[-1] if known else None
    tag = f"{sweep.name}/{instance}" if instance else None
    trials = load_trials(client, experiment.experiment_id, tag)
    if instance and not trials and instance not in known:  # a typo, not a sweep starting
        raise ConfigError(f"{sweep.name}: no instance {instance!r} in {sweep_dir} or {uri} "
                          f"(instances here: {', '.join(known) or 'none'})")
    context = build_context(sweep, trials, client=client,
                            experiment_id=experiment.experiment_id, instance=tag,
                            tracking_uri=uri, with_baselines=with_baselines)
    return context, len(trials)


def write_page(path: Path, text: str) -> None:
    """Atomically: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)

