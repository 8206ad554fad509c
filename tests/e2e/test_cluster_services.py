"""End-to-end half of test_cluster_yaml.py: the tests marked slow (see that file)."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws
from ray.autoscaler._private import commands
from ray.autoscaler._private.aws import config as aws_config
from ray.autoscaler._private.aws import utils as aws_utils

from tests.support.cluster import COMMAND_KEYS, load, one_command, run_stubbed, stub_calls


def public_rules(ip_permissions: list[dict]) -> list[tuple]:
    """(protocol, from port, to port) of every inbound rule open to a non-private network."""
    out = []
    for rule in ip_permissions:
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
        cidrs += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        if any(not ipaddress.ip_network(c).is_private for c in cidrs):
            out.append((rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")))
    return out


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
