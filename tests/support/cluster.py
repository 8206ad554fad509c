"""Helpers shared by tests/unit/test_cluster_yaml.py and its end-to-end half: cluster.yaml's
commands run with stub binaries, a PostgreSQL set up the way the head's Ubuntu package
sets its cluster up, the IAM policy files of aws/, and moto's IAM enforcement."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.support.browser import free_port
from tests.support.servers import _wait, postgres_bin
from tests.support.sweeps import end_session

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
AWS_DIR = ROOT / "aws"

COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")

# `sudo [-u USER] CMD...` runs CMD as the test's own user: with the PostgreSQL below,
# libpq's PGUSER=postgres stands in for running as the OS user postgres (peer auth).
SUDO = 'if [ "$1" = -u ]; then shift 2; fi; exec "$@"'


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def one_command(config: dict, key: str, needle: str) -> str:
    """The single command in `config[key]` that contains `needle`."""
    found = [c for c in config[key] if needle in c]
    assert len(found) == 1, f"expected one command with {needle!r} in {key}, got {found}"
    return found[0]


def run_stubbed(command: str, tmp_path: Path, stubs: dict[str, str],
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one cluster.yaml command in a subshell, as Ray does, with stub binaries first on
    PATH and HOME=tmp_path (plus `env`). Each stub appends its argv (one per line, then
    `--`) to tmp_path/NAME.calls and then runs its shell body; privileged or networked
    commands never run for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" -- >> {tmp_path / name}.calls\n{body}\n")
        stub.chmod(0o755)
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), **(env or {})}
    return subprocess.run(["bash", "-c", f"({command})"], env=full_env, capture_output=True,
                          text=True, timeout=120)


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


def real_mlflow_keeping_pid(bin_dir: Path, pid_file: Path) -> None:
    """An `mlflow` first on PATH that writes its PID to `pid_file`, then becomes the real
    one (exec keeps the PID): the head's command starts it under setsid, so that PID leads
    the session that `end_session` ends."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "mlflow"
    shim.write_text(f"#!/bin/sh\necho $$ > {pid_file}\n"
                    f"exec {Path(sys.executable).with_name('mlflow')} \"$@\"\n")
    shim.chmod(0o755)


@contextlib.contextmanager
def ubuntu_like_postgres(log: Path, timeout: float = 60) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL cluster authenticating as Ubuntu's `postgresql` package sets
    its cluster up: TCP on 127.0.0.1 only, with scram-sha-256 passwords; local socket
    connections trusted (Ubuntu: `peer`, i.e. the OS user postgres is the superuser
    postgres). Yields the libpq environment (PGHOST = the socket folder, PGPORT,
    PGUSER=postgres) that points the head's `sudo -u postgres psql` at it.
    (tests/support/servers.py's `postgres` trusts TCP too, so a password would go
    unchecked there.)"""
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    # Not under pytest's tmp_path: root's 0700 folders keep the postgres user out.
    data = Path(tempfile.mkdtemp(prefix="slotsweep-pg-head-"))
    try:
        if as_root:
            shutil.chown(data, user="postgres", group="postgres")
        subprocess.run([postgres_bin("initdb"), "-D", str(data / "db"), "-U", "postgres",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                        "--no-sync"], check=True, user=user, capture_output=True, timeout=120)
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [postgres_bin("postgres"), "-D", str(data / "db"), "-h", "127.0.0.1",
                 "-p", str(port), "-k", str(data), "-c", "fsync=off"],
                user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = [postgres_bin("pg_isready"), "-h", str(data), "-p", str(port), "-q"]
            _wait(lambda: subprocess.run(ready).returncode == 0, proc, log, "PostgreSQL",
                  timeout)
            yield {"PGHOST": str(data), "PGPORT": str(port), "PGUSER": "postgres"}
        finally:
            end_session(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def policy(name: str, *, bucket: str, account: str = "123456789012") -> str:
    """aws/NAME.json with its placeholders filled, as docs/cluster.md's `sed` fills them."""
    text = (AWS_DIR / f"{name}.json").read_text()
    return text.replace("BUCKET_NAME", bucket).replace("ACCOUNT_ID", account)


def enforce_iam(endpoint: str) -> None:
    """From now on the moto server at `endpoint` checks every request against the IAM
    policies of the caller (moto's access control; before this call nothing is checked)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).close()
