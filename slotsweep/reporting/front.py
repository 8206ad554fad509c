"""The report's Pareto front of a multi-objective sweep: the trade-off figure (first
objective against the second, coloured by the third or by the stripe score, the trivial
baselines as points, the front's trials ringed), each front trial with its masks, and the
hypervolume against the best trivial baseline.

Computed from what MLflow holds (the trials' last values), with the same functions
(`slotsweep.metrics.pareto`) that the run's summary and the MLflow tags use.
"""

from __future__ import annotations

import json
from typing import Any

from slotsweep.metrics.pareto import hypervolume, ranked_front, reference_point, scored
from slotsweep.reporting.figures import hover_text
from slotsweep.reporting.trials import TrialView, fmt, metric_label, png_uri

ON_FRONT = ("finished", "stopped early")  # a failed or unfinished trial is not a result


def front_trials(trials: list[TrialView], directions: dict[str, str]) -> list[TrialView]:
    """The non-dominated trials among those that ended, best on the first objective
    first."""
    ended = {t.trial_id: t for t in trials if t.status in ON_FRONT}
    return [ended[k] for k in ranked_front({k: t.metrics for k, t in ended.items()},
                                           directions)]


def front_section(trials: list[TrialView], directions: dict[str, str], keys: list[str],
                  references: dict[str, dict[str, float]], client,
                  given: dict[str, float] | None = None) -> dict[str, Any]:
    """What the page's front section shows; `references` are the trivial baselines as
    report metric names ({"val/fg_ari": ..}), `given` the sweep file's reference point,
    `client` reads each front trial's masks."""
    from slotsweep.sweep.tracking import latest_picture

    front = front_trials(trials, directions)
    found = reference_point(references, directions, given)
    volume = (hypervolume([t.metrics for t in front], found[1], directions)
              if found is not None else None)
    rows = []
    for t in front:
        masks, masks_path = latest_picture(client, t.run_id)
        rows.append({
            "trial": t.trial_id, "run_id": t.run_id, "status": t.status,
            "anchor": f"front-{t.trial_id}",
            "scores": {metric_label(m): fmt(t.metrics[m]) for m in directions},
            "params": {k: fmt(t.config.get(k)) for k in keys if t.relevant(k)},
            "masks": png_uri(masks), "masks_path": masks_path})
    return {
        "objectives": [{"metric": m, "label": metric_label(m), "mode": d}
                       for m, d in directions.items()],
        "trials": rows, "hypervolume": volume,
        "reference": None if found is None else {
            "name": found[0], "scores": {metric_label(m): fmt(found[1][m]) for m in directions}},
        "scored": sum(t.status in ON_FRONT and scored(t.metrics, directions) for t in trials),
        "figure": front_figure(trials, front, directions, keys, references),
    }


def front_figure(trials: list[TrialView], front: list[TrialView], directions: dict[str, str],
                 keys: list[str], references: dict[str, dict[str, float]]) -> dict:
    """Every ended trial in the plane of the first two objectives (one objective: against
    mBO), coloured by the third (or the stripe score), the front ringed, baselines as ×."""
    import plotly.graph_objects as go

    metrics = list(directions)
    x = metrics[0]
    y = metrics[1] if len(metrics) > 1 else "val/mbo"
    colour = metrics[2] if len(metrics) > 2 else "val/stripe"
    shown = [t for t in trials if t.status in ON_FRONT and scored(t.metrics, (x, y))]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[t.metrics[x] for t in shown], y=[t.metrics[y] for t in shown], mode="markers",
        name="trials", customdata=[t.trial_id for t in shown],
        text=[hover_text(t, keys) for t in shown], hoverinfo="text",
        marker={"size": 11, "color": [t.metrics.get(colour) for t in shown],
                "colorscale": "Viridis", "reversescale": directions.get(colour) == "min",
                "showscale": True, "colorbar": {"title": metric_label(colour)}},
    ))
    fig.add_trace(go.Scatter(
        x=[t.metrics[x] for t in front], y=[t.metrics[y] for t in front], mode="markers",
        name="Pareto front", customdata=[t.trial_id for t in front],
        text=[f"{t.trial_id}: on the front (click for its masks)" for t in front],
        hoverinfo="text", marker={"size": 20, "symbol": "circle-open",
                                  "line": {"width": 2.5, "color": "#c44e52"}},
    ))
    placed = {n: s for n, s in references.items() if scored(s, (x, y))}
    if placed:
        fig.add_trace(go.Scatter(
            x=[s[x] for s in placed.values()], y=[s[y] for s in placed.values()],
            mode="markers+text", name="trivial baselines", text=list(placed),
            textposition="top center", textfont={"size": 10, "color": "#777"},
            marker={"size": 10, "symbol": "x", "color": "#999"}, hoverinfo="text+x+y",
        ))
    fig.update_layout(
        title=f"{metric_label(x)} vs {metric_label(y)}, coloured by {metric_label(colour)}",
        height=460, template="plotly_white", margin={"l": 50, "r": 20, "t": 40, "b": 40},
        xaxis={"title": f"{metric_label(x)} ({directions.get(x, 'max')})"},
        yaxis={"title": f"{metric_label(y)} ({directions.get(y, 'max')})"},
        legend={"orientation": "h", "y": -0.15},
    )
    return {"id": "fig-front", "metric": "front", "axis": "front",
            "spec": json.loads(fig.to_json())}
