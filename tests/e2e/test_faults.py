"""Fault injection on real sweeps: the driver SIGKILLed at random moments, a trial's
worker process killed, trials that fail (exception, NaN loss), a trial out of memory."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray import tune

from tests.support.sweeps import (
    check_consistent,
    cli,
    end_session,
    instance_dir,
    ledger,
    mlflow_runs,
    params_sequence,
    reported_steps,
    run,
    run_and_kill,
    session_processes,
    sweep_file,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dsprites16):
    """The same sweep run once without interruption."""
    root = tmp_path_factory.mktemp("reference")
    assert run(sweep_file(root, dsprites16)).returncode == 0
    return root / "storage"


def final_scores(storage: Path) -> dict[tuple, float]:
    """Each trial's final FG-ARI keyed by its parameters."""
    return {tuple(sorted((k, round(v, 12) if isinstance(v, float) else v)
                         for k, v in e["params"].items())): e["metrics"]["val/fg_ari"]
            for e in ledger(storage)}


def test_driver_killed_at_five_random_moments(tmp_path, dsprites16, reference):
    """Seeded random kills (by reported-step count, or by time for the start-up), each
    followed by a rerun; the end state must equal an uninterrupted sweep's."""
    path = sweep_file(tmp_path, dsprites16)
    storage = tmp_path / "storage"
    rng = random.Random(20261126)
    total_reports = 3 * 4  # 3 trials, an evaluation every 2 of 8 steps
    moments = sorted(rng.sample(range(1, total_reports), 4))
    kills, seen = 0, {}

    def after(seconds: float):
        start = time.monotonic()
        return lambda: time.monotonic() - start >= seconds

    plans = [after(rng.uniform(1.0, 6.0))]  # somewhere in Ray's start-up
    plans += [lambda k=k: reported_steps(storage) >= k or len(ledger(storage)) >= 3
              for k in moments]
    for until in plans:
        if len(ledger(storage)) >= 3:
            break
        kills += run_and_kill(path, until)
        for entry in ledger(storage):  # what had ended before this kill
            seen.setdefault(entry["trial_id"], entry)
    assert kills >= 5, f"only {kills} kills landed before the sweep finished"
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    results, trials = check_consistent(storage, 3)
    after_all = {e["trial_id"]: e for e in ledger(storage)}
    for trial_id, entry in seen.items():  # nothing that had ended was trained again
        assert after_all[trial_id]["metrics"] == entry["metrics"]
    # Deterministic trials and a seeded search: the uninterrupted sweep's results.
    assert params_sequence(storage) == params_sequence(reference)
    assert final_scores(storage) == pytest.approx(final_scores(reference))


def _worker_pids(sid: int, name: str = "ray::ImplicitFunc.train") -> list[int]:
    """Ray workers running a trial (Ray sets the process title)."""
    return [pid for pid, argv in session_processes(sid) if argv[0].startswith(name)]


def test_killed_trial_worker_resumes_from_its_checkpoint(tmp_path, dsprites16):
    path = sweep_file(tmp_path, dsprites16, search={"num_samples": 2, "max_concurrent": 1,
                                                    "seed": 0})
    storage = tmp_path / "storage"
    proc = subprocess.Popen(cli(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if reported_steps(storage) >= 2:
                pids = _worker_pids(proc.pid)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed = pids[0]
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    finally:
        end_session(proc.pid)
    assert killed is not None, "no trial worker to kill"
    assert proc.returncode == 0, err[-3000:]
    results, trials = check_consistent(storage, 2)
    retried = [t for t in trials if t.data.tags.get("slotsweep.retries")]
    assert len(retried) == 1, "MLflow records the retry on the trial's one run"
    run_ = retried[0]
    assert run_.data.tags["slotsweep.retries"] == "1"
    assert "died" in run_.data.tags["slotsweep.retry_error"].lower()  # Ray's reason
    assert run_.data.tags["slotsweep.outcome"] == "finished" and run_.data.metrics["step"] == 8
    rows = results[run_.data.tags["slotsweep.trial_id"]]
    steps = [r["step"] for r in rows]
    assert steps[0] == 2 and steps[-1] == 8
    # Resumed from the checkpoint, not from the start: no step reported twice.
    assert steps == sorted(set(steps))


def _truncated_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shard = sorted(dst.glob("*.arrow"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return dst


def test_failing_trials_are_marked_failed_and_the_rest_go_on(tmp_path, dsprites16):
    """Bad data (an exception) and a NaN loss fail their trials, in Ray and in MLflow,
    with the error; the good trial finishes; the summary lists the failures."""
    bad = _truncated_copy(dsprites16 / "train", tmp_path / "bad-train")
    good = dsprites16 / "train"
    path = sweep_file(
        tmp_path, dsprites16,
        search={"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "seed": 0},
    )
    tree = yaml.safe_load(path.read_text())
    tree["search_space"] = {"data.train": {"grid": [str(good), str(bad)]},
                            "train.lr": {"grid": [1e-3, 1e6]}}  # lr 1e6: NaN at step 1
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = tmp_path / "storage"
    [experiment] = sorted(p for p in instance_dir(storage).glob("tune-*") if p.is_dir())
    ray_status = {t.config["data.train"] + " " + str(t.config["train.lr"]): t.status
                  for t in tune.ExperimentAnalysis(str(experiment)).trials}
    assert ray_status == {f"{good} 0.001": "TERMINATED", f"{good} 1000000.0": "ERROR",
                          f"{bad} 0.001": "ERROR", f"{bad} 1000000.0": "ERROR"}

    client, parents, trials = mlflow_runs(storage)
    by_setting = {(r.data.params["data.train"], float(r.data.params["train.lr"])): r
                  for r in trials}
    assert len(by_setting) == 4
    ok = by_setting[(str(good), 1e-3)]
    assert ok.info.status == "FINISHED" and ok.data.metrics["step"] == 8
    nan = by_setting[(str(good), 1e6)]
    assert nan.info.status == "FAILED" and nan.data.tags["slotsweep.outcome"] == "failed"
    assert "NonFiniteLossError: non-finite loss at step 1" in nan.data.tags["slotsweep.error"]
    for lr in (1e-3, 1e6):
        shard = by_setting[(str(bad), lr)]
        assert shard.info.status == "FAILED"
        assert "ShardError" in shard.data.tags["slotsweep.error"]
        assert str(bad) in shard.data.tags["slotsweep.error"]
    # Retries (FailureConfig) of a trial's own error fail at once, without training.
    assert nan.data.tags["slotsweep.retries"] == "2"
    assert len(client.get_metric_history(nan.info.run_id, "step")) == 0
    assert "3 trial(s) failed" in done.stdout
    assert "NonFiniteLossError" in done.stdout and "ShardError" in done.stdout


def test_out_of_memory_is_reported_as_such(tmp_path, dsprites16):
    """A real allocation failure (the process's address space capped), not a mock."""

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    cmd = [sys.executable, "-m", "slotsweep.train", "configs/dsprites_small.yaml",
           f"data.train={dsprites16 / 'train'}", f"data.val={dsprites16 / 'val'}",
           "data.synthetic=false", "train.steps=2", "train.batch_size=64", "train.device=cpu",
           "model.resolution=64", "model.num_slots=20", "model.decoder_channels=256",
           "--workdir", str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=cap_memory, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "out of cpu memory at step 1 with train.batch_size=64" in proc.stderr
    assert "lower train.batch_size" in proc.stderr


# ----------------------------------------------------------------- storage faults


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):  # CI runs as root: this must work there
            pytest.fail(f"mount {' '.join(args)}: {done.stderr}")
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


@contextlib.contextmanager
def storage_mount(tmp_path: Path, size_mb: int):
    """A tmpfs of `size_mb` MB (to fill up), bind-mounted at the sweep's storage path
    (to swap for a read-only bind of the same files while the sweep runs)."""
    disk, path = tmp_path / "disk", tmp_path / "mnt"
    disk.mkdir()
    path.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk))
    try:
        _mount("--bind", str(disk), str(path))
        yield disk, path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        subprocess.run(["umount", "-l", str(disk)], check=False)


def rebind(disk: Path, path: Path, *, read_only: bool) -> None:
    """Replace the mount at `path`: open files keep their old mount, new files see this
    one (remounting read-only in place is refused while files are open for writing)."""
    subprocess.run(["umount", "-l", str(path)], check=True)
    _mount("--bind", *(["-o", "ro"] if read_only else []), str(disk), str(path))


def fill(path: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = path / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def state_is_readable(storage: Path) -> None:
    """What the stopped sweep left can be read back: Tune's state, the ledger, MLflow,
    and each trial's latest checkpoint."""
    from slotsweep.sweep.ledger import read_ledger
    from slotsweep.training import checkpoint

    instance = instance_dir(storage)
    experiments = sorted(p for p in instance.glob("tune-*") if p.is_dir())
    assert experiments and tune.Tuner.can_restore(str(experiments[-1]))
    tune.ExperimentAnalysis(str(experiments[-1]))
    read_ledger(instance / "ledger.jsonl")
    mlflow_runs(storage)
    latest = [checkpoint.latest(d / "checkpoints") for d in (instance / "work").iterdir()]
    assert any(latest)
    for path in filter(None, latest):
        assert checkpoint.load(path)["step"] > 0


def test_storage_faults_are_recognised_through_the_wrappers(tmp_path):
    """Tune and Ray wrap what a callback or trial raised: the storage sign is found
    down the cause chain, in a trial's error text, or from the errno; other errors,
    and a chain too long to walk, are not taken for storage faults."""
    from slotsweep.sweep.console import storage_message
    from slotsweep.sweep.storage import StorageFault, storage_fault, unwritable

    def wrapped(inner: BaseException, depth: int) -> BaseException:
        error = inner
        for i in range(depth):
            try:
                raise RuntimeError(f"wrapper {i}") from error
            except RuntimeError as e:
                error = e
        return error

    full = OSError(errno.ENOSPC, "No space left on device")
    assert storage_fault(wrapped(full, 3)) == "is full: No space left on device"
    assert storage_fault(wrapped(OSError(errno.EROFS, "x"), 2)) == (
        "is unwritable: " + os.strerror(errno.EROFS))
    assert storage_fault("sqlite3.OperationalError: database or disk is full") == (
        "is full: database or disk is full")
    assert storage_fault(wrapped(ValueError("bad config"), 3)) is None
    assert storage_fault(wrapped(full, 12)) is None  # beyond the 10 causes walked
    assert storage_fault(None) is None

    message = storage_message(wrapped(StorageFault("/runs: the sweep storage is full"), 2))
    assert message.startswith("/runs: the sweep storage is full. The sweep stopped;")
    assert storage_message(wrapped(full, 1)).startswith(
        "the sweep storage is full: No space left on device. The sweep stopped;")
    assert storage_message(ValueError("bad config")) is None

    # Where the text does not say (SQLite's "disk I/O error" on a storage remounted
    # read-only), the storage itself is probed; the read-only case is in the sweep below.
    assert unwritable(tmp_path) is None and list(tmp_path.iterdir()) == []
    assert unwritable(tmp_path / "gone") == "cannot be written: No such file or directory"


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_storage_fault_stops_the_sweep_and_the_next_run_resumes(tmp_path, dsprites16, fault):
    with storage_mount(tmp_path, 96) as (disk, mnt):
        storage = mnt / "storage"
        path = sweep_file(tmp_path, dsprites16,
                          config={"train": {"steps": 40, "batch_size": 8, "warmup_steps": 2,
                                            "log_every": 2, "checkpoint_every": 2,
                                            "device": "cpu"}},
                          storage=str(storage))
        proc = subprocess.Popen(cli(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        filler = None
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                if reported_steps(storage) >= 4:
                    if fault == "full":
                        filler = fill(disk)
                    else:
                        rebind(disk, mnt, read_only=True)
                    break
                time.sleep(0.05)
            out, err = proc.communicate(timeout=300)
        finally:
            end_session(proc.pid)
        sign = "the sweep storage is full" if fault == "full" else "storage is read-only"
        assert proc.returncode == 3, f"exit {proc.returncode}\n{err[-3000:]}"
        message = err.strip().splitlines()[-1]
        assert message.startswith("error: ") and sign in message, err[-3000:]
        assert "rerun the same command to resume" in message
        if fault == "full":
            filler.unlink()
        else:
            rebind(disk, mnt, read_only=False)
        state_is_readable(storage)
        done = run(path)
        assert done.returncode == 0, done.stderr[-3000:]
        check_consistent(storage, 3)


def test_storage_without_room_is_refused_before_ray_starts(tmp_path, dsprites16):
    with storage_mount(tmp_path, 8) as (disk, mnt):
        path = sweep_file(tmp_path, dsprites16, storage=str(mnt / "storage"))
        before = sorted(p.name for p in mnt.iterdir())
        proc = subprocess.run(cli(path), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3, proc.stderr[-2000:]
        message = proc.stderr.strip().splitlines()[-1]
        assert "MB free, less than 50 MB (SLOTSWEEP_MIN_FREE_MB)" in message, message
        assert "Ray" not in proc.stderr
        assert sorted(p.name for p in mnt.iterdir()) == before  # nothing written
