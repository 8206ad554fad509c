"""The wheel works outside the checkout: built from this tree, installed in a fresh virtual
environment, and run from an empty folder, it finds its named sweeps, their configs and
the report template through importlib.resources, runs a short quickstart and renders it.

The fresh environment sees the test environment's site-packages through a `.pth` line, so
the dependencies (several GB with torch) are not installed twice; a path added by a `.pth`
line is not itself a site directory, so the checkout's editable-install hook there never
runs, and the test checks that `slotsweep` is imported from the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> Path:
    """A fresh venv with only the built wheel installed (dependencies borrowed)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(ROOT)], check=True)
    (wheel,) = (tmp / "dist").glob("slotsweep-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True)
    borrowed = Path(site.stdout.strip()) / "borrowed-dependencies.pth"
    borrowed.write_text(sysconfig.get_path("purelib") + "\n")
    return python


def run_from(cwd: Path, python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_carries_its_files_and_imports_from_itself(wheel_python, tmp_path):
    done = run_from(tmp_path, wheel_python, "-c", (
        "import slotsweep, slotsweep.sweep.spec as s, slotsweep.shipped as sh; "
        "print(slotsweep.__file__); print(s.SWEEPS_DIR); print(len(sh.known_sweeps()))"))
    assert done.returncode == 0, done.stderr
    module, sweeps, count = done.stdout.split()
    assert str(ROOT) not in module and str(wheel_python.parent.parent) in module
    assert Path(sweeps).is_relative_to(wheel_python.parent.parent)
    assert int(count) == len(list((ROOT / "sweeps").glob("*.yaml")))


def test_every_named_sweep_loads_from_the_wheel(wheel_python, tmp_path):
    names = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    code = ("import sys; from slotsweep.sweep.load import load_sweep\n"
            "for name in sys.argv[1:]: print(name, load_sweep(name).num_trials())")
    done = run_from(tmp_path, wheel_python, "-c", code, *names)
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == names


def test_a_users_own_sweep_dir_comes_first_and_can_build_on_shipped_configs(wheel_python,
                                                                           tmp_path):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "quickstart.yaml").write_text(
        "base: quickstart\nsearch_space:\n  train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "search: {num_samples: 3}\n")
    done = run_from(tmp_path, wheel_python, "-m", "slotsweep.run", "quickstart", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "train.lr" in done.stdout and "loss.proj_depth" not in done.stdout


def test_quickstart_and_its_report_run_from_the_wheel(wheel_python, tmp_path):
    dry = run_from(tmp_path, wheel_python, "-m", "slotsweep.run", "quickstart", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "loss.proj_depth" in dry.stdout

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    where = ["--storage", str(tmp_path / "runs"), "--tracking-uri", tracking]
    short = ["--set", "train.steps=8", "--set", "train.warmup_steps=2",
             "--set", "train.log_every=4", "--set", "train.checkpoint_every=4",
             "--set", "eval.every=4", "--set", "eval.max_images=16",
             "--set", "data.synthetic_train=64", "--set", "data.synthetic_val=16"]
    done = run_from(tmp_path, wheel_python, "-m", "slotsweep.run", "quickstart",
                    "--address", "local", "--num-cpus", "2", "--quiet", "--num-samples", "2",
                    *short, *where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not finished" not in done.stdout
    client = MlflowClient(tracking)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if "val/fg_ari" in r.data.metrics]
    assert len(trials) == 2  # --num-samples, not the sweep file's 6

    report = run_from(tmp_path, wheel_python, "-m", "slotsweep.report", "quickstart",
                      "--out", str(tmp_path / "report.html"), *where)
    assert report.returncode == 0, report.stdout + report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<html" in page and "quickstart" in page
