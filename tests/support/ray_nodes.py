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

from tests.support.sweeps import end_session

RAY = str(Path(sys.executable).with_name("ray"))

NODE_RESOURCES = """
import ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("nodes", [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes() if n["Alive"]])
"""


class NodeError(RuntimeError):
    """The node did not come up; the message holds the tail of its log."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _wait_until_up(address: str, env: dict[str, str], proc: subprocess.Popen, log: Path,
                   want: str, timeout: float) -> None:
    """Poll the node's resources from a short driver until it shows `want`."""
    seen, deadline = "nothing yet", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NodeError(f"`ray start` exited with {proc.returncode}:\n{_tail(log)}")
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
                    f"last probe: {seen}\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
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
    address = f"{ip}:{_free_port(ip)}"
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
        _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
