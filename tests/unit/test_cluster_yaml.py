"""cluster.yaml, checked offline through Ray's own code paths.

- Ray's validation (`prepare_config` + `validate_config`, as `ray up` runs them) accepts
  it and rejects broken copies.
- Ray's AWS bootstrap (`_bootstrap_config`, the step of `ray up` before any instance is
  launched) runs against moto's mocked AWS: key pair, head IAM profile, subnets and a
  security group that opens nothing to the internet but SSH.
- The shell commands parse as Ray runs them; the MLflow and EFS commands are run with
  stub binaries to see what they would really execute; rsync skips what it should.
- No AWS secret is in the file, and the cluster pins the Ray that runs `ray up`.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import jsonschema
import pytest
import ray
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.support.cluster import (
    CLUSTER_YAML,
    COMMAND_KEYS,
    ROOT,
    load,
    one_command,
    run_stubbed,
    stub_calls,
)

# --- Ray's offline validation -------------------------------------------------------


def test_ray_validation_accepts_cluster_yaml():
    config = prepare_config(load())
    validate_config(config)

    # Our command lists replaced Ray's defaults (which install a nightly Ray wheel).
    assert not any("ray-wheels" in c for key in COMMAND_KEYS for c in config[key])
    head = config["head_node_type"]
    workers = {k: v for k, v in config["available_node_types"].items() if k != head}
    assert workers, "no worker node types"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, f"{name} keeps GPUs running while idle"
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} declares no GPU"
        assert 0 < node_type["max_workers"] <= config["max_workers"]
    assert config["available_node_types"][head]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize("break_it", [
    pytest.param(lambda c: c.update(max_worker=8), id="unknown top-level key"),
    pytest.param(lambda c: c.update(max_workers="eight"), id="max_workers not an integer"),
    pytest.param(lambda c: c["available_node_types"]["ray.worker.a10g.1x"].update(min_worker=0),
                 id="unknown node-type key"),
    pytest.param(lambda c: c["available_node_types"]["ray.worker.a10g.1x"]["resources"]
                 .update(GPU="1"), id="GPU count a string"),
    pytest.param(lambda c: c["auth"].update(ssh_usr="ubuntu"), id="unknown auth key"),
])
def test_ray_validation_rejects_broken_copies(break_it):
    broken = copy.deepcopy(load())
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# --- The shell commands ----------------------------------------------------------------


def test_every_command_parses_as_ray_runs_it():
    # Ray runs each command as `bash -c -i '... && (COMMAND)'`, after `export VAR=...;`.
    config = load()
    for key in COMMAND_KEYS:
        for command in config[key]:
            proc = subprocess.run(["bash", "-n", "-c", f"export RAY_HEAD_IP=10.0.0.1; ({command})"],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, f"{key}: {command}\n{proc.stderr}"


def test_mlflow_server_is_not_restarted_when_it_answers(tmp_path):
    command = one_command(load(), "head_start_ray_commands", "mlflow server")
    proc = run_stubbed(command, tmp_path, {"hostname": "echo 10.0.3.7", "curl": "exit 0",
                                           "mlflow": "exit 0"})
    assert proc.returncode == 0, proc.stderr
    assert stub_calls(tmp_path, "curl")[0][-1] == "http://10.0.3.7:5000/health"
    assert stub_calls(tmp_path, "mlflow") == []


def test_efs_mount_refuses_the_placeholder_and_mounts_a_real_id(tmp_path):
    config = load()
    command = one_command(config, "initialization_commands", "EFS_ID=")
    stubs = {"mountpoint": "exit 1", "sudo": "exit 0"}  # not mounted yet; sudo does nothing

    if "REPLACE_ME" in command:  # as shipped: stop before touching anything
        (tmp_path / "placeholder").mkdir()
        proc = run_stubbed(command, tmp_path / "placeholder", stubs)
        assert proc.returncode != 0 and "EFS_ID" in proc.stderr
        assert stub_calls(tmp_path / "placeholder", "sudo") == []

    filled = re.sub(r"EFS_ID=\S+;", "EFS_ID=fs-0123456789abcdef0;", command)
    (tmp_path / "filled").mkdir()
    proc = run_stubbed(filled, tmp_path / "filled", stubs)
    assert proc.returncode == 0, proc.stderr
    mounts = [c for c in stub_calls(tmp_path / "filled", "sudo") if c[0] == "mount"]
    region = config["provider"]["region"]
    assert len(mounts) == 1
    assert mounts[0][-2:] == [f"fs-0123456789abcdef0.efs.{region}.amazonaws.com:/", "/mnt/shared"]
    assert "nfsvers=4.1" in mounts[0][mounts[0].index("-o") + 1]


def test_head_and_workers_share_one_ray_auth_token(tmp_path):
    config = load()
    shared = tmp_path / "shared"
    (shared / "slotsweep").mkdir(parents=True)
    head_command = one_command(config, "head_setup_commands", "auth_token")
    worker_command = one_command(config, "worker_setup_commands", "auth_token")
    # What `ray get-auth-token --generate` does: write a new token to ~/.ray/auth_token.
    generate = "mkdir -p ~/.ray && printf tok-1 > ~/.ray/auth_token"

    for node in ("head", "head-again", "worker"):
        (tmp_path / node).mkdir()
        command = worker_command if node == "worker" else head_command
        proc = run_stubbed(command.replace("/mnt/shared", str(shared)), tmp_path / node,
                           {"ray": generate if node == "head" else "exit 1"})
        assert proc.returncode == 0, f"{node}: {proc.stderr}"
        token = tmp_path / node / ".ray" / "auth_token"
        assert token.read_text() == "tok-1" and token.stat().st_mode & 0o777 == 0o600, node
    assert (shared / "slotsweep" / "ray_auth_token").stat().st_mode & 0o777 == 0o600
    # Every node runs Ray with token authentication on (RAY_AUTH_MODE must match everywhere).
    assert "export RAY_AUTH_MODE=token" in one_command(config, "setup_commands", "RAY_AUTH_MODE")


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_syncs_the_code_and_skips_data(tmp_path):
    config = load()
    runner = SSHCommandRunner(log_prefix="", node_id="head", provider=None,
                              auth_config={"ssh_user": "ubuntu"}, cluster_name="slotsweep",
                              process_runner=subprocess, use_internal_ip=False)
    args = runner._create_rsync_filter_args(
        {"rsync_exclude": config["rsync_exclude"], "rsync_filter": config["rsync_filter"]})
    assert config["file_mounts"] == {"~/slotsweep": "."}
    listing = subprocess.run(["rsync", "-an", "--out-format=%n", *args, f"{ROOT}/",
                              str(tmp_path / "dst")], capture_output=True, text=True, check=True)
    synced = set(listing.stdout.splitlines())
    assert {"pyproject.toml", "cluster.yaml", "slotsweep/data/format.py",
            "slotsweep/data/sources/coco.py"} <= synced
    skipped = ("data/", "runs/", ".git/", ".venv/", "venv/", "mlruns")
    assert not [p for p in synced if p.startswith(skipped) or "__pycache__" in p]


# --- Secrets and versions ----------------------------------------------------------------

SECRET_PATTERNS = [r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"aws_secret_access_key",
                   r"aws_session_token", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"]


def secret_like(text: str) -> list[str]:
    return [p for p in SECRET_PATTERNS if re.search(p, text, flags=re.IGNORECASE)]


def test_no_aws_secrets_in_cluster_yaml():
    assert secret_like(CLUSTER_YAML.read_text()) == []
    assert "aws_credentials" not in load()["provider"]
    assert secret_like("aws_access_key_id: AKIAABCDEFGHIJKLMNOP") != []  # the check can fail


def test_cluster_runs_the_ray_that_runs_ray_up():
    install = one_command(load(), "setup_commands", "pip install")
    assert f'"ray[default]=={ray.__version__}"' in install


# --- Ray's AWS bootstrap against moto ---------------------------------------------------
