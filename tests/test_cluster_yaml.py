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
import ipaddress
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import jsonschema
import pytest
import ray
import yaml
from moto import mock_aws
from ray.autoscaler._private import commands
from ray.autoscaler._private.aws import config as aws_config
from ray.autoscaler._private.aws import utils as aws_utils
from ray.autoscaler._private.command_runner import SSHCommandRunner
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def one_command(config: dict, key: str, needle: str) -> str:
    """The single command in `config[key]` that contains `needle`."""
    found = [c for c in config[key] if needle in c]
    assert len(found) == 1, f"expected one command with {needle!r} in {key}, got {found}"
    return found[0]


def public_rules(ip_permissions: list[dict]) -> list[tuple]:
    """(protocol, from port, to port) of every inbound rule open to a non-private network."""
    out = []
    for rule in ip_permissions:
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
        cidrs += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        if any(not ipaddress.ip_network(c).is_private for c in cidrs):
            out.append((rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")))
    return out


def run_stubbed(command: str, tmp_path: Path, stubs: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one cluster.yaml command in a subshell, as Ray does, with stub binaries first on
    PATH. Each stub appends its argv (one per line, then `--`) to tmp_path/NAME.calls and
    then runs its shell body; privileged or networked commands never run for real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" -- >> {tmp_path / name}.calls\n{body}\n")
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    return subprocess.run(["bash", "-c", f"({command})"], env=env, capture_output=True,
                          text=True, timeout=60)


def stub_calls(tmp_path: Path, name: str) -> list[list[str]]:
    """The argv of each call of stub `name`, in order."""
    path = tmp_path / f"{name}.calls"
    if not path.exists():
        return []
    calls, argv = [], []
    for line in path.read_text().splitlines():
        if line == "--":
            calls.append(argv)
            argv = []
        else:
            argv.append(line)
    return calls


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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_server_binds_the_private_address(tmp_path):
    from mlflow.cli import server

    command = one_command(load(), "head_start_ray_commands", "mlflow server")
    proc = run_stubbed(command, tmp_path, {
        "hostname": "echo '10.0.3.7 172.17.0.1 '",  # `hostname -I`: private address first
        "curl": "exit 7",  # no MLflow answering yet
        "mlflow": f"echo \"$MLFLOW_SERVER_ENABLE_JOB_EXECUTION\" > {tmp_path}/job_execution",
    })
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 20  # the server is started in the background
    while not (tmp_path / "job_execution").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (argv,) = stub_calls(tmp_path, "mlflow")
    assert argv[0] == "server"
    params = server.make_context("server", argv[1:]).params  # MLflow's own option parser
    assert params["host"] == "10.0.3.7"
    assert params["port"] == 5000 and params["workers"] == "1"
    assert params["backend_store_uri"] == "sqlite:////mnt/shared/slotsweep/mlflow.db"
    assert params["default_artifact_root"].startswith("/mnt/shared/slotsweep/")
    assert (tmp_path / "job_execution").read_text().strip() == "false"

    # Nothing anywhere binds every interface (comments may say why not).
    config = load()
    assert not any("0.0.0.0" in c for key in COMMAND_KEYS for c in config[key])
    assert "--dashboard-host=127.0.0.1" in one_command(config, "head_start_ray_commands",
                                                       "ray start --head")


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
    assert {"pyproject.toml", "cluster.yaml", "slotsweep/data/shards.py"} <= synced
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


def _clear_boto_caches():
    aws_utils.resource_cache.cache_clear()
    aws_utils.client_cache.cache_clear()
    aws_config._get_subnets_or_die.cache_clear()


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """cluster.yaml after `ray up`'s bootstrap in a mocked AWS account (still mocked)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "HOME": str(home),  # the bootstrap writes the new key pair to ~/.ssh
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_CONFIG_FILE": str(home / "none"),  # never your real profile
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",  # the head role attaches AWS policies
        }.items():
            mp.setenv(key, value)
        # The bootstrap waits 2 x 15 s for IAM to propagate; moto needs no wait.
        mp.setattr(aws_config, "time", SimpleNamespace(sleep=lambda seconds: None))
        _clear_boto_caches()  # boto3 resources cached outside the mock must not be reused
        with mock_aws():
            yield commands._bootstrap_config(load(), no_config_cache=True), home
        _clear_boto_caches()


@pytest.mark.slow
def test_bootstrap_creates_key_pair_head_profile_and_groups(bootstrapped):
    config, home = bootstrapped
    region = config["provider"]["region"]
    ec2 = boto3.client("ec2", region_name=region)
    node_types = config["available_node_types"]

    key_path = Path(config["auth"]["ssh_private_key"])
    assert key_path.parent == home / ".ssh" and key_path.stat().st_mode & 0o777 == 0o600
    key_names = {t["node_config"]["KeyName"] for t in node_types.values()}
    assert len(key_names) == 1
    assert ec2.describe_key_pairs(KeyNames=list(key_names))["KeyPairs"]

    profile_arn = config["head_node"]["IamInstanceProfile"]["Arn"]
    profile = boto3.client("iam").get_instance_profile(
        InstanceProfileName=profile_arn.rsplit("/", 1)[-1])["InstanceProfile"]
    assert profile["Roles"], "the head's instance profile has no role"
    assert not [k for k, t in node_types.items() if "IamInstanceProfile" in t["node_config"]]

    for name, node_type in node_types.items():
        assert node_type["node_config"]["SecurityGroupIds"], name
        assert node_type["node_config"]["SubnetIds"], name
    assert node_types["ray.worker.a10g.4x"]["resources"]["GPU"] == 4


@pytest.mark.slow
def test_security_groups_expose_only_ssh(bootstrapped):
    config, _ = bootstrapped
    ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    group_ids = sorted({g for t in config["available_node_types"].values()
                        for g in t["node_config"]["SecurityGroupIds"]})
    groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == [config["provider"]["security_group"]["GroupName"]]
    for group in groups:
        assert public_rules(group["IpPermissions"]) == [("tcp", 22, 22)], group["GroupName"]
        peers = {p["GroupId"] for r in group["IpPermissions"] for p in r["UserIdGroupPairs"]}
        assert peers == set(group_ids), "intra-cluster traffic should come from the group only"

    declared = config["provider"]["security_group"].get("IpPermissions", [])
    assert set(public_rules(declared)) <= {("tcp", 22, 22)}
    # The check can fail: MLflow or the dashboard open to the world is caught.
    assert public_rules([{"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000,
                          "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]) == [("tcp", 5000, 5000)]
