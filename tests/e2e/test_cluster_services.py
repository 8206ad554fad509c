"""End-to-end half of test_cluster_yaml.py: the tests marked slow (see that file).

- The head's PostgreSQL and MLflow commands run for real here: Debian's PostgreSQL stands
  in for Ubuntu's (set up the way the package sets its cluster up, started by the test
  where the head's systemd would start it), a `moto_server` process for S3 (no AWS is
  reachable; its fake keys stand in for the head's instance credentials).
- Ray's AWS bootstrap runs against moto's mocked AWS, with the IAM roles and instance
  profiles that docs/cluster.md creates from aws/*.json.
- The IAM policies of aws/ are enforced by moto's S3 endpoint against each node's requests.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from ray.autoscaler._private import commands
from ray.autoscaler._private.aws import config as aws_config
from ray.autoscaler._private.aws import utils as aws_utils

from tests.support.browser import free_port
from tests.support.cluster import (
    COMMAND_KEYS,
    SUDO,
    enforce_iam,
    load,
    one_command,
    policy,
    real_mlflow_keeping_pid,
    run_stubbed,
    stub_calls,
    ubuntu_like_postgres,
)
from tests.support.servers import make_bucket, s3_server
from tests.support.sweeps import end_session

pytestmark = pytest.mark.slow

BUCKET = "slotsweep-test"


def public_rules(ip_permissions: list[dict]) -> list[tuple]:
    """(protocol, from port, to port) of every inbound rule open to a non-private network."""
    out = []
    for rule in ip_permissions:
        cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])]
        cidrs += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
        if any(not ipaddress.ip_network(c).is_private for c in cidrs):
            out.append((rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")))
    return out


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_server_binds_the_private_address(tmp_path):
    from mlflow.cli import server

    command = one_command(load(), "head_start_ray_commands", "mlflow server")
    proc = run_stubbed(command, tmp_path, {
        "hostname": "echo '10.0.3.7 172.17.0.1 '",  # `hostname -I`: private address first
        "curl": "exit 7",  # no MLflow answering yet
        "mlflow": (f"echo \"$MLFLOW_SERVER_ENABLE_JOB_EXECUTION $MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"
                   f" $MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW\" > {tmp_path}/job_execution"),
    }, {"SLOTSWEEP_BUCKET": "my-bucket"})
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 20  # the server is started in the background
    while not (tmp_path / "job_execution").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (argv,) = stub_calls(tmp_path, "mlflow")
    assert argv[0] == "server"
    params = server.make_context("server", argv[1:]).params  # MLflow's own option parser
    assert params["host"] == "10.0.3.7"
    assert params["port"] == 5000 and params["workers"] == "1"
    # Runs in PostgreSQL on the head's loopback; no password on the command line.
    assert params["backend_store_uri"] == "postgresql+psycopg://mlflow@127.0.0.1/mlflow"
    # Artifacts proxied to the bucket: clients get mlflow-artifacts:/ URIs, never s3://.
    assert params["artifacts_destination"] == "s3://my-bucket/mlartifacts"
    assert params["serve_artifacts"] and params["default_artifact_root"] is None
    # No job runner; a database pool that 32+ concurrent clients do not exhaust.
    assert (tmp_path / "job_execution").read_text().split() == ["false", "80", "0"]

    # Nothing anywhere binds every interface (comments may say why not).
    config = load()
    assert not any("0.0.0.0" in c for key in COMMAND_KEYS for c in config[key])
    assert "--dashboard-host=127.0.0.1" in one_command(config, "head_start_ray_commands",
                                                       "ray start --head")


def _clear_boto_caches():
    aws_utils.resource_cache.cache_clear()
    aws_utils.client_cache.cache_clear()
    aws_config._get_subnets_or_die.cache_clear()


def create_roles_and_profiles(bucket: str) -> None:
    """What docs/cluster.md's `aws iam` commands create, as boto3 calls (the same API)."""
    iam = boto3.client("iam")
    account = boto3.client("sts").get_caller_identity()["Account"]
    for node in ("head", "worker"):
        name = f"slotsweep-{node}"
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=policy("ec2-trust-policy",
                                                                        bucket=bucket))
        # moto checks the document's grammar, as IAM does
        iam.put_role_policy(RoleName=name, PolicyName=f"{name}-bucket",
                            PolicyDocument=policy(f"{node}-policy", bucket=bucket,
                                                  account=account))
        iam.create_instance_profile(InstanceProfileName=name)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    iam.attach_role_policy(RoleName="slotsweep-head",
                           PolicyArn="arn:aws:iam::aws:policy/AmazonEC2FullAccess")


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """cluster.yaml after `ray up`'s bootstrap in a mocked AWS account (still mocked),
    with the roles and instance profiles of docs/cluster.md created first."""
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
            create_roles_and_profiles(BUCKET)
            yield commands._bootstrap_config(load(), no_config_cache=True), home
        _clear_boto_caches()


def test_bootstrap_creates_key_pair_and_groups_and_uses_our_profiles(bootstrapped):
    config, home = bootstrapped
    region = config["provider"]["region"]
    ec2 = boto3.client("ec2", region_name=region)
    node_types = config["available_node_types"]

    key_path = Path(config["auth"]["ssh_private_key"])
    assert key_path.parent == home / ".ssh" and key_path.stat().st_mode & 0o777 == 0o600
    key_names = {t["node_config"]["KeyName"] for t in node_types.values()}
    assert len(key_names) == 1
    assert ec2.describe_key_pairs(KeyNames=list(key_names))["KeyPairs"]

    # Every node launches with a profile of docs/cluster.md, each profile holds its role
    # with the bucket policy; Ray made no default role (full EC2 and S3 rights) of its own.
    iam = boto3.client("iam")
    for name, node_type in node_types.items():
        profile_name = node_type["node_config"]["IamInstanceProfile"]["Name"]
        (role,) = iam.get_instance_profile(InstanceProfileName=profile_name)[
            "InstanceProfile"]["Roles"]
        assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"], name
    assert "IamInstanceProfile" not in config.get("head_node", {})
    assert {r["RoleName"] for r in iam.list_roles()["Roles"]} == {"slotsweep-head",
                                                                 "slotsweep-worker"}

    for name, node_type in node_types.items():
        assert node_type["node_config"]["SecurityGroupIds"], name
        assert node_type["node_config"]["SubnetIds"], name
    assert node_types["ray.worker.a10g.4x"]["resources"]["GPU"] == 4


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


# --- The IAM policies, enforced ------------------------------------------------------------


def _s3_outcome(client, operation: str, key: str, bucket: str = BUCKET) -> str:
    try:
        if operation == "put":
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
        elif operation == "get":
            client.get_object(Bucket=bucket, Key=key)
        else:
            client.delete_object(Bucket=bucket, Key=key)
        return "allowed"
    except ClientError as err:
        assert err.response["Error"]["Code"] == "AccessDenied", err
        return "denied"


def test_iam_policies_give_each_node_its_prefixes_only(tmp_path):
    """Each node's requests against an S3 endpoint that enforces aws/*.json (moto's access
    control; users stand in for the instance roles: the same identity policies). Listing
    is not checked here: moto asks for `s3:ListObjectsV2` where IAM asks `s3:ListBucket`."""
    with s3_server(tmp_path / "s3.log") as env:
        endpoint = env["AWS_ENDPOINT_URL"]
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        make_bucket(env, BUCKET)
        make_bucket(env, "someone-else")
        admin = boto3.client("s3", **setup)
        for key in ("data/coco/val/manifest.json", "mlartifacts/1/r/a.txt", "sweeps/s/x"):
            admin.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        iam = boto3.client("iam", **setup)
        clients = {}
        for node in ("head", "worker"):
            iam.create_user(UserName=node)
            iam.put_user_policy(UserName=node, PolicyName="bucket",
                                PolicyDocument=policy(f"{node}-policy", bucket=BUCKET))
            key = iam.create_access_key(UserName=node)["AccessKey"]
            clients[node] = boto3.client(
                "s3", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        enforce_iam(endpoint)

        worker, head = clients["worker"], clients["head"]
        # Workers: sweep state and checkpoints (written, pruned), shards (read only).
        assert _s3_outcome(worker, "put", "sweeps/coco/run-001/ckpt") == "allowed"
        assert _s3_outcome(worker, "delete", "sweeps/s/x") == "allowed"
        assert _s3_outcome(worker, "get", "data/coco/val/manifest.json") == "allowed"
        assert _s3_outcome(worker, "put", "data/coco/val/manifest.json") == "denied"
        # MLflow's artifacts go through the head's server: workers cannot touch them.
        assert _s3_outcome(worker, "get", "mlartifacts/1/r/a.txt") == "denied"
        assert _s3_outcome(worker, "put", "mlartifacts/1/r/b.txt") == "denied"
        # The head: the driver's sweep state, MLflow's artifacts, uploads of shards.
        for key in ("sweeps/coco/state.json", "mlartifacts/1/r/b.txt", "data/coco/x.arrow",
                    "backups/mlflow.sql"):
            assert _s3_outcome(head, "put", key) == "allowed", key
        assert _s3_outcome(head, "get", "mlartifacts/1/r/a.txt") == "allowed"
        # Nobody: another prefix, another bucket.
        for client in (head, worker):
            assert _s3_outcome(client, "put", "elsewhere/x") == "denied"
            assert _s3_outcome(client, "put", "sweeps/x", bucket="someone-else") == "denied"


# --- The head's PostgreSQL and MLflow, for real ------------------------------------------------


def _wait_healthy(url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"MLflow did not answer:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


def _run_head_setup(config: dict, home: Path, env: dict[str, str]) -> None:
    stubs = {"sudo": SUDO, "apt-get": "exit 0", "systemctl": "exit 0"}
    for needle in ("install -y postgresql", "listen_addresses", ".pgpass"):
        proc = run_stubbed(one_command(config, "head_setup_commands", needle), home, stubs, env)
        assert proc.returncode == 0, f"{needle}: {proc.stderr}"
    # Ubuntu's service is enabled and started (here the test started the server).
    assert ["enable", "--now", "postgresql"] in stub_calls(home, "systemctl")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_head_starts_postgresql_and_mlflow_with_artifacts_in_s3(tmp_path):
    import mlflow

    config = load()
    home = tmp_path / "head"
    home.mkdir()
    with ubuntu_like_postgres(tmp_path / "pg.log") as pg, s3_server(tmp_path / "s3.log") as s3:
        make_bucket(s3, BUCKET)
        env = {**pg, **s3, "SLOTSWEEP_BUCKET": BUCKET}
        _run_head_setup(config, home, env)
        pgpass = (home / ".pgpass").read_text()
        assert (home / ".pgpass").stat().st_mode & 0o777 == 0o600
        _run_head_setup(config, home, env)  # `ray up` again: same role, database, password
        assert (home / ".pgpass").read_text() == pgpass and pgpass.count("\n") == 1
        password = pgpass.strip().rsplit(":", 1)[1]

        port = free_port()
        start = one_command(config, "head_start_ray_commands", "mlflow server")
        real_mlflow_keeping_pid(home / "bin", home / "mlflow.pid")
        proc = run_stubbed(start.replace("MLFLOW_PORT=5000", f"MLFLOW_PORT={port}"), home,
                           {"hostname": "echo '127.0.0.1 '"}, env)
        assert proc.returncode == 0, proc.stderr
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, home / "mlflow.log")
            # A worker's client: no AWS credentials, only the tracking server's address.
            client = mlflow.MlflowClient(url)
            run = client.create_run(client.create_experiment("cluster-head"))
            client.log_param(run.info.run_id, "loss.beta", "0.1")
            client.log_metric(run.info.run_id, "fg_ari", 0.42, step=3)
            note = tmp_path / "summary.json"
            note.write_text(json.dumps({"fg_ari": 0.42}))
            client.log_artifact(run.info.run_id, str(note))
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

            # The run is in PostgreSQL, reached as the head's `mlflow` role with its password.
            with psycopg.connect(host="127.0.0.1", port=int(pg["PGPORT"]), user="mlflow",
                                 password=password, dbname="mlflow") as db, db.cursor() as cur:
                cur.execute("SELECT key, value FROM params WHERE run_uuid = %s",
                            (run.info.run_id,))
                assert cur.fetchall() == [("loss.beta", "0.1")]
                cur.execute("SELECT value, step FROM metrics WHERE run_uuid = %s",
                            (run.info.run_id,))
                assert cur.fetchall() == [(0.42, 3)]
            # The artifact is in the bucket, under mlartifacts/.
            s3_client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"],
                                     region_name="us-east-1", aws_access_key_id="testing",
                                     aws_secret_access_key="testing")
            keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET)["Contents"]]
            assert [k for k in keys if k.endswith("/summary.json")] == [
                f"mlartifacts/{run.info.experiment_id}/{run.info.run_id}/artifacts/summary.json"]

            # `ray up` again with the server running: it is kept, not started twice.
            again = run_stubbed(start.replace("MLFLOW_PORT=5000", f"MLFLOW_PORT={port}"),
                                home, {"hostname": "echo '127.0.0.1 '"}, env)
            assert again.returncode == 0 and "MLflow already running" in again.stdout
        finally:
            if (home / "mlflow.pid").exists():
                end_session(int((home / "mlflow.pid").read_text()))
