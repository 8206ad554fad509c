"""A sweep on a real two-node Ray cluster (two raylets on loopback addresses).

The head (127.0.0.2) and the worker (127.0.0.3) each offer one CPU; the sweep runs two
one-CPU trials at a time, so Tune has to place trials on both nodes.
"""

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

from tests.sweep_helpers import end_session, ledger, mlflow_runs, sweep_file, trial_results

pytestmark = pytest.mark.slow

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
RAY = str(Path(sys.executable).with_name("ray"))

ALIVE_NODES = """
import ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("alive", sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]))
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the blocking `ray start` (it drains the node and stops its processes),
    then SIGKILL, by PID, whatever is left in its session."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=40)  # Ray drains a node for up to 30 s
    end_session(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path,
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Ray head exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.5)
    pytest.fail(f"the Ray head's GCS did not listen on {host}:{port} within {timeout:.0f} s:"
                f"\n{_tail(log)}")


def _wait_for_nodes(address: str, env: dict[str, str], nodes: dict[str, tuple], *,
                    timeout: float) -> None:
    """Poll `ray.nodes()` from a short subprocess until every node is alive."""
    want = sorted(nodes)
    seen, deadline = "nothing yet", time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ip, (proc, log) in nodes.items():
            if proc.poll() is not None:
                pytest.fail(f"`ray start` of node {ip} exited with {proc.returncode}:\n"
                            f"{_tail(log)}")
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
    logs = "\n".join(f"--- node {ip}:\n{_tail(log, 1500)}" for ip, (_, log) in nodes.items())
    pytest.fail(f"the Ray cluster at {address} did not show {len(want)} alive nodes {want} "
                f"within {timeout:.0f} s; last probe: {seen}\n{logs}")


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head on 127.0.0.2 and a worker on 127.0.0.3, one CPU each; yields (address, env).

    Both `ray start --block` processes lead their own session; teardown stops them by
    PID (never `ray stop`, which would kill every Ray process on the machine)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    # Ray's unix sockets live under the temp dir: keep its path short (~107 chars max).
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rt")
    port = _free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    started: list[subprocess.Popen] = []
    nodes: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(ip: str, *args: str) -> None:
        log = tmp_path / f"ray-{ip}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [RAY, "start", *args, f"--node-ip-address={ip}", "--num-cpus=1", "--block",
                 "--disable-usage-stats"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        started.append(proc)
        nodes[ip] = (proc, log)

    try:
        start(HEAD_IP, "--head", f"--port={port}", f"--temp-dir={temp_dir}",
              "--include-dashboard=false")
        _wait_for_port(HEAD_IP, port, started[0], nodes[HEAD_IP][1], timeout=90)
        start(WORKER_IP, f"--address={address}")
        _wait_for_nodes(address, env, nodes, timeout=120)
        yield address, env
    finally:
        for proc in reversed(started):  # the worker first, then the head
            _stop_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_uses_both_nodes_of_a_two_node_cluster(tmp_path, dsprites16, two_node_cluster):
    address, env = two_node_cluster
    path = sweep_file(tmp_path, dsprites16,
                      search={"num_samples": 4, "max_concurrent": 2, "seed": 0},
                      resources={"cpu": 1, "gpu": 0})
    cmd = [sys.executable, "-m", "slotsweep.run", str(path), "--address", address, "--quiet"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = driver.communicate(timeout=600)
    finally:
        end_session(driver.pid)
    assert driver.returncode == 0, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"

    storage = tmp_path / "storage"
    results = trial_results(storage)
    assert len(results) == 4, sorted(results)
    for trial_id, rows in results.items():
        assert max(r.get("step", 0) for r in rows) == 8, f"trial {trial_id} did not finish"
    ended = {e["trial_id"]: e["outcome"] for e in ledger(storage)}
    assert ended == dict.fromkeys(results, "finished")

    node_ips = {row["node_ip"] for rows in results.values() for row in rows}
    assert node_ips == {HEAD_IP, WORKER_IP}, f"trials ran on {sorted(node_ips)} only"

    _, parents, trials = mlflow_runs(storage)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["slotsweep.trial_id"] for r in trials) == sorted(results), (
        "exactly one MLflow run per trial")
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert r.data.tags["slotsweep.outcome"] == "finished"
        assert r.data.metrics["step"] == 8
