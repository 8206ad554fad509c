"""Sweep files: validated before Ray starts, every error names the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from slotsweep.config_io import ConfigError
from slotsweep.sweep.load import load_sweep
from slotsweep.sweep.spec import SWEEPS_DIR

GOOD = {
    "config": {"model": {"resolution": 16, "slot_size": 16}},
    "search_space": {
        "loss.type": {"choice": ["none", "covloss", "cosine"]},
        "loss.beta": {"loguniform": [1e-3, 1.0], "when": {"loss.type": ["covloss", "cosine"]}},
        "loss.proj_depth": {"int": [1, 3], "when": {"loss.type": "covloss"}},
        "model.slot_size": {"choice": [16, 32]},
    },
    "search": {"num_samples": 4, "seed": 3},
}


def write(tmp_path: Path, tree: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def with_(**changes):
    tree = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = tree
        *parents, leaf = dotted.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return tree


def test_good_sweep_loads_and_orders_conditions(tmp_path):
    sweep = load_sweep(str(write(tmp_path, GOOD)))
    order = sweep.order()
    assert order.index("loss.type") < order.index("loss.beta")
    assert order.index("loss.type") < order.index("loss.proj_depth")
    cfg = sweep.trial_config({"loss.type": "covloss", "loss.beta": 0.5, "loss.proj_depth": 2,
                              "model.slot_size": 32})
    assert (cfg.loss.type, cfg.loss.beta, cfg.loss.proj_depth, cfg.model.slot_size) == (
        "covloss", 0.5, 2, 32)


def test_define_by_run_space_samples_conditional_keys_only_when_active(tmp_path):
    from slotsweep.sweep.space import OptunaSpace

    sweep = load_sweep(str(write(tmp_path, GOOD)))
    space = OptunaSpace(sweep)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = space(trial)
        seen.add(params["loss.type"])
        assert ("loss.beta" in trial.params) == (params["loss.type"] != "none")
        assert ("loss.proj_depth" in trial.params) == (params["loss.type"] == "covloss")
        sweep.trial_config(params)  # every sampled trial is a valid config
        study.tell(trial, 0.0)
    assert seen == {"none", "covloss", "cosine"}


@pytest.mark.parametrize(
    "changes, key, words",
    [
        ({"serch": {"num_samples": 2}}, "serch", "did you mean 'search'"),
        ({"search/num_sampels": 2}, "search.num_sampels", "did you mean 'num_samples'"),
        ({"search_space/loss.beta": {"lognormal": [1, 2]}}, "search_space.loss.beta.lognormal",
         "unknown key"),
        ({"search_space/loss.beta": {"loguniform": [0.0, 1.0]}},
         "search_space.loss.beta.loguniform",
         "needs low > 0"),
        ({"search_space/loss.beta": {"uniform": [1.0, 0.5]}}, "search_space.loss.beta.uniform",
         "needs low < high"),
        ({"search_space/loss.beta": {"choice": []}}, "search_space.loss.beta.choice",
         "at least one value"),
        ({"search_space/loss.beta": {"choice": [1], "uniform": [0, 1]}},
         "search_space.loss.beta", "exactly one distribution"),
        ({"search_space/loss.bta": {"choice": [0.1]}}, "search_space.loss.bta",
         "not a trial config key"),
        ({"search_space/model.slot_size": {"choice": [16, "big"]}},
         "search_space.model.slot_size", "value 'big'"),
        ({"search_space/loss.beta/when": {"loss.tipe": "covloss"}},
         "search_space.loss.beta.when.loss.tipe", "not a trial config key"),
        ({"search_space": {}}, "search_space", "is empty"),
        ({"search/mode": "maximize"}, "search.mode", "'max'"),
        ({"resources/gpu": 1.5}, "resources.gpu", "whole number"),
        ({"config/loss": {"betta": 1}}, "loss.betta", "unknown key"),
        ({"search_space/loss.proj_depth/int": [0, 2]}, "search_space.loss.proj_depth",
         "must equal model.slot_size"),
        ({"published": {"source": "Table 1", "values": {"a": {"val/fg_ari": 0.9}}}},
         "published", "give `variants`"),
        ({"variants": {"a": {"train.lr": 1e-3}},
          "published": {"source": "Table 1", "values": {"b": {"val/fg_ari": 0.9}}}},
         "published.values.b", "not a variant (variants: a)"),
        ({"variants": {"a": {"train.lr": 1e-3}},
          "published": {"source": "Table 1", "values": {"a": {"val/fg_arri": 0.9}}}},
         "published.values.a.val/fg_arri", "did you mean 'val/fg_ari'"),
        ({"variants": {"a": {"train.lr": 1e-3}},
          "published": {"values": {"a": {"val/fg_ari": 0.9}}}},
         "published.source", "required"),
        ({"variants": {"a": {"train.lr": 1e-3}},
          "published": {"source": "Table 1", "values": {"a": {"val/fg_ari": "high"}}}},
         "published.values.a.val/fg_ari", "number"),
    ],
)
def test_bad_sweep_file_names_file_and_key(tmp_path, changes, key, words):
    path = write(tmp_path, with_(**changes))
    with pytest.raises(ConfigError) as info:
        load_sweep(str(path))
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert f"{key}:" in message and words in message, message


def test_conditions_that_form_a_cycle_are_refused(tmp_path):
    tree = with_(**{"search_space/loss.type/when": {"loss.beta": 0.1}})
    with pytest.raises(ConfigError, match="form a cycle"):
        load_sweep(str(write(tmp_path, tree)))


def test_base_config_path_is_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("model:\n  slot_size: 48\n")
    (tmp_path / "sweeps").mkdir()
    tree = with_(base="../configs/base.yaml", config=None)
    tree["search_space"].pop("model.slot_size")
    sweep = load_sweep(str(write(tmp_path / "sweeps", tree)))
    assert sweep.trial_config({"loss.type": "none"}).model.slot_size == 48
    missing = with_(base="../configs/absent.yaml")
    with pytest.raises(ConfigError, match=r"base: no such config file"):
        load_sweep(str(write(tmp_path / "sweeps", missing, "m.yaml")))


def test_overrides_apply_to_the_base_config(tmp_path):
    sweep = load_sweep(str(write(tmp_path, GOOD)), {"train.steps": 7})
    assert sweep.trial_config({"loss.type": "none"}).train.steps == 7


def test_unknown_sweep_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no sweep named 'nope'.*quickstart"):
        load_sweep("nope")


def test_run_without_a_sweep_lists_them(tmp_path):
    """`python -m slotsweep.run` alone names the sweeps it can run: the package's and
    those of ./sweeps."""
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "my_sweep.yaml").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "slotsweep.run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "name a sweep:" in proc.stderr
    assert "quickstart" in proc.stderr and "my_sweep" in proc.stderr


@pytest.mark.parametrize("flag", ["--num-samples", "--num-cpus"])
def test_zero_trials_or_cpus_is_refused_not_read_as_the_default(flag, capsys):
    """`--num-samples 0` used to fall back to the sweep file's number without a word."""
    from slotsweep.run import main

    with pytest.raises(SystemExit) as exit_:
        main(["quickstart", flag, "0", "--dry-run"])
    assert exit_.value.code == 2
    assert f"{flag}: a whole number of at least 1, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("module, absent", [
    # `--help` and usage errors answer at once instead of after seconds of imports
    ("slotsweep.run", ("torch", "ray", "mlflow")),
    # a trial's Ray worker imports what it runs, not the driver's tracking and search
    ("slotsweep.sweep.trial", ("mlflow", "optuna")),
])
def test_modules_do_not_import_what_they_do_not_need(module, absent):
    probe = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(SWEEPS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_file_validates(path):
    sweep = load_sweep(str(path))
    assert sweep.spec.search_space


def test_relative_data_paths_are_resolved_where_the_sweep_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = with_(**{"config/data": {"train": "data/x/train", "val": str(tmp_path / "v")}})
    sweep = load_sweep(str(write(tmp_path, tree)))
    cfg = sweep.trial_config({"loss.type": "none"})
    assert cfg.data.train == str(tmp_path / "data/x/train")  # not the trial's own cwd
    assert cfg.data.val == str(tmp_path / "v")
