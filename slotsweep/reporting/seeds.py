"""Statistics over seeds for the sweep report: trials that differ only in their seed are
grouped, each group's metrics get a mean and a Student-t 95% interval, the loss types'
best settings are compared by Welch's t-test, and a sweep file's published values are
checked against the same differences here (with the seeds a difference would need).

Pure functions of trial views (`slotsweep.reporting.trials.TrialView`: `config`, `metrics`,
`status`, `loss_type`, `relevant(key)`) and numbers; scipy is imported where it is used.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from slotsweep.reporting.trials import TrialView, finite, fmt


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None for n < 2)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / n**0.5


def seed_groups(trials: list[TrialView], keys: list[str],
                metrics: list[str]) -> list[dict[str, Any]]:
    """Trials that differ only in their seed, with mean ± 95% CI of each metric over the
    finished ones. A running, failed or early-stopped trial stands at another step (or at
    none), so it is counted apart (`unfinished`) and left out of the statistics: a
    half-done seeded sweep compares like with like."""
    setting = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[TrialView]] = {}
    for t in trials:
        ident = tuple((k, t.config.get(k)) for k in setting if t.relevant(k))
        groups.setdefault(ident, []).append(t)
    rows = []
    for ident, members in groups.items():
        done = [t for t in members if t.status == "finished"]
        unfinished = Counter(t.status for t in members if t.status != "finished")
        row: dict[str, Any] = {
            "setting": ", ".join(f"{k}={fmt(v)}" for k, v in ident) or "base",
            "params": dict(ident), "loss": members[0].loss_type, "n": len(done),
            "size": len(members),
            "unfinished": dict(unfinished),
            "trials": sorted(t.trial_id for t in members), "values": {}, "mean": {},
            "ci": {}}
        for m in metrics:
            values = [t.metrics[m] for t in done if finite(t.metrics.get(m))]
            if values:
                row["values"][m] = values
                row["mean"][m], row["ci"][m] = mean_ci(values)
        rows.append(row)
    return rows


def seeds_label(group: dict[str, Any]) -> str:
    """'3', or '1 (+1 running, +1 failed)' while some of a setting's seeds are not done."""
    extra = ", ".join(f"+{n} {status}" for status, n in sorted(group["unfinished"].items()))
    return f"{group['n']} ({extra})" if extra else str(group["n"])


def welch_p(xs: list[float], ys: list[float]) -> float | None:
    """Two-sided p of Welch's t-test; None where it is undefined (no spread on either
    side, where scipy would warn and return NaN)."""
    from scipy import stats

    if len(set(xs)) < 2 and len(set(ys)) < 2:
        return None
    p = float(stats.ttest_ind(xs, ys, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def seeds_for_power(diff: float, xs: list[float], ys: list[float], *, power: float = 0.8,
                    alpha: float = 0.05, limit: int = 100) -> int | None:
    """Seeds per side that Welch's two-sided test needs to find a true difference `diff`
    with probability `power`, at the spread of `xs` and `ys` (sample variances): the
    smallest n (2..limit) by the noncentral t distribution, None above `limit` or when
    neither side varies."""
    from scipy import stats

    vx, vy = statistics.variance(xs), statistics.variance(ys)
    var = vx + vy
    if not (math.isfinite(var) and var > 0) or diff == 0:
        return None
    quartic = vx ** 2 + vy ** 2
    for n in range(2, limit + 1):
        df = var ** 2 / (quartic / (n - 1))  # Welch-Satterthwaite, n seeds per side
        nc = abs(diff) / math.sqrt(var / n)
        t = stats.t.ppf(1 - alpha / 2, df)
        # The far tail (a significant result of the wrong sign) can come back NaN from
        # scipy's noncentral t when it is negligible (seen at df 1.5, nc 20 and df 4,
        # nc 30, in different scipy releases): count it as the 0 it is.
        wrong_sign = stats.nct.cdf(-t, df, nc)
        if stats.nct.sf(t, df, nc) + (wrong_sign if math.isfinite(wrong_sign) else 0.0) >= power:
            return n
    return None


def loss_type_tests(groups: list[dict[str, Any]], metric: str, mode: str) -> list[dict]:
    """Each loss type's best setting (by mean over seeds) against every other's:
    Welch's t-test on the per-seed values (two-sided; needs 2+ seeds on both sides)."""
    best: dict[str, dict] = {}
    for g in groups:
        if len(g["values"].get(metric, [])) < 2:
            continue
        current = best.get(g["loss"])
        better = (g["mean"][metric] > current["mean"][metric] if mode == "max"
                  else g["mean"][metric] < current["mean"][metric]) if current else True
        if better:
            best[g["loss"]] = g
    out = []
    names = sorted(best)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = best[a]["values"][metric], best[b]["values"][metric]
            out.append({"a": f"{a} ({best[a]['setting']})", "b": f"{b} ({best[b]['setting']})",
                        "diff": best[a]["mean"][metric] - best[b]["mean"][metric],
                        "p": welch_p(x, y), "n": f"{len(x)} vs {len(y)}"})
    return out


def published_comparison(groups: list[dict[str, Any]], published, metric: str,
                         mode: str, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Each difference between two variants that the published values give, next to the
    same difference here (Welch's t-test over finished seeds): 'agrees' or 'disagrees'
    when p < alpha, 'not resolved' otherwise, 'waiting' below 2 seeds on either side.
    A variant swept over other settings too is represented by its best setting."""
    def pick(variant: str) -> dict[str, Any] | None:
        mine = [g for g in groups if g["params"].get("variant") == variant]
        scored = [g for g in mine if metric in g["mean"]]
        if not scored:
            return mine[0] if mine else None
        choose = max if mode == "max" else min
        return choose(scored, key=lambda g: g["mean"][metric])

    values = published.values
    names = list(values)
    rows = []
    for m in dict.fromkeys(k for v in values.values() for k in v):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if m not in values[a] or m not in values[b]:
                    continue
                ga, gb = pick(a), pick(b)
                xs = (ga or {}).get("values", {}).get(m, [])
                ys = (gb or {}).get("values", {}).get(m, [])
                row = {"metric": m, "a": a, "b": b, "paper_a": values[a][m],
                       "paper_b": values[b][m], "paper_diff": values[a][m] - values[b][m],
                       "n": f"{len(xs)} vs {len(ys)}", "mean_a": None, "mean_b": None,
                       "ci_a": None, "ci_b": None, "diff": None, "p": None,
                       "seeds_needed": None}
                if xs:
                    assert ga is not None  # xs is empty without a group
                    row["mean_a"], row["ci_a"] = ga["mean"][m], ga["ci"][m]
                if ys:
                    assert gb is not None
                    row["mean_b"], row["ci_b"] = gb["mean"][m], gb["ci"][m]
                if len(xs) < 2 or len(ys) < 2:
                    row["verdict"] = "waiting for seeds"
                    rows.append(row)
                    continue
                row["diff"] = row["mean_a"] - row["mean_b"]
                row["p"] = welch_p(xs, ys)
                row["seeds_needed"] = seeds_for_power(row["paper_diff"], xs, ys)
                same = row["diff"] * row["paper_diff"] > 0
                if row["p"] is not None and row["p"] < alpha:
                    row["verdict"] = "agrees" if same else "disagrees"
                else:
                    row["verdict"] = ("not resolved (same direction)" if same
                                      else "not resolved (other direction)")
                rows.append(row)
    return rows
