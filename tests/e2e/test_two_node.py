"""A sweep on a real two-node Ray cluster (two raylets on loopback addresses).

The head (127.0.0.2) and the worker (127.0.0.3) each offer one CPU; the sweep runs two
one-CPU trials at a time, so Tune has to place trials on both nodes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from slotsweep.sweep.trial import RESENT
from tests.support.ray_nodes import (
    FAST_NODE_DEATH,
    HEAD_IP,
    WORKER_IP,
    free_port_on,
    log_tail,
    raylet_pid,
    stop_node,
    two_nodes,
    wait_for_port,
)
from tests.support.sweeps import (
    check_one_finished_run_per_trial,
    end_session,
    ledger,
    sweep_file,
    trial_results,
)

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head on 127.0.0.2 and a worker on 127.0.0.3, one CPU each; yields (address, env)."""
    with two_nodes(tmp_path) as (address, env, _):
        yield address, env


@pytest.fixture
def fragile_two_node_cluster(tmp_path):
    """Its own two-node cluster (the test kills its worker node), quick to notice a dead
    node; yields (address, env, the worker's `ray start --block` process)."""
    with two_nodes(tmp_path, **FAST_NODE_DEATH) as (address, env, nodes):
        yield address, env, nodes[WORKER_IP][0]


def test_sweep_uses_both_nodes_of_a_two_nodetwo_nodes(tmp_path, dsprites16, two_node_cluster):
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

    check_one_finished_run_per_trial(storage, results, steps=8)


def _results_or_none(storage: Path) -> dict[str, list[dict]]:
    try:
        return trial_results(storage)
    except (IndexError, ValueError, OSError):  # no instance yet, or a line half-written
        return {}


def test_worker_node_killed_mid_trial_resumes_on_the_head(tmp_path, dsprites16,
                                                          fragile_two_node_cluster):
    """SIGKILL the worker node's raylet while a trial runs there: Ray notices the dead
    node, Tune retries the trial (FailureConfig) from its last checkpoint on the head,
    the sweep completes, and MLflow keeps one run per trial with the retry recorded."""
    address, env, worker = fragile_two_node_cluster
    steps = 60  # ~5 s a trial here: the kill lands mid-trial
    path = sweep_file(
        tmp_path, dsprites16,
        config={"train": {"steps": steps, "batch_size": 8, "warmup_steps": 2, "log_every": 2,
                          "checkpoint_every": 2, "device": "cpu"},
                "eval": {"every": 2, "batch_size": 16, "max_images": 16, "num_pictures": 2}},
        search={"num_samples": 3, "max_concurrent": 2, "seed": 0},
        resources={"cpu": 1, "gpu": 0}, max_failures=2)
    storage = tmp_path / "storage"
    cmd = [sys.executable, "-m", "slotsweep.run", str(path), "--address", address, "--quiet"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    victim, killed_at = None, None
    try:
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            for trial_id, rows in _results_or_none(storage).items():
                on_worker = [r for r in rows if r.get("node_ip") == WORKER_IP]
                if len(on_worker) >= 2 and on_worker[-1]["step"] < steps:
                    raylet = raylet_pid(worker.pid, WORKER_IP)
                    assert raylet is not None, f"no raylet of {WORKER_IP} in /proc"
                    os.kill(raylet, signal.SIGKILL)
                    victim, killed_at = trial_id, on_worker[-1]["step"]
                    break
            time.sleep(0.1)
        out, err = driver.communicate(timeout=300)
    finally:
        end_session(driver.pid)
    assert victim is not None, (
        f"no trial reported twice on {WORKER_IP} before the sweep ended "
        f"(rc {driver.returncode}): {_results_or_none(storage)}")
    assert driver.returncode == 0, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(timeout=10)
    assert worker.poll() is not None, "the worker node's `ray start` outlived its raylet"

    # Tune: every trial ran to the end; the victim went on on the head, from its last
    # checkpoint (never from the start, no step reported twice).
    results = trial_results(storage)
    assert len(results) == 3, sorted(results)
    for trial_id, rows in results.items():
        assert max(r["step"] for r in rows) == steps, f"trial {trial_id} did not finish"
    ended = {e["trial_id"]: e["outcome"] for e in ledger(storage)}
    assert ended == dict.fromkeys(results, "finished")
    # A report re-sent from the trial's own checkpoint (RESENT: that checkpoint was newer
    # than the one Tune had registered when the node died) repeats a step by design;
    # the trail is what was trained, and the re-sent report is checked on its own below.
    rows = [r for r in results[victim] if not r.get(RESENT)]
    resent_rows = [r for r in results[victim] if r.get(RESENT)]
    resent = [r["step"] for r in resent_rows]
    trail = [(r["step"], r["node_ip"]) for r in rows]
    nodes = [ip for _, ip in trail]
    first_head = nodes.index(HEAD_IP) if HEAD_IP in nodes else None
    assert first_head is not None, f"trial {victim} never ran on the head: {trail}"
    assert set(nodes[:first_head]) == {WORKER_IP}, trail
    assert set(nodes[first_head:]) == {HEAD_IP}, trail
    assert rows[-1]["node_ip"] == HEAD_IP and rows[-1]["step"] == steps, trail
    reported = [s for s, _ in trail]
    assert reported == sorted(set(reported)), f"a step reported twice: {trail}"
    before, after = reported[first_head - 1], reported[first_head]
    assert before >= killed_at, trail
    # Resumed from the last reported checkpoint (or the trainer's own newer one).
    assert reported[0] < before < after <= before + 4, trail
    # At most one re-send, on the head, of the checkpoint it resumed from.
    resent_on = [r["node_ip"] for r in resent_rows]
    assert len(resent) <= 1 and set(resent_on) <= {HEAD_IP}, (resent, resent_on)
    assert all(before <= step < after for step in resent), (resent, trail)

    # MLflow: one run per trial; the victim's run records the retry and ends finished.
    client, trials = check_one_finished_run_per_trial(storage, results, steps=steps)
    for r in trials:
        for key in ("step", "val/fg_ari", "train/loss"):
            logged = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert len(logged) == len(set(logged)), (r.info.run_name, key, sorted(logged))
    [run_] = [r for r in trials if r.data.tags["slotsweep.trial_id"] == victim]
    assert int(run_.data.tags["slotsweep.retries"]) >= 1, run_.data.tags
    others = [r for r in trials if r is not run_]
    assert not any(r.data.tags.get("slotsweep.retries") for r in others)
    history = sorted(m.step for m in client.get_metric_history(run_.info.run_id, "step"))
    assert history == sorted({*reported, *resent}), "MLflow has the steps Tune reported, each once"


OTHER_DRIVER = """
import time
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print("gcs", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(600)
"""

JOIN = """
import ray
from slotsweep.sweep.cluster import connect
joined = connect(None, num_cpus=1)
print("joined", joined, ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


def _join(env: dict[str, str]) -> tuple[str, str]:
    """(what `connect(None)` joined, the GCS it is connected to), in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", JOIN], env=env, capture_output=True,
                          text=True, timeout=180)
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("joined ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return lines[0][1], lines[0][2]


def test_without_address_a_sweep_joins_ray_start_never_another_sweeps_ray(tmp_path):
    """No --address: a cluster `ray start` began here (a `ray up` head) is joined; the
    local instance of another sweep's driver is not (it dies with that driver, and a
    second sweep's trials would die with it); nor is a `ray start` cluster that is gone."""
    base = tempfile.mkdtemp(prefix="/tmp/rt")  # Ray's sockets need a short path
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=base, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    record = Path(base) / "ray" / "ray_current_cluster"  # what `ray start` writes
    started: list[subprocess.Popen] = []
    try:
        other = subprocess.Popen([sys.executable, "-c", OTHER_DRIVER], env=env,
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
        started.append(other)
        other_gcs = other.stdout.readline().split()[-1]
        joined, gcs = _join(env)
        assert joined == "local" and gcs != other_gcs

        port = free_port_on(HEAD_IP)
        log = tmp_path / "head.log"
        with log.open("w") as out:
            head = subprocess.Popen(
                [RAY, "start", "--head", f"--port={port}", f"--node-ip-address={HEAD_IP}",
                 f"--temp-dir={Path(base) / 'ray'}", "--num-cpus=1", "--block",
                 "--include-dashboard=false", "--disable-usage-stats"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        started.append(head)
        wait_for_port(HEAD_IP, port, head, log, timeout=90)
        deadline = time.monotonic() + 90  # `ray start` records the address once it is up
        while not record.is_file() and head.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert record.is_file(), log_tail(log)
        assert record.read_text().strip() == f"{HEAD_IP}:{port}"
        assert _join(env) == (f"{HEAD_IP}:{port}", f"{HEAD_IP}:{port}")

        stop_node(head)
        record.write_text(f"{HEAD_IP}:{port}")  # as a killed cluster leaves it
        joined, gcs = _join(env)
        assert joined == "local" and gcs not in (other_gcs, f"{HEAD_IP}:{port}")
    finally:
        for proc in reversed(started):
            stop_node(proc)
        shutil.rmtree(base, ignore_errors=True)
