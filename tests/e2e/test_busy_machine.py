"""A sweep on a machine that other processes keep busy: Ray starts trial workers at a
niceness 15 above the driver's, so they get only the CPU those processes leave
(BENCHMARKS.md, "On a busy machine"). The CLI says so, and names the setting that gives
trials an equal share; these tests hold both the note and the claim it makes about Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slotsweep.sweep.console import busy_machine_note

PROBE = """
import os, ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
worker = ray.get(ray.remote(lambda: os.getpriority(os.PRIO_PROCESS, 0)).remote())
print(worker - os.getpriority(os.PRIO_PROCESS, 0))
ray.shutdown()
"""


def test_the_note_appears_when_half_the_cores_are_busy_and_niceness_is_unset():
    note = busy_machine_note(2.1, 2, {})
    assert note is not None and "load 2.1 on 2 CPUs" in note
    assert "RAY_worker_niceness=0" in note
    assert busy_machine_note(0.4, 2, {}) is None  # an idle laptop
    assert busy_machine_note(4.0, 64, {}) is None  # a few busy cores of many
    assert busy_machine_note(40.0, 64, {}) is not None
    assert busy_machine_note(2.1, 2, {"RAY_worker_niceness": "0"}) is None  # chosen already


@pytest.mark.slow
def test_ray_runs_workers_15_nicer_than_the_driver_unless_told_otherwise():
    """What the note tells users, checked on the installed Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}

    def offset(**extra: str) -> int:
        proc = subprocess.run([sys.executable, "-c", PROBE], env={**env, **extra},
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(proc.stdout.split()[-1])

    driver = os.getpriority(os.PRIO_PROCESS, 0)
    assert offset() == min(15, 19 - driver)
    assert offset(RAY_worker_niceness="0") == 0
