"""Two Ray nodes that share no folder: each its own temporary, cache and work folders;
the sweep's storage and its shards only in a bucket (a real `moto_server`). Both nodes
run trials; a worker node killed mid-trial has its trial resumed on the head from the
checkpoint Tune keeps in the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slotsweep.sweep.trial import RESENT
from tests.support.ray_nodes import FAST_NODE_DEATH, HEAD_IP, WORKER_IP, raylet_pid, two_nodes
from tests.support.servers import make_bucket, mlflow_server, s3_server
from tests.support.sweeps import end_session, sweep_file

pytestmark = pytest.mark.slow

BUCKET = "cluster"


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _upload(s3, folder: Path, prefix: str) -> None:
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            s3.upload_file(str(file), BUCKET, f"{prefix}/{file.relative_to(folder).as_posix()}")


def _results(s3, prefix: str) -> dict[str, list[dict]]:
    """Every result row Tune synced to the bucket, per trial id."""
    out: dict[str, list[dict]] = {}
    for key in _keys(s3, prefix):
        if key.endswith("/result.json"):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            for line in body.splitlines():
                row = json.loads(line)
                out.setdefault(row["trial_id"], []).append(row)
    return out


def _steps_logged(url: str, trial_id: str) -> list[int]:
    """The steps the driver logged to MLflow for a trial. Tune hands a trial its next
    result only after registering the previous one's checkpoint, so two logged steps mean
    the driver holds a checkpoint of the trial to resume it from."""
    from mlflow.tracking import MlflowClient

    from slotsweep.sweep.tracking import TAG_TRIAL

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("bucket")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{TAG_TRIAL}` = '{trial_id}'")
    return [int(m.step) for r in runs for m in client.get_metric_history(r.info.run_id, "step")]


def _running_on(work: Path) -> list[str]:
    """Trials whose trainer has checkpointed in this node's work folder."""
    return [d.name for d in work.glob("*/*") if list(d.glob("checkpoints/*"))]


def test_nodes_sharing_only_a_bucket_run_and_resume_trials(tmp_path, dsprites16):
    node = {ip: tmp_path / ip for ip in (HEAD_IP, WORKER_IP)}
    with s3_server(tmp_path / "s3.log") as s3_env, \
            mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow.log") as url:
        s3 = _s3(s3_env)
        make_bucket(s3_env, BUCKET)
        _upload(s3, dsprites16, "data")
        node_env = {ip: {**s3_env, "SLOTSWEEP_CACHE": str(d / "cache"),
                         "SLOTSWEEP_WORK": str(d / "work"), "TMPDIR": str(d / "tmp")}
                    for ip, d in node.items()}
        for d in node.values():
            (d / "tmp").mkdir(parents=True)
        steps = 60  # ~5 s a trial here: the kill lands mid-trial
        path = sweep_file(
            tmp_path, dsprites16, storage=f"s3://{BUCKET}/sweeps",
            config={"data": {"train": f"s3://{BUCKET}/data/train",
                             "val": f"s3://{BUCKET}/data/val"},
                    "train": {"steps": steps, "batch_size": 8, "warmup_steps": 2,
                              "log_every": 2, "checkpoint_every": 2, "device": "cpu"}},
            search={"num_samples": 3, "max_concurrent": 2, "seed": 0},
            resources={"cpu": 1, "gpu": 0}, max_failures=2,
            tracking={"uri": url, "experiment": "bucket"})
        with two_nodes(tmp_path, node_env=node_env, **FAST_NODE_DEATH) as (address, env,
                                                                           nodes):
            worker = nodes[WORKER_IP][0]
            cmd = [sys.executable, "-m", "slotsweep.run", str(path), "--address", address,
                   "--quiet"]
            driver = subprocess.Popen(cmd, env={**env, **node_env[HEAD_IP]}, cwd=node[HEAD_IP],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True,
                                      start_new_session=True)
            victim = None
            try:
                deadline = time.monotonic() + 300
                while victim is None and time.monotonic() < deadline and driver.poll() is None:
                    for trial_id in _running_on(node[WORKER_IP] / "work"):
                        # Kill only once the driver has a checkpoint of the trial: a checkpoint
                        # in the bucket is not enough (Tune registers it on a later round trip
                        # to the worker, which the kill may cut).
                        logged = _steps_logged(url, trial_id)
                        if len(logged) >= 2 and max(logged) <= steps - 10:
                            raylet = raylet_pid(worker.pid, WORKER_IP)
                            assert raylet is not None, f"no raylet of {WORKER_IP} in /proc"
                            os.kill(raylet, signal.SIGKILL)
                            victim = trial_id
                            break
                    time.sleep(0.2)
                out, err = driver.communicate(timeout=600)
            finally:
                end_session(driver.pid)
        assert victim is not None, (
            f"the driver held no checkpoint of a trial on {WORKER_IP} (rc {driver.returncode})")
        assert driver.returncode == 0, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"

        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("bucket").experiment_id])
        tags = {r.data.tags.get("dataset_manifest") for r in runs
                if r.data.tags.get("slotsweep.role") == "trial"}
        results = _results(s3, "sweeps/tiny/run-001/")
        ledger = [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
                  for k in _keys(s3, "sweeps/tiny/run-001/ledger/")]

    # The runs name the bucket's split by its manifest (read without fetching shards).
    assert len(tags) == 1 and tags.pop().startswith("train:64:"), tags
    # Nothing of the sweep is in a folder: each node fetched the shards into its own cache.
    assert not (tmp_path / "storage").exists()
    for ip, d in node.items():
        cached = sorted(p.name for p in (d / "cache").rglob("*.arrow"))
        assert cached, f"node {ip} read no shard into its cache"
    assert {e["trial_id"]: e["outcome"] for e in ledger} == dict.fromkeys(results, "finished")
    assert len(results) == 3, sorted(results)
    on = {r["node_ip"] for rows in results.values() for r in rows}
    assert on == {HEAD_IP, WORKER_IP}, f"trials ran on {sorted(on)} only"

    # The victim went on on the head from a checkpoint in the bucket, not from the start.
    trail = [(r["step"], r["node_ip"]) for r in results[victim] if not r.get(RESENT)]
    nodes_of = [ip for _, ip in trail]
    assert HEAD_IP in nodes_of and nodes_of[0] == WORKER_IP, trail
    first_head = nodes_of.index(HEAD_IP)
    reported = [s for s, _ in trail]
    assert reported == sorted(set(reported)), f"a step reported twice: {trail}"
    assert reported[-1] == steps and reported[first_head] > 2, trail
