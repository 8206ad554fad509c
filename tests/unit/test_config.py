"""Trial config: loading, overrides, lossless YAML round trip, and one-line errors."""

from pathlib import Path

import pytest
import yaml

from slotsweep.config import TrialConfig, build_config, known_keys, load_config
from slotsweep.config_io import ConfigError, parse_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(text)
    return path


def test_defaults_round_trip_through_yaml_losslessly():
    cfg = build_config({"loss": {"type": "vicreg", "beta": 0.5, "eps": 1e-4}})
    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()


def test_load_file_with_dotted_overrides(tmp_path):
    path = write(tmp_path, "model:\n  slot_size: 32\n  num_slots: 7\nloss:\n  type: covloss\n"
                           "  beta: 1e-3\n")
    assert load_config(path).loss.beta == 1e-3  # YAML 1.2 float, not the string "1e-3"
    cfg = load_config(path, ["loss.beta=0.1", "model.slot_size=128", "train.compile=true"])
    assert cfg.loss.beta == 0.1
    assert cfg.model.slot_size == 128
    assert cfg.model.num_slots == 7
    assert cfg.train.compile is True


def test_config_is_frozen():
    cfg = TrialConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.model.slot_size = 3  # type: ignore[misc]


def test_flat_keys_are_dotted():
    flat = TrialConfig().flat()
    assert flat["loss.beta"] == 0.0
    assert flat["model.decoder_hidden"] == [2048, 2048, 2048]
    assert {"model.slot_size", "loss.proj_depth", "loss.type"} <= known_keys()


def test_parse_override_types_values_as_yaml():
    assert parse_override("loss.beta=1e-3") == ("loss.beta", 1e-3)
    assert parse_override("loss.type=cosine") == ("loss.type", "cosine")
    assert parse_override("model.decoder_hidden=[64, 64]") == ("model.decoder_hidden", [64, 64])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("loss.beta")


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("loss:\n  betta: 0.1\n", "loss.betta", "did you mean 'beta'"),
        ("modell:\n  slot_size: 3\n", "modell", "did you mean 'model'"),
        ("model:\n  slot_size: big\n", "model.slot_size", "integer"),
        ("model:\n  slot_size: '64'\n", "model.slot_size", "integer"),
        ("loss:\n  type: covloss\n  beta: -1.0\n", "loss.beta", "greater than or equal to 0"),
        ("loss:\n  type: hinge\n", "loss.type", "'covloss'"),
        ("loss:\n  type: covloss\n  beta: 1.0\n  proj_depth: 0\n  proj_dim: 1024\n",
         "loss.proj_dim", "must equal model.slot_size"),
        ("loss:\n  type: cosine\n", "loss.beta", "would do nothing"),
        ("train:\n  decay_rate: 1.5\n", "train.decay_rate", "less than or equal to 1"),
        ("model:\n  decoder: mlp_patch\n", "model.decoder", "needs encoder: features"),
        ("model:\n  eval_slot_init: mean\n", "model.eval_slot_init", "identical slots"),
        ("model:\n  slot_init: authors\n  eval_slot_init: mean\n", "model.eval_slot_init",
         "'authors'; use 'seeded' or 'fresh'"),
        ("model:\n  slot_init: queries\n  eval_slot_init: fresh\n", "model.eval_slot_init",
         "'queries' has none"),
        ("model:\n  decoder: broadcast_tconv\n  decoder_channels: 0\n",
         "model.decoder_channels", "greater than 0"),
        ("model:\n  encoder: features\n  num_patches: 200\n", "model.num_patches", "square"),
        ("train:\n  compile: 1\n", "train.compile", "boolean"),
    ],
)
def test_bad_config_gives_one_line_naming_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")
    assert words in message


def test_bad_override_names_the_key(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"trial.yaml: loss.beta: .*greater than or equal"):
        load_config(path, ["loss.type=covloss", "loss.beta=-0.5"])
    with pytest.raises(ConfigError, match=r"model.slot_sise: unknown key; did you mean"):
        load_config(path, ["model.slot_sise=3"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  slot_size: [1, 2\nloss: {}\n")
    with pytest.raises(ConfigError, match=r"trial.yaml: line \d+: YAML syntax error"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
