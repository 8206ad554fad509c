"""The trials of a sweep as the report sees them, read back from MLflow through
`slotsweep.sweep.tracking`, with the few numbers every part of the report shares: the
best trial, the steps trained and to go, a trial's pace."""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

METRICS = {"val/fg_ari": "FG-ARI", "val/mbo": "mBO", "val/stripe": "stripe score"}


# In the order of the paper's Table 2, each colour channel after the colour's mean.
PROBE_LABELS = {"probe/shape_acc": "shape (acc.)", "probe/color_r2": "colour R²",
                "probe/r_r2": "red R²", "probe/g_r2": "green R²", "probe/b_r2": "blue R²",
                "probe/scale_r2": "scale R²", "probe/x_r2": "x R²", "probe/y_r2": "y R²"}


# The final training value of each loss term (the paper's Sec. 4.3.1: "the model is
# easily able to bring the covariance loss to a value on the order of 1e-10").
LOSS_TERMS = {"train/recon": "recon loss", "train/covariance": "covariance term",
              "train/variance": "variance term", "train/cosine": "cosine term"}


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


def png_uri(data: bytes | None) -> str | None:
    """A PNG as a data: URI (the page loads nothing from elsewhere); None for none."""
    import base64

    return "data:image/png;base64," + base64.b64encode(data).decode() if data else None


def metric_label(metric: str) -> str:
    """How a table heads a metric: 'FG-ARI', 'shape (acc.)', 'x R²', 'probe/new' → 'new'."""
    return (METRICS.get(metric) or PROBE_LABELS.get(metric) or LOSS_TERMS.get(metric)
            or metric.removeprefix("probe/"))


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def load_trials(client, experiment_id: str, instance: str | None) -> list[TrialView]:
    """Every trial run of the sweep instance (all instances if None), with histories."""
    from slotsweep.sweep.tracking import read_trial_runs

    trials = []
    for run in read_trial_runs(client, experiment_id, instance,
                               histories=(*METRICS, "train/loss")):
        view = TrialView(
            trial_id=run.trial_id, run_id=run.run_id, name=run.name, status=run.status,
            error=run.error, config={k: _value(v) for k, v in run.params.items()},
            metrics=run.metrics,
            history={key: sorted({m.step: m.value for m in points}.items())
                     for key, points in run.history.items()})
        if run.status == "running" and "val/fg_ari" in run.history:
            view.pace = wall_pace(run.history["val/fg_ari"], resumed_at=run.resumed_at)
        trials.append(view)
    return sorted(trials, key=lambda t: t.trial_id)


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


def fmt(v: Any) -> str:
    """A parameter value as tables print it: floats to 3 significant digits, None as '-'."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)


def finite(v: Any) -> bool:
    """A real, finite number (not a bool, NaN or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
