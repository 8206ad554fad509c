"""The report's Plotly figures: each score against each searched parameter (per loss
type, with the trivial baselines as reference lines), the learning curves, and the
means over seeds."""

from __future__ import annotations

import json
from typing import Any

from slotsweep.reporting.trials import (
    METRICS,
    TrialView,
    finite,
    fmt,
)

# Plotted against these keys (when they vary) plus every numeric key of the search space.
AXES = {"loss.beta": "β", "model.slot_size": "slot size", "loss.proj_depth": "head depth"}
LOSS_COLOURS = {"none": "#4c72b0", "covloss": "#dd8452", "vicreg": "#55a868",
                "cosine": "#c44e52"}


def _dom_id(text: str) -> str:
    """An HTML id that is also a plain CSS selector (no dots or slashes)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def hover_text(t: TrialView, keys: list[str]) -> str:
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
                        text=[hover_text(t, keys) for t in on], hoverinfo="text",
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
