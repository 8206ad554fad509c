"""Helpers for end-to-end sweep tests: tiny sweep files, the real CLI in a subprocess,
and reading back what Tune and MLflow stored."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from slotsweep.sweep.ledger import ended_with
from slotsweep.sweep.tracking import search_all
from slotsweep.sweep.trial import REPLAYED, RESENT
from tests.conftest import TINY_MODEL


def sweep_file(tmp_path: Path, data: Path, *, name: str = "tiny", **sections) -> Path:
    """A small sweep over the 16x16 shards: each trial is a few seconds of CPU."""
    tree = {
        "config": {
            "model": dict(TINY_MODEL),
            "data": {"train": str(data / "train"), "val": str(data / "val")},
            "train": {"steps": 8, "batch_size": 8, "warmup_steps": 2, "log_every": 2,
                      "checkpoint_every": 2, "device": "cpu"},
            "eval": {"every": 2, "batch_size": 16, "max_images": 16, "num_pictures": 2},
        },
        "search_space": {
            "loss.type": {"choice": ["none", "cosine"]},
            "loss.beta": {"loguniform": [1e-3, 1.0], "when": {"loss.type": "cosine"}},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
        },
        "search": {"num_samples": 3, "max_concurrent": 1, "seed": 0},
        "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0},
        "storage": str(tmp_path / "storage"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = {**tree[key], **value}
        else:
            tree[key] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def cli(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "slotsweep.run", str(path), "--address", "local",
            "--num-cpus", "2", "--quiet", *args]


def session_processes(sid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process in session `sid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    argv = (entry / "cmdline").read_bytes().decode(errors="replace")
                    found.append((int(entry.name), argv.split("\0")))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
    return found


def _session_pids(sid: int) -> list[int]:
    return [pid for pid, _ in session_processes(sid)]


def end_session(sid: int) -> None:
    """SIGKILL, by PID, every process left in the session a test started."""
    for _ in range(20):
        pids = [p for p in _session_pids(sid) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def run(path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the sweep CLI to completion in its own session; clean up what it leaves."""
    proc = subprocess.Popen(cli(path, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR2)  # the driver prints its threads' stacks
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise AssertionError(f"the sweep ran past {timeout} s; its driver's stacks:\n"
                             f"{(err or '')[-12000:]}") from None
    finally:
        end_session(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_and_kill(path: Path, until, *args: str, timeout: float = 600) -> bool:
    """Start the sweep CLI, SIGKILL the driver (by PID) once `until()` holds, then end
    what it left. Returns False if the driver finished before the condition held."""
    proc = subprocess.Popen(cli(path, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if until():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        end_session(proc.pid)
    return killed


def instance_dir(storage: Path, sweep: str = "tiny") -> Path:
    return sorted((storage / sweep).glob("run-*"))[-1]


def ledger(storage: Path, sweep: str = "tiny") -> list[dict]:
    runs = sorted((storage / sweep).glob("run-*"))
    if not runs or not (runs[-1] / "ledger.jsonl").is_file():
        return []
    lines = (runs[-1] / "ledger.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def trial_results(storage: Path, sweep: str = "tiny") -> dict[str, list[dict]]:
    """Every result line Tune wrote, per trial id, across the instance's experiments."""
    out: dict[str, list[dict]] = {}
    for exp in sorted(instance_dir(storage, sweep).glob("tune-*")):
        for result_file in exp.glob("*/result.json"):
            for line in result_file.read_text().splitlines():
                row = json.loads(line)
                out.setdefault(row["trial_id"], []).append(row)
    return out


def reported_steps(storage: Path, sweep: str = "tiny") -> int:
    return sum(len(rows) for rows in trial_results(storage, sweep).values()) if list(
        (storage / sweep).glob("run-*")) else 0


def check_one_finished_run_per_trial(storage: Path, trial_ids, steps: int):
    """One FINISHED sweep run, exactly one FINISHED run per trial, each at `steps`."""
    client, parents, trials = mlflow_runs(storage)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["slotsweep.trial_id"] for r in trials) == sorted(trial_ids), (
        "exactly one MLflow run per trial")
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert r.data.tags["slotsweep.outcome"] == "finished"
        assert r.data.metrics["step"] == steps
    return client, trials


def mlflow_runs(storage: Path, sweep: str = "tiny"):
    client = MlflowClient(f"sqlite:///{storage / sweep / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep)
    runs = search_all(client, [exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("slotsweep.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("slotsweep.role") == "sweep"]
    return client, parents, trials


def check_consistent(storage, expected_trials: int):
    """The promises of a (possibly resumed) sweep, read from Tune's files and MLflow."""
    results = trial_results(storage)
    ended = {e["trial_id"]: e for e in ledger(storage)}
    for trial_id, rows in list(results.items()):
        if trial_id not in ended and all(r.get(REPLAYED) for r in rows):
            # a re-suggested copy of a trial that ended unseen by Tune: it stands for it
            original = ended_with(ended, rows[-1]["config"])
            rows = results.pop(trial_id)
            results.setdefault(original["trial_id"], rows)
    assert len(results) == expected_trials
    for trial_id, rows in results.items():
        steps = [r["step"] for r in rows if "step" in r and not r.get(REPLAYED)
                 and not r.get(RESENT)]  # MLflow's steps: checked below
        assert steps == sorted(set(steps)), f"trial {trial_id} reported a step twice: {steps}"
    client, parents, trials = mlflow_runs(storage)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["slotsweep.trial_id"] for r in trials]
    assert sorted(ids) == sorted(results), "exactly one MLflow run per trial"
    for r in trials:
        assert r.info.status in ("FINISHED", "KILLED"), (r.info.run_name, r.info.status)
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        history = client.get_metric_history(r.info.run_id, "val/fg_ari")
        steps = [m.step for m in history]
        assert steps and steps == sorted(set(steps)), f"duplicated metric steps {steps}"
    return results, trials


def params_sequence(source: Path | list[dict]) -> list[tuple]:
    """The trials' parameters, order-free: of a storage's ledger, or of ledger entries."""
    entries = ledger(source) if isinstance(source, Path) else source
    return sorted(tuple(sorted((k, round(v, 12) if isinstance(v, float) else v)
                               for k, v in e["params"].items())) for e in entries)
