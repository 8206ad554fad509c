"""Fuzzing the loaders of every file a user, a copy or a crash can hand slotsweep (issue 29).

Sweep files, trial configs, shard manifests and shards, and checkpoints are mutated from a
real, valid file: truncated, bytes flipped, inserted or deleted, replaced by binary
garbage, re-encoded (UTF-16, latin-1, invalid UTF-8), numbers made huge, values nested
up to a thousand levels deep or swapped for odd YAML/JSON (in the text, or in the parsed
tree written back well formed), emptied. Every example keeps one
promise: the loader succeeds, or raises the project's own error (ConfigError, ShardError,
CheckpointError) naming the file; and no file in the folder changes. Hypothesis runs
derandomized, so every run tries the same inputs; each test prints how many it tried
(`pytest -s tests/unit/test_fuzz.py`) and records it as a junit property.

The smallest inputs that broke the promise live in tests/bad_inputs/ (sweeps/ and configs/
run through the command line in test_bad_inputs.py; not_utf8/ and manifests/ here).
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slotsweep.config import load_config
from slotsweep.config_io import ConfigError
from slotsweep.data.format import MANIFEST, ShardError, read_manifest
from slotsweep.data.reader import ShardDataset, check_split
from slotsweep.data.writer import ShardWriter
from slotsweep.sweep.load import load_sweep
from slotsweep.training import checkpoint

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"


def fuzz_settings(examples: int) -> settings:
    """Seeded (the same inputs on every run), bounded, and no example database."""
    return settings(derandomize=True, max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------ mutations

INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82",
                b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"]
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1", "cp1252",
             "shift_jis"]
NON_ASCII = ["é", "ü", "€", "日本", "\u00a0", "\u2028", "\ufeff", "😀"]
HUGE = ["9" * 19, "9" * 20, "1" + "0" * 309, "9" * 4300, "9" * 4301, "9" * 20000, "1e309",
        "-1e309", "1e-400", "-0", "2147483648", "-9223372036854775809", "999999999",
        "1.7976931348623157e308", "0x" + "f" * 40]
YAML_VALUES = ["", "null", "~", "[]", "{}", "[[]]", "{a: 1}", "true", "no", "'yes'", '"0"', "-1",
               "0", "1.5", "1e3", ".inf", ".nan", "2001-12-14", "2024-13-45", "12:30:00",
               "!!binary aGVsbG8=", "!!set {a: null}", "!!python/object:os.system ls",
               "!!int x", "!!float y", "!!str", "&a [*a]", "&b {k: *b}", "*nowhere",
               '"\\0"', '"a\\0b"', "'../../x'", "/", "|\n  block", ">-", "? [a]", "<<: 1",
               "{<<: [1]}", "[1, 2", "\t", "%YAML 1.1", "---", "...", "@", "`", "'", '"',
               "!<tag:yaml.org,2002:int> 3", "{? [a]: b}", "[a, b]: c", "'" + "a" * 300 + "'",
               "a" * 300, "x/" * 200]
JSON_VALUES = ["null", "true", '""', "[]", "{}", "-1", "0", "1.5", "1e999", "-1e999", "NaN",
               "Infinity", '"x"', '"\\u0000"', '"\\ud800"', '"manifest.json"', '".."', '"/"',
               '"../train/shard-00000.arrow"', '"a/b"', '"shard-00000.arrow"', "[1, 2]",
               '{"a": 1}', '"int64"', '"bool"', '"object"', '"float64"', "[1e30]", "[-1]",
               "[0]", "[4294967296]", "[" + "9" * 30 + "]", "[2, 3, 4]", "1" + "0" * 30,
               "[1000000, 1000000]", "[9999999999999999999, 3]", '"' + "a" * 300 + '"',
               '"' + "x/" * 200 + '"', "[" * 2000 + "]" * 2000]
# Values the "tree" mutation puts into the parsed file (written back well formed): edge
# values of every type the loaders check. Most edits keep a node's type, so that they get
# past the schema's type checks to its ranges and cross-checks.
SAME_TYPE = {
    bool: [True, False],
    int: [0, -1, 1, 3, 2**31, 2**63, 10**19, 10**30, 10**400, 999_999_999],
    float: [0.0, -0.0, 1e-300, 1e300, float("inf"), float("-inf"), float("nan")],
    str: ["", "x", "none", "covloss", "..", "manifest.json", "shard-00001.arrow", "a" * 300,
          "a\0b", "\ud800"],
    list: [[], [0], [-1], [[]], [10**19, 3], [1_000_000, 1_000_000], [2**31], [1, "x"],
           ["none", "covloss"]],
    dict: [{}, {"a": 1}],
}
TREE_VALUES = [None, *(value for values in SAME_TYPE.values() for value in values)]
NUMBER = re.compile(rb"-?\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
YAML_VALUE = re.compile(rb"(?m)^([ \t]*[^#\n:]+:[ \t]*)([^\n]*)$")
TOKEN = re.compile(rb"[A-Za-z0-9_.+/-]+|\"[^\"\n]*\"")


def _position(size: int) -> st.SearchStrategy[int]:
    """Anywhere in a file, often near its start or end (headers, footers, zip directories)."""
    last = max(size - 1, 0)
    return st.one_of(st.integers(0, last), st.integers(0, min(last, 600)),
                     st.integers(max(0, last - 600), last))


def _replace_match(draw, data: bytes, pattern: re.Pattern, values: list[str],
                   group: int = 0) -> bytes:
    """One match of `pattern` (its `group`) replaced by one of `values`."""
    matches = list(pattern.finditer(data))
    if not matches:
        return data
    match = draw(st.sampled_from(matches))
    value = draw(st.sampled_from(values)).encode()
    return data[: match.start(group)] + value + data[match.end(group):]


def _nest(draw, json_: bool) -> bytes:
    """A value nested 65 to 1000 levels deep, as flow YAML or JSON."""
    depth = draw(st.sampled_from([65, 100, 400, 1000]))  # PyYAML scans deep flows in O(n²)
    if json_:
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a": ', "}")]))
    else:
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")]))
    return (opener * depth + "1" + closer * depth).encode()


def _tree_edit(draw, data: bytes, kind: str) -> bytes:
    """Parse, change one node (replace, drop, or add a sibling), write back well formed."""
    try:
        tree = json.loads(data) if kind == "json" else yaml.safe_load(data)
    except (ValueError, yaml.YAMLError, RecursionError):
        return data
    nodes, todo, seen = [], [tree], set()
    while todo:  # each container once: an alias may share one, or contain itself
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        for key, child in items:
            nodes.append((node, key))
            todo.append(child)
    if not nodes:
        return data
    parent, key = draw(st.sampled_from(nodes))
    action = draw(st.sampled_from(["same type"] * 4 + ["any", "drop", "add"]))
    same = SAME_TYPE.get(type(parent[key]))
    if action == "drop":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.sampled_from(["x", "when", "shape", "file", str(key) + "s"]))] = \
            draw(st.sampled_from(TREE_VALUES))
    elif action == "same type" and same:
        parent[key] = draw(st.sampled_from(same))
    else:
        parent[key] = draw(st.sampled_from(TREE_VALUES))
    try:
        if kind == "json":
            return json.dumps(tree, indent=2).encode()
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    except (RecursionError, ValueError):  # nested too deeply to write back, or NaN keys
        return data
    return text.encode("utf-8", "replace")


@st.composite
def mutated(draw, original: bytes, kind: str) -> tuple[bytes, list[str]]:
    """`original` after one to three mutations; `kind` is "yaml", "json" or "binary" (which
    picks the text-aware ones). Returns the bytes and what was done, for a failure's report."""
    ops = ["truncate", "flip", "flip", "insert", "delete", "duplicate", "garbage", "empty",
           "zeros"]
    if kind != "binary":  # weighted to the edits that keep most of the file parseable
        ops += ["encode", "bad_utf8", "huge", "huge", "nest", "value", "value", "token",
                "token", "swap", "swap", "tree", "tree", "tree"]
    if kind == "json":  # a manifest's checks sit behind its schema: edit the parsed tree more
        ops += ["tree"] * 20
    data, done = original, []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(ops))
        done.append(op)
        size = len(data)
        if op == "truncate" and size:
            data = data[: draw(_position(size))]
        elif op == "flip" and size:
            buf = bytearray(data)
            for _ in range(draw(st.integers(1, 8))):
                buf[draw(_position(size))] ^= draw(st.integers(1, 255))
            data = bytes(buf)
        elif op == "insert":
            at = draw(_position(size + 1))
            data = data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:]
        elif op == "delete" and size:
            at = draw(_position(size))
            data = data[:at] + data[at + draw(st.integers(1, 64)):]
        elif op == "duplicate" and size:
            at, length = draw(_position(size)), draw(st.integers(1, 256))
            to = draw(_position(size))
            data = data[:to] + data[at: at + length] + data[to:]
        elif op == "garbage":
            data = draw(st.binary(max_size=1024))
        elif op == "empty":
            data = draw(st.sampled_from([b"", b" ", b"\n", b"\n\n\t\n", b"#", b"\xef\xbb\xbf"]))
        elif op == "zeros":
            data = b"\0" * draw(st.integers(1, 4096))
        elif op == "encode":
            text = data.decode("utf-8", errors="replace")
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(NON_ASCII)) + text[at:]
            data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
        elif op == "bad_utf8":
            at = draw(_position(size + 1))
            data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
        elif op == "huge":
            data = _replace_match(draw, data, NUMBER, HUGE)
        elif op == "nest":
            nested = _nest(draw, kind == "json")
            pattern = TOKEN if kind == "json" else YAML_VALUE
            matches = list(pattern.finditer(data))
            if matches:
                match, group = draw(st.sampled_from(matches)), 0 if kind == "json" else 2
                data = data[: match.start(group)] + nested + data[match.end(group):]
        elif op == "value":
            if kind == "json":
                data = _replace_match(draw, data, TOKEN, JSON_VALUES)
            else:
                data = _replace_match(draw, data, YAML_VALUE, YAML_VALUES, group=2)
        elif op == "token":
            data = _replace_match(draw, data, TOKEN, JSON_VALUES if kind == "json"
                                  else YAML_VALUES + HUGE[:6])
        elif op == "tree":
            data = _tree_edit(draw, data, kind)
        elif op == "swap":  # one token of the file where another stood: still well formed
            tokens = sorted({m.group().decode("utf-8", "replace") for m in TOKEN.finditer(data)})
            if tokens:
                data = _replace_match(draw, data, TOKEN, tokens)
    return data, done


# --------------------------------------------------------------------------- the contract


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under `root` (symlinks not followed): a file's sha256, a link's target."""
    entries: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            else:
                entries[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


class Tally:
    """How many inputs a loader was given and how each call ended."""

    def __init__(self, name: str) -> None:
        self.name, self.inputs, self.calls = name, 0, Counter()

    def report(self, record_property) -> None:
        outcomes = ", ".join(f"{n} {what}" for what, n in sorted(self.calls.items()))
        print(f"\nfuzz {self.name}: {self.inputs} inputs tried ({outcomes})")
        record_property(f"fuzz_{self.name}_inputs", self.inputs)


def keeps_the_contract(tally: Tally, call: Callable[[], Any], error: type[Exception],
                       names: list[str], storage: Path, what: str) -> Any:
    """`call()` returns, or raises `error` whose message holds every string of `names`;
    and `storage` is byte for byte and entry for entry what it was."""
    before = snapshot(storage)
    try:
        result = call()
    except error as exc:
        message = str(exc)
        for name in names:
            assert name in message, f"{what}: {type(exc).__name__} does not name {name}: " \
                                    f"{message[:2000]}"
        tally.calls[f"{what} refused"] += 1
        result = exc
    else:
        tally.calls[f"{what} loaded"] += 1
    assert snapshot(storage) == before, f"{what} changed the files under {storage}"
    return result


class Folders:
    """A fresh numbered folder per example under one pytest tmp directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0

    def fresh(self) -> Path:
        self.count += 1
        path = self.root / f"example-{self.count:04d}"
        path.mkdir()
        return path

    def drop(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------- sweep files and configs

SWEEP_SEEDS = {"quickstart": "sweeps/quickstart.yaml", "paper_small": "sweeps/paper_small.yaml"}
CONFIG_SEEDS = ["configs/quickstart.yaml", "configs/coco_dinosaur_covloss.yaml",
                "configs/dsprites_small_authors.yaml"]


def _sweep_with_local_base(name: str) -> tuple[bytes, str, bytes]:
    """A shipped sweep file whose `base:` names a config beside it (copied with it)."""
    text = (REPO / SWEEP_SEEDS[name]).read_text()
    base = re.search(r"(?m)^base: (\S+)$", text).group(1)
    config = (REPO / "sweeps" / base).resolve()
    text = text.replace(f"base: {base}", f"base: {config.name}")
    return text.encode(), config.name, config.read_bytes()


@pytest.mark.parametrize("name", sorted(SWEEP_SEEDS))
def test_the_fuzzed_sweep_files_start_valid(name, tmp_path):
    """The seeds of the fuzzing load: every mutation starts from a working file."""
    sweep, base_name, base = _sweep_with_local_base(name)
    (tmp_path / "sweep.yaml").write_bytes(sweep)
    (tmp_path / base_name).write_bytes(base)
    assert load_sweep(str(tmp_path / "sweep.yaml")).spec.search_space


def test_fuzzed_sweep_files(tmp_path, record_property):
    """A mutated sweep file (its base config beside it, intact) loads, or is refused with a
    ConfigError naming the sweep file; neither file changes."""
    tally, folders = Tally("load_sweep"), Folders(tmp_path)
    seeds = {name: _sweep_with_local_base(name) for name in SWEEP_SEEDS}

    @fuzz_settings(300)
    @given(st.sampled_from(sorted(seeds)).flatmap(
        lambda name: st.tuples(st.just(name), mutated(seeds[name][0], "yaml"))))
    def one(case):
        name, (data, _) = case
        tally.inputs += 1
        folder = folders.fresh()
        _, base_name, base = seeds[name]
        (folder / base_name).write_bytes(base)
        path = folder / "sweep.yaml"
        path.write_bytes(data)
        keeps_the_contract(tally, lambda: load_sweep(str(path)), ConfigError, [str(path)],
                           folder, "load_sweep")
        folders.drop(folder)

    one()
    tally.report(record_property)
    assert tally.inputs >= 300


def test_fuzzed_trial_configs(tmp_path, record_property):
    """A mutated trial config loads, or is refused with a ConfigError naming it; the file
    is unchanged."""
    tally, folders = Tally("load_config"), Folders(tmp_path)
    seeds = {name: (REPO / name).read_bytes() for name in CONFIG_SEEDS}

    @fuzz_settings(300)
    @given(st.sampled_from(CONFIG_SEEDS).flatmap(lambda name: mutated(seeds[name], "yaml")))
    def one(case):
        data, _ = case
        tally.inputs += 1
        folder = folders.fresh()
        path = folder / "config.yaml"
        path.write_bytes(data)
        keeps_the_contract(tally, lambda: load_config(path), ConfigError, [str(path)], folder,
                           "load_config")
        folders.drop(folder)

    one()
    tally.report(record_property)
    assert tally.inputs >= 300


# ------------------------------------------------------------------ manifests and shards


def write_split(path: Path) -> Path:
    """A real split: three shards of ids, float16 tokens and int16 masks (the features
    split's layout), written by ShardWriter."""
    rng = np.random.default_rng(0)
    rows = 10
    with ShardWriter(path, rows_per_shard=4, attributes={"encoder": "toy"}) as writer:
        writer.write({"id": np.arange(rows, dtype=np.int64),
                      "features": rng.standard_normal((rows, 4, 3)).astype(np.float16),
                      "segmentation": rng.integers(-1, 3, (rows, 2, 2)).astype(np.int16)})
    return path


def read_every_row(split: Path) -> int:
    """Open the split as training does and read every row's every value."""
    dataset = ShardDataset(split)
    for i in range(len(dataset)):
        for view in dataset[i].values():
            np.asarray(view).sum()
    return len(dataset)


def read_one_batch(split: Path) -> int:
    """Open the split and gather all its rows at once (what the staged loader does)."""
    dataset = ShardDataset(split)
    return len(next(iter(dataset.get_batch(np.arange(len(dataset))).values())))


def _resign(split: Path, shard: str) -> None:
    """Make the manifest agree with a changed shard's size and sha256 (as if `prepare` had
    written the damaged bytes), so the check gets past the checksum to the Arrow reader."""
    manifest = json.loads((split / MANIFEST).read_text())
    for entry in manifest["shards"]:
        if entry["file"] == shard:
            data = (split / shard).read_bytes()
            entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (split / MANIFEST).write_text(json.dumps(manifest, indent=2))


SHARD_READERS = {
    "read_manifest": read_manifest,
    "check_split": check_split,
    "check_split(checksum_limit=0)": lambda split: check_split(split, checksum_limit=0),
    "ShardDataset rows": read_every_row,
    "ShardDataset.get_batch": read_one_batch,
}


def test_fuzzed_manifests_and_shards(tmp_path, record_property):
    """A split whose manifest or one shard is mutated (a shard's new sha256 sometimes
    written into the manifest): reading the manifest, checking the split (with and
    without checksums), reading every row and one batch of all rows each succeed or raise
    a ShardError naming the split (and the shard, where a shard was damaged); reading
    the manifest alone is unaffected by a damaged shard; no file changes."""
    tally, folders = Tally("shards"), Folders(tmp_path)
    pristine = write_split(tmp_path / "pristine")
    manifest = read_manifest(pristine)
    shards = [entry["file"] for entry in manifest["shards"]]
    targets = [MANIFEST, *shards]
    originals = {name: (pristine / name).read_bytes() for name in targets}
    target = st.one_of(st.just(MANIFEST), st.sampled_from(shards))  # the manifest half the time

    def case(target: str):
        kind = "json" if target == MANIFEST else "binary"
        resign = st.just(False) if target == MANIFEST else st.booleans()
        return st.tuples(st.just(target), mutated(originals[target], kind), resign)

    @fuzz_settings(200)
    @given(target.flatmap(case))
    def one(drawn):
        target, (data, _), resign = drawn
        tally.inputs += 1
        folder = folders.fresh()
        split = folder / "train"
        shutil.copytree(pristine, split)
        (split / target).write_bytes(data)
        if resign:
            _resign(split, target)
        names = [str(split)] + ([target] if target != MANIFEST else [])
        for what, reader in SHARD_READERS.items():
            outcome = keeps_the_contract(tally, lambda r=reader: r(split), ShardError, names,
                                         folder, what)
            if what == "read_manifest" and target != MANIFEST:
                assert not isinstance(outcome, Exception), outcome
        folders.drop(folder)

    one()
    tally.report(record_property)
    assert tally.inputs >= 200


# -------------------------------------------------------------------------- checkpoints


def _state() -> dict[str, Any]:
    """What the trainer saves: model and Adam state after a step, step, time, RNG state."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8),
                                torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 4,
            "elapsed_s": 1.5, "rng_torch": torch.get_rng_state()}


def _rezip(draw, data: bytes) -> bytes:
    """Mutate one member of the torch zip (its pickle, most often) and write a zip whose
    checksums agree, so torch.load reaches the unpickler with the damaged bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return data
    if not members:
        return data
    pickles = [i for i, (name, _) in enumerate(members) if name.endswith(".pkl")]
    index = draw(st.sampled_from(pickles) if pickles and draw(st.booleans())
                 else st.integers(0, len(members) - 1))
    name, content = members[index]
    members[index] = (name, draw(mutated(content, "binary"))[0])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for member_name, member_data in members:
            archive.writestr(member_name, member_data)
    return out.getvalue()


LAYOUTS = ["as saved", "as saved", "as saved", "state.pt is a directory", "no state.pt",
           "state.pt is a dangling link", "checkpoints/ is a file", "step dir renamed"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_fuzzed_checkpoints(tmp_path, record_property):
    """A run folder whose checkpoint's state.pt is mutated (bytes, or one zip member with
    the zip rewritten to agree), sometimes laid out wrongly: `resolve` of the run, its
    checkpoints/ and the step directory finds it or raises a CheckpointError naming the
    path; `load` of the step loads plain data or raises a CheckpointError naming state.pt;
    no file changes."""
    tally, folders = Tally("checkpoints"), Folders(tmp_path)
    saved = checkpoint.save(tmp_path / "pristine" / "checkpoints", 4, _state(), "seed: 0\n",
                            files={checkpoint.REPORTED: b'{"val/fg_ari": 0.5}'})
    original = (saved / checkpoint.STATE).read_bytes()

    @st.composite
    def damaged(draw):
        data = (_rezip(draw, original) if draw(st.booleans())
                else draw(mutated(original, "binary"))[0])
        return data, draw(st.sampled_from(LAYOUTS))

    @fuzz_settings(150)
    @given(damaged())
    def one(drawn):
        data, layout = drawn
        tally.inputs += 1
        folder = folders.fresh()
        run = folder / "run"
        shutil.copytree(tmp_path / "pristine", run)
        step = run / "checkpoints" / saved.name
        state = step / checkpoint.STATE
        state.write_bytes(data)
        if layout == "state.pt is a directory":
            state.unlink()
            state.mkdir()
        elif layout == "no state.pt":
            state.unlink()
        elif layout == "state.pt is a dangling link":
            state.unlink()
            state.symlink_to(folder / "nowhere.pt")
        elif layout == "checkpoints/ is a file":
            shutil.rmtree(run / "checkpoints")
            (run / "checkpoints").write_bytes(data)
        elif layout == "step dir renamed":
            step = step.rename(step.with_name("step-0000000x"))
        for where in (run, run / "checkpoints", step):
            found = keeps_the_contract(tally, lambda w=where: checkpoint.resolve(w),
                                       checkpoint.CheckpointError, [str(where)], folder,
                                       "resolve")
            if isinstance(found, Path):
                assert found == step and (step / checkpoint.STATE).is_file(), found
        keeps_the_contract(tally, lambda: checkpoint.load(step), checkpoint.CheckpointError,
                           [str(step / checkpoint.STATE)], folder, "load")
        folders.drop(folder)

    one()
    tally.report(record_property)
    assert tally.inputs >= 150


# ----------------------------------------------------------- what the fuzzing found, kept
# The sweep files and trial configs the fuzzing broke a loader with are in
# tests/bad_inputs/sweeps/ and configs/ (test_bad_inputs.py runs them through the command
# line); the ones that are not UTF-8 (which test_bad_inputs.py cannot read as text) and the
# manifests are run here.


def _expectation(raw: bytes) -> str:
    """The `# expect: REGEX` first line of a corpus file, in the encoding it is in."""
    utf16 = raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    first = (raw.decode("utf-16") if utf16 else raw.decode("latin-1")).splitlines()[0]
    assert first.startswith("# expect: "), first
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", sorted((CORPUS / "not_utf8").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_files_that_are_not_utf8(path):
    """Latin-1, UTF-16 and cut UTF-8 used to leak UnicodeDecodeError from the locale's
    codec; now a ConfigError names the file and the line of the first bad byte."""
    load = load_sweep if path.name.startswith("sweep_") else load_config
    before = snapshot(path.parent)
    with pytest.raises(ConfigError) as refused:
        load(str(path))
    assert re.search(_expectation(path.read_bytes()), str(refused.value)), refused.value
    assert str(path) in str(refused.value)
    assert snapshot(path.parent) == before


def _merge(tree: Any, patch: Any) -> Any:
    """`patch` over `tree`: objects key by key, arrays item by item, anything else replaced."""
    if isinstance(tree, dict) and isinstance(patch, dict):
        return {**tree, **{k: _merge(tree.get(k), v) for k, v in patch.items()}}
    if isinstance(tree, list) and isinstance(patch, list):
        return [_merge(t, p) for t, p in zip(tree, patch, strict=False)] + tree[len(patch):]
    return patch


@pytest.mark.parametrize("path", sorted((CORPUS / "manifests").glob("*.json")),
                         ids=lambda p: p.stem)
def test_manifests_found_by_fuzzing(path, tmp_path):
    """Each file, merged over a freshly written split's manifest.json, once made a reader
    overflow, fail to stat or allocate 40 GiB; now checking the split, reading its rows
    and reading one batch each raise a ShardError that names the split and matches the
    file's `expect`; no file changes."""
    patch = json.loads(path.read_text())
    expect = patch.pop("expect")
    split = write_split(tmp_path / "train")
    manifest = json.loads((split / MANIFEST).read_text())
    (split / MANIFEST).write_text(json.dumps(_merge(manifest, patch)))
    for reader in (check_split, read_every_row, read_one_batch):
        before = snapshot(tmp_path)
        with pytest.raises(ShardError, match=expect) as refused:
            reader(split)
        assert str(split) in str(refused.value)
        assert snapshot(tmp_path) == before


def _refused_in_one_paragraph(proc: subprocess.CompletedProcess, path: Path) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-3000:])
    assert "Traceback" not in proc.stderr, err[-3000:]
    assert err.startswith(f"error: {path}: ") and "\n\n" not in err, err[-3000:]


def test_a_fuzzed_sweep_file_through_the_command_line(tmp_path):
    """`python -m slotsweep.run FILE --dry-run` on a sweep file the fuzzing broke the
    loader with: exit 2, one paragraph `error: FILE: ...` on stderr, no traceback, and
    nothing written where it ran."""
    path = CORPUS / "not_utf8" / "sweep_latin1.yaml"
    proc = subprocess.run([sys.executable, "-m", "slotsweep.run", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    _refused_in_one_paragraph(proc, path)
    assert list(tmp_path.iterdir()) == []


def test_a_fuzzed_trial_config_through_the_command_line(tmp_path):
    """`python -m slotsweep.train FILE --workdir DIR` on a config the fuzzing broke the
    loader with: exit 2, one paragraph `error: FILE: ...`, no traceback, no DIR."""
    path = CORPUS / "not_utf8" / "config_utf16.yaml"
    proc = subprocess.run([sys.executable, "-m", "slotsweep.train", str(path), "--workdir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    _refused_in_one_paragraph(proc, path)
    assert list(tmp_path.iterdir()) == []
