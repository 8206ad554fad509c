"""benchmarks/tracking.py in its smoke mode, against real servers: `mlflow server` over
SQLite and over PostgreSQL (tests/support/servers.py), trial processes that log to them,
and a driver logging through SweepTracker. The script itself exits non-zero when a
metric point is lost; this test reads its tables back."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import smoke
from tests.support.servers import postgres_bin
from tests.support.tables import table

pytestmark = pytest.mark.slow

N, STEPS, RESULTS, METRICS = 2, 4, 2, 15  # the script's --smoke sizes; 15 metrics a trial
PAPER_INTERVAL_MS = 100 * 1000 / 73  # log_every 100 steps at 73 steps/s


def test_tracking_benchmark_smoke():
    """Both backends, both parts: every point logged is found in the server's database
    (lost 0, no failed call), percentiles are ordered, the slow-down is the difference
    of the two s/step columns, and the share of the paper's interval is recomputable."""
    postgres_bin("postgres")  # fails in CI, skips elsewhere, when PostgreSQL is missing
    out = smoke("tracking.py", timeout=900)
    server = table(out, "| backend | N | steps per trial")
    assert [(r[0], r[1], r[2]) for r in server] == [
        (backend, str(N), f"{STEPS}.0 of {STEPS}") for backend in ("sqlite", "postgresql")]
    for (_, _, _, calls, rate, logged, lost, failed, p50, p99, bare, logging, added, slowdown,
         paper) in server:
        assert (int(calls), int(logged), int(lost), int(failed)) == (
            N * STEPS, N * STEPS * METRICS, 0, 0)
        assert float(rate) > 0
        assert 0 < float(p50) <= float(p99)
        assert float(bare) > 0 and float(logging) > 0
        # every ms column printed to 0.01 ms
        assert float(added) == pytest.approx(float(logging) - float(bare), abs=0.02)
        assert float(slowdown.rstrip("%")) == pytest.approx(
            100 * (float(logging) / float(bare) - 1), abs=2)
        assert float(paper.rstrip("%")) == pytest.approx(
            100 * float(added) / PAPER_INTERVAL_MS, abs=0.02)

    driver = table(out, "| backend | N | log_result |")
    assert [(r[0], r[2]) for r in driver] == [
        (backend, mode) for backend in ("sqlite", "postgresql")
        for mode in ("synchronous (before)", "queued (now)")]
    for _, n, _, results, lost, p50, p99, wait, last, total, paper in driver:
        assert (n, int(results), int(lost)) == (str(N), N * RESULTS, 0)
        assert 0 < float(p50) <= float(p99)
        assert 0 < float(wait) <= float(last) + 1  # the mean wait: at most the last's
        assert float(total) > 0
        assert float(paper.rstrip("%")) == pytest.approx(
            100 * float(wait) / PAPER_INTERVAL_MS, abs=0.02)
