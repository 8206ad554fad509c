"""cluster.yaml, checked offline through Ray's own code paths.

- Ray's validation (`prepare_config` + `validate_config`, as `ray up` runs them) accepts
  it and rejects broken copies; every node type wears the IAM profile docs/cluster.md
  creates, and the head's policy may pass exactly the workers' role.
- The shell commands parse as Ray runs them; the bucket, MLflow and PostgreSQL commands
  are run with stub binaries to see what they would really execute; rsync skips what it
  should; Ray's own head-config rewrite carries your auth token on to the workers.
- No AWS secret is in the file, and the cluster pins the Ray that runs `ray up`.
The end-to-end half (tests/e2e/test_cluster_services.py) runs the head's PostgreSQL and
MLflow commands for real, the AWS bootstrap under moto, and the IAM policies against an
S3 endpoint that enforces them.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.commands import _set_up_config_for_head_node
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.node_provider import NodeProvider

from tests.support.cluster import (
    AWS_DIR,
    CLUSTER_YAML,
    COMMAND_KEYS,
    ROOT,
    load,
    one_command,
    policy,
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
                                           "mlflow": "exit 0"}, {"SLOTSWEEP_BUCKET": "b-1"})
    assert proc.returncode == 0, proc.stderr
    assert stub_calls(tmp_path, "curl")[0][-1] == "http://10.0.3.7:5000/health"
    assert stub_calls(tmp_path, "mlflow") == []


def test_mlflow_server_is_not_started_without_a_bucket(tmp_path):
    command = one_command(load(), "head_start_ray_commands", "mlflow server")
    proc = run_stubbed(command, tmp_path, {"hostname": "echo 10.0.3.7", "curl": "exit 7",
                                           "mlflow": "exit 0"})
    assert proc.returncode != 0 and "SLOTSWEEP_BUCKET" in proc.stderr
    assert stub_calls(tmp_path, "mlflow") == []


def _environment_after(command: str, home) -> dict[str, str]:
    """The variables ~/.slotsweep_env exports, as a later command's bash sees them."""
    show = "set -a; . ~/.slotsweep_env 2>/dev/null; env -0"
    # `source ~/venv/bin/activate` fails here (no venv): the exports still apply.
    out = subprocess.run(["bash", "-c", show], env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_bucket_placeholder_is_refused_and_a_name_sets_every_node_up(tmp_path):
    config = load()
    command = one_command(config, "setup_commands", "BUCKET=")

    def run_with(bucket: str | None, where: str):
        home = tmp_path / where
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text("tok-1")  # as file_mounts leaves it: 0644
        (home / ".ray" / "auth_token").chmod(0o644)
        filled = command if bucket is None else re.sub(r"BUCKET=\S+;", f"BUCKET={bucket};",
                                                        command, count=1)
        return home, run_stubbed(filled, home, {})

    if "BUCKET=REPLACE_ME" in command:  # as shipped: stop before writing anything
        home, proc = run_with(None, "placeholder")
        assert proc.returncode != 0 and "set BUCKET" in proc.stderr
        assert not (home / ".slotsweep_env").exists()
    for bad in ("s3://my-bucket", "My_Bucket", ""):
        home, proc = run_with(bad, f"bad-{len(bad)}")
        assert proc.returncode != 0 and "not an S3 bucket name" in proc.stderr, bad
        assert not (home / ".slotsweep_env").exists()

    home, proc = run_with("my-sweeps.bucket-1", "filled")
    assert proc.returncode == 0, proc.stderr
    env = _environment_after(command, home)
    assert env["SLOTSWEEP_BUCKET"] == "my-sweeps.bucket-1"
    assert env["SLOTSWEEP_STORAGE"] == "s3://my-sweeps.bucket-1/sweeps"
    assert env["AWS_DEFAULT_REGION"] == config["provider"]["region"]
    assert env["RAY_AUTH_MODE"] == "token"  # must match on every node
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    assert "slotsweep_env" in (home / ".bashrc").read_text()
    run_stubbed(re.sub(r"BUCKET=\S+;", "BUCKET=my-sweeps.bucket-1;", command, count=1), home, {})
    assert len((home / ".bashrc").read_text().splitlines()) == 1  # a re-run adds nothing


def test_your_ray_auth_token_reaches_the_head_and_every_worker():
    config = prepare_config(load())
    # `ray up` copies file_mounts from your machine to the head ...
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # ... and Ray's rewrite of the config for the head's autoscaler makes the head's copy
    # the source for every worker it launches.
    provider = NodeProvider(config["provider"], config["cluster_name"])
    _, remote_file = _set_up_config_for_head_node(copy.deepcopy(config), provider, False)
    remote = json.loads(Path(remote_file.name).read_text())
    assert remote["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # No node makes a token of its own, and nothing is kept on a shared file system.
    commands = [c for key in COMMAND_KEYS for c in config[key]]
    assert not [c for c in commands if "--generate" in c or "/mnt/shared" in c]


def test_postgresql_listening_beyond_localhost_is_refused(tmp_path):
    command = one_command(load(), "head_setup_commands", "listen_addresses")
    sudo = 'case "$*" in *listen_addresses*) echo "*";; *) exit 0;; esac'
    proc = run_stubbed(command, tmp_path, {"sudo": sudo})
    assert proc.returncode != 0 and "listens on '*'" in proc.stderr
    assert len(stub_calls(tmp_path, "sudo")) == 1  # no role or database was touched


def test_nodes_wear_the_profiles_whose_roles_the_policies_name():
    node_types = load()["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"] for name, t in node_types.items()}
    assert profiles.pop(load()["head_node_type"]) == {"Name": "slotsweep-head"}
    assert set(map(json.dumps, profiles.values())) == {json.dumps({"Name": "slotsweep-worker"})}

    head = json.loads(policy("head-policy", bucket="b-1", account="111122223333"))
    passes = [s for s in head["Statement"] if "iam:PassRole" in str(s["Action"])]
    # The head may hand exactly the workers' role to EC2, nothing else.
    assert [s["Resource"] for s in passes] == ["arn:aws:iam::111122223333:role/slotsweep-worker"]
    assert passes[0]["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
    worker = (AWS_DIR / "worker-policy.json").read_text()
    assert "iam:" not in worker and "mlartifacts" not in worker  # MLflow's go through the head
    trust = json.loads((AWS_DIR / "ec2-trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_syncs_the_code_and_skips_data(tmp_path):
    config = load()
    runner = SSHCommandRunner(log_prefix="", node_id="head", provider=None,
                              auth_config={"ssh_user": "ubuntu"}, cluster_name="slotsweep",
                              process_runner=subprocess, use_internal_ip=False)
    args = runner._create_rsync_filter_args(
        {"rsync_exclude": config["rsync_exclude"], "rsync_filter": config["rsync_filter"]})
    assert config["file_mounts"]["~/slotsweep"] == "."
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

