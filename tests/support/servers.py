"""Real servers on 127.0.0.1 for the tests about remote state: PostgreSQL (Debian's, a
fresh `initdb` in a temporary folder), an S3 endpoint (`moto_server`, a process of its
own, not an in-process mock) and `mlflow server` over either. Each is ended by PID.

Root cannot run PostgreSQL: as root (CI), the server runs as Debian's `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import free_port
from tests.support.sweeps import end_session

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def _wait(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            end_session(proc.pid)
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL is missing: .ci/run installs Debian's postgresql")
    pytest.skip("Debian's postgresql is not installed")
    raise AssertionError  # unreachable: skip raises


@contextlib.contextmanager
def postgres(log: Path, timeout: float = 60, *, fsync: bool = False) -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a fresh data folder; yields its SQLAlchemy URI
    (database `mlflow`, user `slotsweep`, trust authentication on loopback; the
    driver named, since SQLAlchemy 2.0 and 2.1 default to different ones). `fsync`: commits
    reach the disk, as on a deployed server (off by default: tests need no durability)."""
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else None
    # Not under pytest's tmp_path: root's 0700 folders keep the postgres user out.
    data = Path(tempfile.mkdtemp(prefix="slotsweep-pg-"))
    try:
        if as_root:
            shutil.chown(data, user="postgres", group="postgres")
        subprocess.run([postgres_bin("initdb"), "-D", str(data / "db"), "-U", "slotsweep",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, user=user,
                       capture_output=True, timeout=120)
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [postgres_bin("postgres"), "-D", str(data / "db"), "-h", "127.0.0.1",
                 "-p", str(port), "-k", str(data), "-c", f"fsync={'on' if fsync else 'off'}",
                 "-c", "max_connections=300"],
                user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = [postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]
            _wait(lambda: subprocess.run(ready).returncode == 0, proc, log, "PostgreSQL",
                  timeout)
            subprocess.run([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port),
                            "-U", "slotsweep", "mlflow"], check=True, timeout=60)
            yield f"postgresql+psycopg://slotsweep@127.0.0.1:{port}/mlflow"
        finally:
            end_session(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def s3_server(log: Path, timeout: float = 60) -> Iterator[dict[str, str]]:
    """`moto_server` on 127.0.0.1; yields the environment a client needs to use it
    (endpoint and fake credentials, for pyarrow, boto3 and MLflow alike)."""
    port = free_port()
    moto = str(Path(sys.executable).with_name("moto_server"))
    with log.open("w") as out:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _listening(port), proc, log, "moto_server", timeout)
        endpoint = f"http://127.0.0.1:{port}"
        yield {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint,
               "MLFLOW_S3_ENDPOINT_URL": endpoint}
    finally:
        end_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def make_bucket(env: dict[str, str], bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, log: Path, *, artifacts: str | None = None,
                  env: dict[str, str] | None = None, timeout: float = 120
                  ) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri`, serving artifacts from
    `artifacts` (e.g. `s3://bucket/mlartifacts`) when given; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Artifacts: `artifacts`, else a folder beside the log (MLflow's default is
    # ./mlartifacts in the server's working directory: never the checkout).
    cmd += ["--artifacts-destination", artifacts or (log.parent / "mlartifacts").as_uri()]
    full_env = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return True
        except OSError:
            return False

    try:
        _wait(healthy, proc, log, "mlflow server", timeout)
        yield url
    finally:
        end_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class Gate:
    """A TCP relay on 127.0.0.1 in front of a server's port, which a test closes (the
    endpoint gone: open connections reset, new ones refused) and opens again: the server
    keeps its state, as a real endpoint does across a network outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def iam_credentials(env: dict[str, str], user: str) -> dict[str, str]:
    """`env` with the key of a new IAM user allowed all of S3, for a `moto_server` that
    checks signatures (started with INITIAL_NO_AUTH_ACTION_COUNT=3: these three requests
    go unchecked, every later one needs a real key)."""
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    return {**env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
