"""End-to-end half of test_benchmarks.py: the tests marked slow (see that file)."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import smoke
from tests.support.tables import table


@pytest.mark.slow
def test_sweep_benchmark_smoke():
    """The sweep and its plain-process baseline both run their trials (the script asserts
    the sweep's count), and the overhead is their ratio as printed."""
    out = smoke("sweep.py", timeout=600)
    rows = dict(r for r in table(out, "| measure |"))
    sweep = float(rows["sweep (Tune + Optuna + MLflow + checkpoints)"])
    baseline = float(rows["baseline: 2 plain processes calling `fit`"])
    assert sweep > 0 and baseline > 0
    overhead = float(rows["orchestration overhead (sweep / baseline - 1)"].rstrip("%"))
    low = 100 * ((sweep - 0.05) / (baseline + 0.05) - 1) - 0.5  # both printed to 0.1 s
    high = 100 * ((sweep + 0.05) / (baseline - 0.05) - 1) + 0.5
    assert low <= overhead <= high

    # The split: the trials' time in the sweep, and what is left of the cores' time.
    split = [(k, float(v.rstrip("%"))) for k, v in table(out, "| where the overhead goes |")]
    (_, trials), (_, per_report), (_, per_trial), (_, paper) = split
    assert 0 < trials <= 2 * sweep + 0.1
    assert per_trial == pytest.approx((2 * sweep - trials) / 2, abs=0.1)  # --smoke: 2 trials
    fit = float(rows["sum of the trials' time inside `fit`"])
    assert per_report == pytest.approx((trials - fit) / 4, abs=0.05)  # 2 trials x 2 reports
    assert paper == pytest.approx(100 * (per_trial + 100 * per_report) / (500_000 / 73),
                                  abs=0.02)
