"""RunConfig: precedence defaults < file < --set, round trip through config.toml, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from avdali.errors import ConfigError
from avdali.train.config import DataSection, OptimConfig, RunConfig, TrainConfig
from avdali.train.config_toml import config_from_dict, config_to_toml, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_file_overrides_precedence(tmp_path):
    path = write(tmp_path, "[optim]\nlr = 0.01\nweight_decay = 0.2\n[train]\nepochs = 7\nlog_every = 3\n")
    cfg = load_config(path, ["optim.lr=2e-3", "train.epochs=9", "data.loader=torch"])
    assert cfg.optim.lr == 2e-3  # --set beats the file
    assert cfg.optim.weight_decay == 0.2  # the file beats the default
    assert cfg.train.epochs == 9
    assert cfg.train.log_every == 3
    assert cfg.data.pipeline.loader == "torch"  # a bare word is a string
    assert cfg.optim.min_lr == OptimConfig().min_lr  # untouched: the default
    assert cfg.train.name == "run"  # the file's stem names the run
    assert load_config(None).optim.lr == OptimConfig().lr


def test_override_values_are_toml_literals():
    assert parse_override("optim.betas=[0.8, 0.95]") == ("optim", "betas", [0.8, 0.95])
    assert parse_override("train.compile=false") == ("train", "compile", False)
    assert parse_override('data.shards="a b/c"') == ("data", "shards", "a b/c")
    cfg = load_config(None, ["optim.betas=[0.8, 0.95]", "optim.lr=1", "train.compile=true"])
    assert cfg.optim.betas == (0.8, 0.95)
    assert isinstance(cfg.optim.lr, float)  # an integer literal is fine for a float field
    assert cfg.train.compile is True


def test_derived_model_fields_follow_data():
    cfg = load_config(None, ["data.features=mfcc", "data.n_mfcc=20", "data.label_space=ravdess8"])
    assert cfg.model.audio_features == 20
    assert cfg.model.num_classes == 8
    with pytest.raises(ConfigError, match=r"model\.num_classes.*label_space"):
        load_config(None, ["model.num_classes=5"])


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "data.fold=3", 'data.train_splits=["fold1"]', "model.fusion=additive",
                             "train.compile=false", "train.run_dir=out/x"])
    path = dump_config(cfg, tmp_path / "config.toml")
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg  # what checkpoints store reads back too
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.amp=fp8", r"--set train\.amp=fp8: train\.amp must be one of 'auto', 'bf16', 'fp16', 'none'; got 'fp8'"),
        ("train.epochs=0", r"train\.epochs must be ≥ 1"),
        ("train.epochs=2.5", r"train\.epochs must be an integer"),
        ("train.epochs=true", r"train\.epochs must be an integer"),
        ("train.channels_last=1", r"train\.channels_last must be true or false"),
        ("optim.lr=-1", r"optim\.lr must be > 0"),
        ("optim.label_smoothing=1.5", r"optim\.label_smoothing must be in \[0, 1\)"),
        ("optim.betas=[0.9]", r"optim\.betas must be a list of 2 values"),
        ("optim.class_weights=inverse", r"optim\.class_weights must be one of 'none', 'balanced'"),
        ("optim.min_lr=1", r"optim\.min_lr .* must be ≤ optim\.lr"),
        ("data.fold=6", r"data\.fold must be between 1 and 5"),
        ("data.loader=tf", r"data\.loader must be one of 'dali', 'torch'; got 'tf'"),
        ("data.crop_interp=cubic", r"data\.crop_interp must be one of 'nearest', 'linear'"),
        ("model.fusion=concat", r"model\.fusion must be one of 'cross', 'additive'"),
        ("train.compile=maybe", r'train\.compile must be one of true, false, "auto"'),
        ("train.lr=1", r"unknown key train\.lr; valid keys of \[train\]: epochs, device, amp"),
        ("trian.epochs=1", r"unknown section \[trian\]; valid sections: data, model, optim, train"),
        ("epochs=3", r"expected section\.key=value"),
        ("train.epochs", r"expected section\.key=value"),
    ],
)
def test_bad_overrides_name_the_key_and_choices(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_file_errors_name_the_file(tmp_path):
    bad_toml = write(tmp_path, "[train\nepochs = 3\n", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(bad_toml)
    unknown = write(tmp_path, "[train]\nepoch = 3\n", "typo.toml")
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown key train\.epoch; valid keys"):
        load_config(unknown)
    wrong = write(tmp_path, '[optim]\nlr = "fast"\n', "wrong.toml")
    with pytest.raises(ConfigError, match=r"wrong\.toml: optim\.lr must be a number, got 'fast'"):
        load_config(wrong)
    not_table = write(tmp_path, "train = 3\n", "flat.toml")
    with pytest.raises(ConfigError, match=r"\[train\] must be a table"):
        load_config(not_table)
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    # --set fixes a bad file value: the error would name the file otherwise
    assert load_config(wrong, ["optim.lr=0.1"]).optim.lr == 0.1


def test_sections_check_themselves_when_built_directly():
    with pytest.raises(ConfigError, match="train.max_bad_steps"):
        TrainConfig(max_bad_steps=0)
    with pytest.raises(ConfigError, match="data.fold"):
        DataSection(fold=0)
    assert DataSection(fold=2).loader_config().batch_size == DataSection().pipeline.batch_size


@pytest.mark.parametrize("name", ["ravdess", "meld", "demo", "joint"])
def test_shipped_configs_load_and_round_trip(name):
    path = REPO / "configs" / f"{name}.toml"
    cfg = load_config(path)
    assert cfg.train.name == name
    assert load_config(None, []) != cfg
    text = config_to_toml(cfg)
    assert f'name = "{name}"' in text
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("text", ["plain", 'say "hi"', "back\\slash", "tab\tnew\nline", "del\x7f", "é ü", "emoji 😀", "C:\\runs\\x"])
def test_toml_literal_is_how_a_set_value_is_quoted(text):
    # the one quoting of --set values (TOML, like config files): parse_override reads back exactly what was quoted
    from avdali.train.config_toml import parse_override, toml_literal

    assert parse_override(f"train.run_dir={toml_literal(text)}") == ("train", "run_dir", text)
    assert toml_literal(text).isascii()
    assert toml_literal(True) == "true" and toml_literal([1, 2.5]) == "[1, 2.5]"


@pytest.mark.parametrize("override", [
    "data.loader=tf", "data.batch_size=0", "data.audio_seconds=100", "optim.lr=0", "optim.class_weights=inverse",
    "train.epochs=0", "train.amp=fp8", "model.fusion=concat", "model.audio_dim=0", "model.dropout=1.5",
])
def test_every_section_says_a_bad_value_the_same_way(override):
    # data, train and model config: "--set KEY=V: KEY must be <rule>, got V" (a list of choices ends "; got V")
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)}: {re.escape(key)} must be .+[,;] got \S+$"):
        load_config(None, [override])
