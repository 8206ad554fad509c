"""Safety: nothing the project loads can run code, and nothing it serves listens beyond
127.0.0.1 unless configured. (cluster.yaml's security groups: test_cluster_yaml.py.)"""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from slotsweep.data.format import MANIFEST
from slotsweep.training import checkpoint

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "slotsweep").rglob("*.py"))


def _calls(name: str):
    """(file, call node) for every call of `...name(...)` in the package."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    yield path, node


def test_every_torch_load_is_weights_only():
    calls = [(p, n) for p, n in _calls("load")
             if isinstance(n.func, ast.Attribute) and getattr(n.func.value, "id", "") == "torch"]
    assert calls, "no torch.load found: the scan is broken"
    for path, node in calls:
        flags = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in flags and getattr(flags["weights_only"], "value", None) is True, (
            f"{path.relative_to(ROOT)}:{node.lineno}: torch.load without weights_only=True")


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    ran = []

    class Payload:
        def __reduce__(self):
            return (ran.append, ("code ran",))

    step = tmp_path / "step-00000001"
    step.mkdir()
    buffer = io.BytesIO()
    torch.save({"model": {}, "step": 1, "payload": Payload()}, buffer)  # a real torch.save
    (step / "state.pt").write_bytes(buffer.getvalue())
    with pytest.raises(checkpoint.CheckpointError, match=str(step)):
        checkpoint.load(step)
    assert ran == []


def test_no_pickle_anywhere_in_the_data_path():
    for path in sorted((ROOT / "slotsweep" / "data").rglob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    for a in n.names} | {n.module for n in ast.walk(tree)
                                         if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib"}, path


def test_shards_hold_only_plain_numeric_arrays(dsprites16):
    """Arrow IPC with primitive and fixed-size-list columns: no Python objects, no
    extension types whose deserialisation could run code, no pandas metadata."""
    for split in ("train", "val"):
        files = sorted((dsprites16 / split).glob("*.arrow"))
        assert files and (dsprites16 / split / MANIFEST).is_file()
        for file in files:
            with pa.memory_map(str(file), "r") as source:
                schema = pa.ipc.open_file(source).schema
            assert b"pandas" not in (schema.metadata or {}), file
            for field in schema:
                kind = field.type.value_type if pa.types.is_fixed_size_list(field.type) \
                    else field.type
                assert pa.types.is_integer(kind) or pa.types.is_floating(kind), (file, field)


def test_every_server_command_binds_loopback():
    """`mlflow ui` / `mlflow server` as the project prints or documents them bind
    127.0.0.1; the one exception, the cluster's tracking server, binds the head's
    private address (configured; test_cluster_yaml.py checks it)."""
    texts = {p: p.read_text() for p in [*SOURCES, ROOT / "README.md"]}
    found = 0
    for path, text in texts.items():
        for match in re.finditer(r"mlflow (ui|server) --[^\n\"']*", text):
            found += 1
            assert "--host 127.0.0.1" in match.group(0), (path, match.group(0))
    assert found >= 2


def test_a_local_ray_instance_starts_no_dashboard():
    """The local Ray instance the sweep starts has no dashboard (an HTTP server);
    its core ports are Ray's own (see README, Reliability and safety)."""
    source = (ROOT / "slotsweep" / "sweep" / "cluster.py").read_text()
    local = source.split('if address == "local":', 1)[1].split("\n", 2)[1]
    assert "include_dashboard=False" in local
