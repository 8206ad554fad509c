"""A sweep whose storage is a bucket (`s3://...` on a real `moto_server`), tracked by a
real `mlflow server` on PostgreSQL with its artifacts in the bucket: run, killed,
resumed; and the storage's bad input (a missing bucket, the endpoint gone)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.support.servers import (
    Gate,
    iam_credentials,
    make_bucket,
    mlflow_server,
    postgres,
    s3_server,
)
from tests.support.sweeps import cli, end_session, run, run_and_kill, sweep_file

pytestmark = pytest.mark.slow

BUCKET, ARTIFACTS = "sweeps", "mlflow"


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The S3 endpoint's environment and the tracking server's URL."""
    logs = tmp_path_factory.mktemp("servers")
    with s3_server(logs / "s3.log") as env, postgres(logs / "postgres.log") as db:
        make_bucket(env, BUCKET)
        make_bucket(env, ARTIFACTS)
        with mlflow_server(db, logs / "mlflow.log", artifacts=f"s3://{ARTIFACTS}/artifacts",
                           env=env) as url:
            yield env, url


@pytest.fixture
def s3_env(remote, monkeypatch):
    env, url = remote
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env, url


def _s3(endpoint: str | None = None):
    import boto3

    # A new session reads the credentials now in the environment: the default session
    # keeps those it first saw, which a test that changes keys has made wrong.
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or os.environ["AWS_ENDPOINT_URL"])


def _keys(bucket: str, prefix: str, endpoint: str | None = None) -> list[str]:
    pages = _s3(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _ledger(prefix: str, endpoint: str | None = None) -> dict[str, dict]:
    s3 = _s3(endpoint)
    return {k: json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
            for k in _keys(BUCKET, prefix, endpoint) if "/ledger/" in k}


def test_a_sweep_in_a_bucket_tracked_on_postgres_resumes_after_a_kill(
        tmp_path, dsprites16, s3_env, monkeypatch):
    _, url = s3_env
    monkeypatch.setenv("SLOTSWEEP_WORK", str(tmp_path / "node-local"))
    storage = f"s3://{BUCKET}/{tmp_path.name}"
    path = sweep_file(tmp_path, dsprites16, storage=storage,
                      tracking={"uri": url, "experiment": tmp_path.name})
    prefix = f"{tmp_path.name}/tiny/run-001/"

    killed = run_and_kill(path, lambda: len(_ledger(prefix)) >= 1)
    assert killed, "the sweep ended before the first trial did"
    done = run(path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "storage").exists(), "nothing of the sweep's state is local"

    # The sweep's state is in the bucket: Tune's experiment and checkpoints, our ledger.
    keys = _keys(BUCKET, prefix)
    assert any(k.startswith(f"{prefix}tune-000/experiment_state") for k in keys), keys
    assert any("/checkpoint_" in k for k in keys), "Tune's checkpoints are in the bucket"
    ended = _ledger(prefix)
    assert len(ended) == 3 and {e["outcome"] for e in ended.values()} == {"finished"}

    # MLflow on PostgreSQL: one FINISHED run per trial, no step logged twice, pictures in S3.
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(tmp_path.name)
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("slotsweep.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("slotsweep.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["slotsweep.trial_id"] for r in trials) == sorted(
        e["trial_id"] for e in ended.values()), "exactly one MLflow run per trial"
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/fg_ari")]
        assert steps == sorted(set(steps)) and steps[-1] == 8, steps
        assert [a.path for a in client.list_artifacts(r.info.run_id, "masks")], r.info.run_name
    pictures = [k for k in _keys(ARTIFACTS, "artifacts/") if k.endswith(".png")]
    assert len(pictures) >= 3, "the mask pictures are in the artifact bucket"

    again = run(path)  # a finished sweep: nothing runs again, nothing is logged again
    assert again.returncode == 0, again.stderr[-3000:]
    assert _ledger(prefix) == ended
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)


def test_a_missing_bucket_is_named_before_anything_starts(tmp_path, dsprites16, s3_env):
    _, url = s3_env
    path = sweep_file(tmp_path, dsprites16, storage="s3://no-such-bucket/sweeps",
                      tracking={"uri": url, "experiment": tmp_path.name})
    done = run(path)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "s3://no-such-bucket/sweeps/tiny: the sweep storage is missing its bucket" \
        in done.stderr
    assert "Traceback" not in done.stderr
    assert MlflowClient(url).get_experiment_by_name(tmp_path.name) is None, "nothing started"


def test_object_storage_needs_a_tracking_server(tmp_path, dsprites16, s3_env, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = sweep_file(tmp_path, dsprites16, storage=f"s3://{BUCKET}/{tmp_path.name}")
    done = run(path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{path}: tracking.uri: the sweep's storage s3://{BUCKET}/{tmp_path.name}/tiny " \
           "is object storage" in done.stderr
    assert not _keys(BUCKET, f"{tmp_path.name}/"), "nothing was written"


def test_the_endpoint_gone_is_named(tmp_path, dsprites16, s3_env, monkeypatch):
    _, url = s3_env
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    path = sweep_file(tmp_path, dsprites16, storage=f"s3://{BUCKET}/{tmp_path.name}",
                      tracking={"uri": url, "experiment": tmp_path.name})
    done = run(path, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"s3://{BUCKET}/{tmp_path.name}/tiny: the sweep storage is unreachable" in done.stderr


def test_the_endpoint_lost_mid_sweep_stops_it_and_the_rerun_resumes(
        tmp_path, dsprites16, s3_env, monkeypatch):
    """The S3 endpoint goes away after a trial ended (a relay in front of it closes):
    the sweep stops with the storage named, keeps what ended, and once the endpoint is
    back the same command finishes the sweep with one run per trial."""
    env, url = s3_env
    direct = env["AWS_ENDPOINT_URL"]  # the test reads the bucket past the relay
    gate = Gate(int(direct.rsplit(":", 1)[1]))
    gate.open()
    monkeypatch.setenv("AWS_ENDPOINT_URL", gate.url)
    monkeypatch.setenv("SLOTSWEEP_WORK", str(tmp_path / "node-local"))
    storage = f"s3://{BUCKET}/{tmp_path.name}"
    path = sweep_file(tmp_path, dsprites16, storage=storage,
                      config={"train": {"steps": 40, "batch_size": 8, "warmup_steps": 2,
                                        "log_every": 2, "checkpoint_every": 2,
                                        "device": "cpu"}},
                      tracking={"uri": url, "experiment": tmp_path.name})
    prefix = f"{tmp_path.name}/tiny/run-001/"
    proc = subprocess.Popen(cli(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline and not _ledger(prefix,
                                                                                   direct):
            time.sleep(0.2)
        ended = _ledger(prefix, direct)
        gate.close()
        out, err = proc.communicate(timeout=400)
    finally:
        end_session(proc.pid)
    assert ended, f"no trial ended before the sweep did (rc {proc.returncode}): {err[-2000:]}"
    assert proc.returncode == 3, f"rc {proc.returncode}\n{err[-4000:]}"
    assert f"{storage}/tiny" in err and "unreachable" in err, err[-4000:]
    kept = _ledger(prefix, direct)
    assert all(kept.get(k) == v for k, v in ended.items()), "nothing ended is lost"

    gate.open()
    again = run(path, timeout=600)
    gate.close()
    assert again.returncode == 0, again.stderr[-4000:]
    final = _ledger(prefix, direct)
    assert len(final) == 3 and {e["outcome"] for e in final.values()} == {"finished"}
    for key, entry in ended.items():
        assert final[key] == entry, "a trial that ended before the outage was not redone"
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(tmp_path.name)
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("slotsweep.role") == "trial"]
    assert sorted(r.data.tags["slotsweep.trial_id"] for r in trials) == sorted(
        e["trial_id"] for e in final.values())
    for r in trials:
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "step")]
        assert steps == sorted(set(steps)), f"a step logged twice: {steps}"


def test_refused_credentials_are_named_before_anything_starts(tmp_path, monkeypatch):
    """moto checks signatures with IAM auth on: the first 3 requests (a user, its key, its
    policy) go unchecked, every later one needs that key."""
    from slotsweep.sweep.location import Location
    from slotsweep.sweep.storage import StorageFault, check_storage

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")
    with s3_server(tmp_path / "moto.log") as env:
        good = iam_credentials(env, "sweeper")
        make_bucket(good, BUCKET)
        where = Location.of(f"s3://{BUCKET}/creds") / "tiny"
        for key_id, secret in ((good["AWS_ACCESS_KEY_ID"], "wrong"), ("AKIAWRONGKEY", "wrong")):
            for name, value in {**good, "AWS_ACCESS_KEY_ID": key_id,
                                "AWS_SECRET_ACCESS_KEY": secret}.items():
                monkeypatch.setenv(name, value)
            from slotsweep.sweep import location

            location._filesystem.cache_clear()  # a filesystem keeps the credentials it saw
            with pytest.raises(StorageFault) as err:
                check_storage(where)
            assert str(err.value).startswith(f"s3://{BUCKET}/creds/tiny: the sweep storage is "
                                             "refusing"), err.value
            assert "credentials" in str(err.value)
        for name, value in good.items():
            monkeypatch.setenv(name, value)
        location._filesystem.cache_clear()
        check_storage(where)  # the right key passes, and leaves no probe behind
        assert not [k for k in _keys(BUCKET, "creds/") if "probe" in k]
