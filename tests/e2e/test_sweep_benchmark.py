"""End-to-end half of test_benchmarks.py: the tests marked slow (see that file)."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import smoke
from tests.support.tables import table


@pytest.mark.slow
def test_sweep_benchmark_smoke():
    """The sweep and its plain-process baseline both run their trials (the script asserts
    the sweep's count), and the overhead is their ratio as printed."""
    rows = dict(r for r in table(smoke("sweep.py", timeout=600), "| measure |"))
    sweep = float(rows["sweep (Tune + Optuna + MLflow + checkpoints)"])
    baseline = float(rows["baseline: 2 plain processes calling `fit`"])
    assert sweep > 0 and baseline > 0
    overhead = float(rows["orchestration overhead (sweep / baseline - 1)"].rstrip("%"))
    low = 100 * ((sweep - 0.05) / (baseline + 0.05) - 1) - 0.5  # both printed to 0.1 s
    high = 100 * ((sweep + 0.05) / (baseline - 0.05) - 1) + 0.5
    assert low <= overhead <= high
