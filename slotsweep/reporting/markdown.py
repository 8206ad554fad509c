"""The report's Markdown summary (for a README or an issue): the seeded table, the
loss-type tests, the comparison with published values, the baselines, or the ranked
trials when nothing was repeated over seeds."""

from __future__ import annotations

from typing import Any

from slotsweep.reporting.trials import (
    finite,
    fmt,
    progress_text,
)


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
    lines += _seeded(context) if context["seed_groups"] else _ranked(context)
    lines += _front(context) + _tests(context) + _published(context) + _baselines(context)
    best = context.get("best")
    if best and best.get("against"):
        lines += ["", f"Best trial `{best['trial']}` {best['against']}."]
    return "\n".join(lines) + "\n"


def _seeded(context: dict[str, Any]) -> list[str]:
    """One table each for the masks' scores, the probe and the loss terms (narrow enough
    to read in a README or an issue): mean ± interval per setting."""
    tables: dict[str, dict[str, str]] = {}
    for m, label in context["seed_metrics"].items():
        tables.setdefault(m.split("/")[0], {})[m] = label
    lines = []
    for metrics in tables.values():
        lines += ["| setting | loss | seeds | " + " | ".join(metrics.values()) + " |",
                  "|---|---|---|" + "---|" * len(metrics)]
        for g in context["seed_groups"]:
            lines.append(f"| {g['setting']} | {g['loss']} | {g['seeds']} | "
                         + " | ".join(mean_pm(*g["cells"][m]) for m in metrics) + " |")
        lines.append("")
    return lines + ["Mean ± half-width of the 95% Student-t interval over the finished "
                    "seeds; unfinished trials are counted beside them, not averaged."]


def _ranked(context: dict[str, Any]) -> list[str]:
    """Nothing repeated over seeds: every trial, ranked by the sweep's metric."""
    columns = [c for c in context["columns"]
               if c["key"] not in ("trial", "step", "status", "error")]
    keys = [c["key"] for c in columns]
    lines = ["| trial | " + " | ".join(c["label"] for c in columns) + " | step | status |",
             "|---|" + "---|" * (len(keys) + 2)]
    metric, sign = context["metric"], (-1 if context["mode"] == "max" else 1)
    ranked = sorted(context["rows"], key=lambda r: (r.get(metric) is None,
                                                    sign * (r.get(metric) or 0)))
    for r in ranked:
        values = [mean_pm(r.get(k)) if isinstance(r.get(k), float) else fmt(r.get(k))
                  for k in keys]
        lines.append(f"| {r['trial']} | " + " | ".join(values)
                     + f" | {fmt(r['step'])} | {r['status']} |")
    return lines


def _front(context: dict[str, Any]) -> list[str]:
    """A multi-objective sweep's Pareto front and its hypervolume."""
    front = context.get("front")
    if not front:
        return []
    labels = [f"{o['label']} ({o['mode']})" for o in front["objectives"]]
    lines = ["", f"Pareto front: {len(front['trials'])} of {front['scored']} scored trials.",
             "", "| trial | " + " | ".join(labels) + " | settings |",
             "|---|" + "---|" * (len(labels) + 1)]
    for t in front["trials"]:
        settings = ", ".join(f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"| {t['trial']} | " + " | ".join(t["scores"].values()) + f" | {settings} |")
    ref = front["reference"]
    if ref is not None:
        point = ", ".join(f"{k} {v}" for k, v in ref["scores"].items())
        lines += ["", f"Hypervolume {front['hypervolume']:.4g} against {ref['name']} ({point})."]
    return lines


def _tests(context: dict[str, Any]) -> list[str]:
    if not context["tests"]:
        return []
    lines = ["", f"| best setting of | vs | difference in {context['metric']} | seeds | "
             "p (Welch) |", "|---|---|---|---|---|"]
    for t in context["tests"]:
        p = "–" if t["p"] is None else f"{t['p']:.3g}"
        lines.append(f"| {t['a']} | {t['b']} | {t['diff']:+.3f} | {t['n']} | {p} |")
    return lines


def _published(context: dict[str, Any]) -> list[str]:
    pub = context.get("published")
    if not pub:
        return []
    lines = ["", f"Against the published values ({pub['source']}): each difference "
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
    return lines


def _baselines(context: dict[str, Any]) -> list[str]:
    if not context["baselines"]:
        return []
    labels = list(next(iter(context["baselines"].values())))
    lines = ["", "| trivial baseline | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name, scores in context["baselines"].items():
        lines.append(f"| {name} | " + " | ".join(mean_pm(float(v)) for v in scores.values())
                     + " |")
    return lines
