"""Helpers shared by tests/unit/test_report.py and its end-to-end half."""

from __future__ import annotations

import subprocess
import sys


def make_report(tmp, path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp / "report.html"
    proc = subprocess.run([sys.executable, "-m", "slotsweep.report", str(path), "--out",
                           str(out), *args], capture_output=True, text=True, timeout=300)
    return proc, out.read_text() if out.is_file() else ""
