"""Every benchmark script runs in CI in its smoke mode (tiny sizes, seconds), so none of
them rots between the runs that measure; each test checks what its table says against
what it can recompute. (gpu.py, learning.py and precision.py have their own tests.)"""

from __future__ import annotations

import importlib.util

import pytest

from tests.support.benchmarks import ROOT, smoke
from tests.support.tables import table


def test_trainer_benchmark_smoke():
    """A row per configuration; its parameter count is the model's, and its GFLOP/s is
    GFLOP per step over seconds per step."""
    from slotsweep.config import build_config
    from slotsweep.models import build_model

    spec = importlib.util.spec_from_file_location("trainer", ROOT / "benchmarks" / "trainer.py")
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)
    rows = {r[0]: r for r in table(smoke("trainer.py"), "| config |")}
    assert list(rows) == list(trainer.CONFIGS)
    for name, (_, batch, s_step, _, gflop_step, gflop_s, _, rss, params) in rows.items():
        cfg = build_config(trainer.CONFIGS[name])
        model = build_model(cfg.model, cfg.loss)
        assert float(params) == pytest.approx(
            sum(p.numel() for p in model.parameters()) / 1e6, abs=0.006), name
        assert batch == "2" and float(gflop_step) > 0 and float(rss) > 0
        assert float(gflop_s) == pytest.approx(float(gflop_step) / float(s_step), rel=0.02)


def test_metrics_benchmark_smoke():
    """Both cases run; the script itself fails when FG-ARI differs from sklearn's."""
    rows = table(smoke("metrics.py"), "| case |")
    assert [r[0] for r in rows] == ["64x64 masks", "14x14 masks, upsampled"]
    for _, ours, theirs, speedup in rows:
        assert float(ours) > 0 and float(theirs) > 0 and speedup.endswith("x")


def test_loader_benchmark_smoke():
    """Every reader is timed against the raw read (the script checks each batch's shape)."""
    rows = table(smoke("loader.py"), "| reader |")
    assert [r[0] for r in rows] == [
        "raw read of the shard files (bytes into memory)", "shards, 0 loader workers",
        "shards, 1 loader workers", "shards, 2 loader workers",
        "one .npy per image (authors' layout), 0 workers"]
    assert rows[0][3] == "100%"
    assert all(float(r[1].replace(",", "")) > 0 for r in rows)


def test_tfrecord_benchmark_smoke():
    """The reader is timed with both CRC32C implementations (the script first checks they
    agree) and without verification; MB/s is the printed size over the printed time."""
    out = smoke("tfrecord.py")
    rows = table(out, "| reader |")
    assert [r[0] for r in rows] == ["numpy CRC32C (before)", "google-crc32c (now)",
                                    "no verification"]
    for _, seconds, mb_s, ms_record in rows:
        assert float(seconds) > 0 and float(mb_s) > 0
        # seconds are printed to 1 ms: over 16 records, 0.03 ms of rounding
        assert float(ms_record) == pytest.approx(float(seconds) / 16 * 1e3, rel=0.02, abs=0.04)


def test_cli_benchmark_smoke():
    """Every command's --help is timed beside the two baselines."""
    rows = table(smoke("cli.py"), "| command |")
    names = [r[0] for r in rows]
    assert names[:2] == ["python -c pass (floor)", 'python -c "import torch" (before)']
    assert {f"python -m slotsweep.{c} --help" for c in
            ("run", "train", "prepare", "report", "probe")} <= set(names)
    assert all(float(r[1]) > 0 for r in rows)
