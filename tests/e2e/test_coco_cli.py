"""End-to-end half of test_coco.py: the tests marked slow (see that file)."""

from __future__ import annotations

import json

import pytest

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.slow
def test_prepare_coco_cli_killed_midway_resumes_to_identical_shards(coco_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def cmd(out, workers):
        return [sys.executable, "-m", "slotsweep.prepare", "coco", "--images",
                str(coco_dir / "images"), "--annotations", str(coco_dir / "instances.json"),
                "--out", str(out), "--weights", "random", "--batch-size", "1",
                "--rows-per-shard", "1", "--target-size", "16", "--device", "cpu",
                "--workers", str(workers)]

    subprocess.run(cmd(tmp_path / "straight", 2), check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out, 0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        progress = out / "progress.json"
        try:
            done = len(json.loads(progress.read_text())["shards"]) if progress.is_file() else 0
        except (json.JSONDecodeError, KeyError):
            done = 0
        if 1 <= done < 4:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed, "extraction finished before it could be killed mid-way"
    assert not (out / "manifest.json").exists()
    subprocess.run(cmd(out, 0), check=True, capture_output=True)
    straight = tmp_path / "straight"
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (straight / name).read_bytes() == (out / name).read_bytes(), name
    again = subprocess.run(cmd(out, 0), capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout
    other = subprocess.run(cmd(out, 0) + ["--block", "3"], capture_output=True, text=True)
    assert other.returncode == 2 and "already holds features of" in other.stderr
