"""benchmarks/gpu.py runs end to end on the CPU in its smoke mode (the GPU path's CI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu"
    assert "CPU SMOKE RUN" in proc.stdout and result["table"] in proc.stdout

    assert all(math.isfinite(v) and v > 0 for v in result["matmul"].values())
    rows = {(r["config"], r["mode"], r["data"]) for r in result["rows"]}
    for config in ("dsprites-covloss", "dinosaur"):
        for mode in ("fp32 eager", "bf16", "bf16+compile"):
            assert (config, mode, "streamed") in rows
            assert f"| {config} | {mode} | streamed |" in proc.stdout
    assert ("dinosaur", "bf16+compile", "staged") in rows  # staged to the CPU
    for row in result["rows"]:
        for key in ("steps_per_s", "tflops", "gflop_per_step", "peak_memory_gb",
                    "data_wait_ms", "first_step_s"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["config"], key)
        assert row["steps_per_s"] > 0 and row["gflop_per_step"] > 0

    assert [r["trials"] for r in result["packing"]] == [1, 2]
    assert all(math.isfinite(r["aggregate_steps_per_s"]) and r["aggregate_steps_per_s"] > 0
               for r in result["packing"])

    assert [r["config"] for r in result["numerics"]] == ["dsprites-covloss", "dinosaur"]
    for r in result["numerics"]:
        assert r["finite"] and math.isfinite(r["rel_diff"]) and r["ok"], r
    assert len(result["targets"]) == 3
