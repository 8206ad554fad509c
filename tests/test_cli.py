"""The `slotsweep` console script (installed by `pip install -e .`) reaches every
`python -m slotsweep.<command>` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slotsweep.cli import COMMANDS

SCRIPT = Path(sys.executable).with_name("slotsweep")


def slotsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_usage_lists_every_command_and_unknown_ones_are_refused():
    assert SCRIPT.is_file(), "the package's console script is not installed"
    listed = slotsweep()
    assert listed.returncode == 0
    for name, (module, _) in COMMANDS.items():
        assert f"  {name:<8} " in listed.stdout and f"(python -m {module})" in listed.stdout
    assert set(COMMANDS) == {"run", "train", "prepare", "report", "probe"}
    wrong = slotsweep("sweep", "quickstart")
    assert wrong.returncode == 2 and "unknown command 'sweep'" in wrong.stderr


def test_each_command_is_its_module(tmp_path):
    """The arguments go to the module's own parser: the same errors, word for word."""
    for args in (["run", str(tmp_path / "nosuch.yaml")],
                 ["train", str(tmp_path / "nosuch.yaml")],
                 ["probe", str(tmp_path / "nosuch")]):
        via_script = slotsweep(*args)
        via_module = subprocess.run(
            [sys.executable, "-m", COMMANDS[args[0]][0], *args[1:]],
            capture_output=True, text=True, timeout=120)
        assert via_script.returncode == via_module.returncode == 2, args
        assert via_script.stderr == via_module.stderr and "nosuch" in via_script.stderr
    for name in ("prepare", "report"):
        helped = slotsweep(name, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout, name
