"""The Pareto front of a multi-objective sweep, and its hypervolume.

A trial is on the front when no other trial is at least as good on every objective and
better on one. The hypervolume is the volume of objective space that the front
dominates and that is better than a reference point on every objective: here the best
trivial baseline, so the number says how far a sweep's trade-off lies beyond fixed block
masks, and two sweeps over the same objectives and data compare by it (larger is better).

Pure Python on plain numbers: the summary, the MLflow tags and the report all call these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Directions = Mapping[str, str]  # metric -> "max" | "min"


def _minimised(values: Mapping[str, float], directions: Directions) -> tuple[float, ...]:
    """The objective vector with every objective turned into one to minimise."""
    return tuple(-float(values[m]) if mode == "max" else float(values[m])
                 for m, mode in directions.items())


def scored(values: Mapping[str, object], metrics: Iterable[str]) -> bool:
    """Whether `values` holds a finite number for every one of `metrics` (a Directions
    mapping iterates over its objectives)."""
    return all(isinstance(values.get(m), (int, float)) and math.isfinite(values[m])  # type: ignore[arg-type]
               for m in metrics)


def dominates(a: Mapping[str, float], b: Mapping[str, float], directions: Directions) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    x, y = _minimised(a, directions), _minimised(b, directions)
    return all(p <= q for p, q in zip(x, y, strict=True)) and x != y


def pareto_front(points: Mapping[str, Mapping[str, float]], directions: Directions) -> list[str]:
    """The names of the non-dominated points, in the order given. Points without a finite
    value on every objective take no part (a failed or unscored trial); two points with
    equal objectives are both on the front when nothing dominates them."""
    candidates = {name: v for name, v in points.items() if scored(v, directions)}
    return [name for name, v in candidates.items()
            if not any(dominates(w, v, directions) for w in candidates.values())]


def ranked_front(points: Mapping[str, Mapping[str, float]], directions: Directions) -> list[str]:
    """`pareto_front`, best on the first objective first (ties keep the order given):
    the order the summary and the report list the front in."""
    first = next(iter(directions))
    sign = -1.0 if directions[first] == "max" else 1.0
    return sorted(pareto_front(points, directions), key=lambda n: sign * points[n][first])


def hypervolume(points: list[Mapping[str, float]], reference: Mapping[str, float],
                directions: Directions) -> float:
    """The volume dominated by `points` and better than `reference` on every objective
    (0 when no point beats the reference everywhere). Exact, by slicing one objective at
    a time: O(n^d) for n points and d objectives, which a sweep's tens of trials and two
    or three objectives keep small."""
    ref = _minimised(reference, directions)
    inside = [p for p in (_minimised(v, directions) for v in points if scored(v, directions))
              if all(x < r for x, r in zip(p, ref, strict=True))]
    return _sliced(inside, ref)


def _sliced(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    ordered = sorted(points, key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(ordered):  # the slab between this point's last value and the next
        upper = ordered[i + 1][-1] if i + 1 < len(ordered) else ref[-1]
        if upper > p[-1]:
            total += (upper - p[-1]) * _sliced([q[:-1] for q in ordered[:i + 1]], ref[:-1])
    return total


def reference_baseline(baselines: Mapping[str, Mapping[str, float]],
                       directions: Directions) -> str | None:
    """The best trivial baseline: of those scored on every objective, the best on the
    first objective (ties go to the later objectives). None when no baseline is scored on
    every objective (a probe or loss objective: baselines have no such value)."""
    usable = {name: v for name, v in baselines.items() if scored(v, directions)}
    if not usable:
        return None
    return min(usable, key=lambda name: _minimised(usable[name], directions))


GIVEN = "the sweep file's reference point"


def reference_point(baselines: Mapping[str, Mapping[str, float]], directions: Directions,
                    given: Mapping[str, float] | None = None
                    ) -> tuple[str, Mapping[str, float]] | None:
    """The hypervolume's reference point and its name: the sweep file's, when it gives
    one (to compare sweeps on other data, or models still below every baseline), else the
    best trivial baseline's scores; None when neither is there."""
    if given:
        return GIVEN, given
    name = reference_baseline(baselines, directions)
    return None if name is None else (name, baselines[name])
