"""Helpers shared by tests/unit/test_benchmarks.py and its end-to-end half."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVICE_SCRIPT = ROOT / "benchmarks" / "device_binding.sh"  # the GPU session's one script


def smoke(script: str, timeout: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=ROOT,
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SMOKE RUN" in proc.stdout  # nobody mistakes its numbers for a measurement
    return proc.stdout
