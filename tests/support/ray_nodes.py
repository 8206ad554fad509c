"""A real `ray start --head` node on a loopback address for end-to-end tests: its own
temp dir, token auth, waited for until the GCS answers, and ended by PID (never
`ray stop`, which would end every Ray process on the machine)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.sweeps import end_session, session_processes

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"

NODE_RESOURCES = """
import ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("nodes", [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes() if n["Alive"]])
"""


class NodeError(RuntimeError):
    """The node did not come up; the message holds the tail of its log."""


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _wait_until_up(address: str, env: dict[str, str], proc: subprocess.Popen, log: Path,
                   want: str, timeout: float) -> None:
    """Poll the node's resources from a short driver until it shows `want`."""
    seen, deadline = "nothing yet", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NodeError(f"`ray start` exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            probe = subprocess.run([sys.executable, "-c", NODE_RESOURCES.format(address=address)],
                                   env=env, capture_output=True, text=True, timeout=60,
                                   start_new_session=True)
            lines = [line for line in probe.stdout.splitlines() if line.startswith("nodes ")]
            seen = lines[-1] if lines else f"rc {probe.returncode}: {probe.stderr[-1500:]}"
            if seen == want:
                return
        except subprocess.TimeoutExpired:
            seen = "the probe timed out"
        time.sleep(1)
    raise NodeError(f"the Ray head at {address} did not show {want} within {timeout:.0f} s; "
                    f"last probe: {seen}\n{log_tail(log)}")


def stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the blocking `ray start` (it stops its node's processes), then SIGKILL, by
    PID, whatever is left in its session."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=40)  # Ray drains a node for up to 30 s
    end_session(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def ray_head(log_dir: Path, *, ip: str = "127.0.0.2", num_cpus: int, num_gpus: int = 0):
    """A one-node cluster declaring `num_cpus` CPUs and `num_gpus` GPUs (declared GPUs
    need no GPU: Ray schedules them, and sets CUDA_VISIBLE_DEVICES, as on a GPU node).
    Yields (address, env): the env joins it (token auth, no RAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rt")  # Ray's unix sockets need a short path
    address = f"{ip}:{free_port_on(ip)}"
    log = log_dir / f"ray-head-{ip}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--head", f"--port={address.split(':')[1]}",
             f"--node-ip-address={ip}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
             f"--num-gpus={num_gpus}", "--include-dashboard=false", "--disable-usage-stats",
             "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        want = f"nodes {[(float(num_cpus), float(num_gpus))]}"
        _wait_until_up(address, env, proc, log, want, timeout=180)
        yield address, env
    finally:
        stop_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


ALIVE_NODES = """
import ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("alive", sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]))
"""


def wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path,
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Ray head exited with {proc.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.5)
    pytest.fail(f"the Ray head's GCS did not listen on {host}:{port} within {timeout:.0f} s:"
                f"\n{log_tail(log)}")


def _wait_for_nodes(address: str, env: dict[str, str], nodes: dict[str, tuple], *,
                    timeout: float) -> None:
    """Poll `ray.nodes()` from a short subprocess until every node is alive."""
    want = sorted(nodes)
    seen, deadline = "nothing yet", time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ip, (proc, log) in nodes.items():
            if proc.poll() is not None:
                pytest.fail(f"`ray start` of node {ip} exited with {proc.returncode}:\n"
                            f"{log_tail(log)}")
        try:
            probe = subprocess.run([sys.executable, "-c", ALIVE_NODES.format(address=address)],
                                   env=env, capture_output=True, text=True, timeout=60,
                                   start_new_session=True)
            out = [line for line in probe.stdout.splitlines() if line.startswith("alive ")]
            seen = out[-1] if out else f"rc {probe.returncode}: {probe.stderr[-1500:]}"
            if out and out[-1] == f"alive {want}":
                return
        except subprocess.TimeoutExpired:
            seen = "ray.nodes() probe timed out"
        time.sleep(1)
    logs = "\n".join(f"--- node {ip}:\n{log_tail(log, 1500)}" for ip, (_, log) in nodes.items())
    pytest.fail(f"the Ray cluster at {address} did not show {len(want)} alive nodes {want} "
                f"within {timeout:.0f} s; last probe: {seen}\n{logs}")


@contextlib.contextmanager
def two_nodes(tmp_path: Path, *, node_env: dict[str, dict[str, str]] | None = None,
              **extra_env: str):
    """A head on 127.0.0.2 and a worker on 127.0.0.3, one CPU each; yields
    (address, env, nodes) with nodes = {ip: (`ray start --block` process, its log)}.
    `node_env`: more environment for one node's processes, by IP (its own HOME, say).

    Both `ray start --block` processes lead their own session; on exit they are stopped
    by PID (never `ray stop`, which would kill every Ray process on the machine)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", **extra_env)
    # Ray's unix sockets live under the temp dir: keep its path short (~107 chars max).
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rt")
    port = free_port_on(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    started: list[subprocess.Popen] = []
    nodes: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(ip: str, *args: str) -> None:
        log = tmp_path / f"ray-{ip}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [RAY, "start", *args, f"--node-ip-address={ip}", "--num-cpus=1", "--block",
                 "--disable-usage-stats"],
                env={**env, **(node_env or {}).get(ip, {})}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        nodes[ip] = (proc, log)

    try:
        start(HEAD_IP, "--head", f"--port={port}", f"--temp-dir={temp_dir}",
              "--include-dashboard=false")
        wait_for_port(HEAD_IP, port, started[0], nodes[HEAD_IP][1], timeout=90)
        start(WORKER_IP, f"--address={address}")
        _wait_for_nodes(address, env, nodes, timeout=120)
        yield address, env, nodes
    finally:
        for proc in reversed(started):  # the worker first, then the head
            stop_node(proc)  # also ends what a killed node left behind, by PID
        shutil.rmtree(temp_dir, ignore_errors=True)


# The GCS marks a node dead after `failure_threshold` failed health checks, one every
# `period_ms` (Ray's defaults: 5 x 3 s after a 5 s delay, plus up to 10 s per timed-out
# check). A SIGKILLed raylet refuses connections at once, so this notices it in ~5 s,
# while a live raylet slowed by a busy machine still has 5 x 2 s to answer.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000",
                   "RAY_health_check_timeout_ms": "2000",
                   "RAY_health_check_failure_threshold": "5"}


def raylet_pid(session: int, ip: str) -> int | None:
    """The PID of the `raylet` of node `ip` among the processes of `session` (the
    node's `ray start --block` leads it)."""
    return next((pid for pid, argv in session_processes(session)
                 if Path(argv[0]).name == "raylet" and f"--node_ip_address={ip}" in argv), None)
