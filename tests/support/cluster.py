"""Helpers shared by tests/unit/test_cluster_yaml.py and its end-to-end half."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def one_command(config: dict, key: str, needle: str) -> str:
    """The single command in `config[key]` that contains `needle`."""
    found = [c for c in config[key] if needle in c]
    assert len(found) == 1, f"expected one command with {needle!r} in {key}, got {found}"
    return found[0]


def run_stubbed(command: str, tmp_path: Path, stubs: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one cluster.yaml command in a subshell, as Ray does, with stub binaries first on
    PATH. Each stub appends its argv (one per line, then `--`) to tmp_path/NAME.calls and
    then runs its shell body; privileged or networked commands never run for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" -- >> {tmp_path / name}.calls\n{body}\n")
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    return subprocess.run(["bash", "-c", f"({command})"], env=env, capture_output=True,
                          text=True, timeout=60)


def stub_calls(tmp_path: Path, name: str) -> list[list[str]]:
    """The argv of each call of stub `name`, in order."""
    path = tmp_path / f"{name}.calls"
    if not path.exists():
        return []
    calls, argv = [], []
    for line in path.read_text().splitlines():
        if line == "--":
            calls.append(argv)
            argv = []
        else:
            argv.append(line)
    return calls


COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
