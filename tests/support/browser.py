"""Headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run) driven
by Selenium, and a real `mlflow server` on 127.0.0.1 for the UI tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Skip where no browser is installed, but never in CI, whose `.ci/run` installs it."""
    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: .ci/run installs Debian's "
                    "chromium and chromium-driver")
    pytest.skip("Debian's chromium and chromium-driver are not installed")


@contextlib.contextmanager
def chromium():
    """A Selenium WebDriver on headless Chromium with a fresh profile."""
    require_chromium()
    from slotsweep.reporting.chromium import headless

    with headless(CHROMIUM, CHROMEDRIVER) as driver:
        yield driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, log: Path, timeout: float = 120):
    """`mlflow server` on 127.0.0.1 over `backend_uri`; yields its base URL; ends it by PID."""
    from tests.support.sweeps import end_session

    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mlflow server did not start:\n{log.read_text()}") from exc
                time.sleep(0.3)
        yield url, proc
    finally:
        end_session(proc.pid)
