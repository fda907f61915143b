"""``avdali cv``: the mean ± std arithmetic on fixed numbers, option errors, and a real 2-fold run on the tiny
fixture shards whose summary is checked against the fold runs' own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.errors import AvdaliError, ConfigError
from avdali.shardformat.manifest import read_manifest
from avdali.train.config_toml import load_config
from avdali.experiments.cv import aggregate, check_cv_config, parse_folds
from conftest import tiny_run_toml

runner = CliRunner()


def tiny_toml(tmp_path: Path, shards: Path | str) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_run_toml(shards, batch_size=4, data_extra="augment = false"))
    return path


def test_aggregate_fixed_numbers_match_numpy():
    folds = [
        {"acc": 0.80, "ua": 0.75, "num_samples": 10},
        {"acc": 0.90, "ua": 0.95, "num_samples": 12},
        {"acc": 1.00, "ua": 0.70, "num_samples": 8},
    ]
    mean, std = aggregate(folds)
    assert set(mean) == set(std) == {"acc", "ua"}  # sample counts are not averaged
    assert mean["acc"] == pytest.approx(0.9)
    assert std["acc"] == pytest.approx(np.sqrt(0.02 / 3))  # population std: ((0.1² + 0 + 0.1²) / 3) ** 0.5
    assert mean["ua"] == pytest.approx(np.mean([0.75, 0.95, 0.70]))
    assert std["ua"] == pytest.approx(np.std([0.75, 0.95, 0.70]))


def test_aggregate_one_fold_has_zero_spread_and_missing_keys_are_dropped():
    mean, std = aggregate([{"acc": 0.5, "loss": 1.0}])
    assert mean == {"acc": 0.5, "loss": 1.0} and std == {"acc": 0.0, "loss": 0.0}
    mean, _ = aggregate([{"acc": 0.5, "loss": 1.0}, {"acc": 0.7}])
    assert mean == {"acc": pytest.approx(0.6)}
    assert aggregate([]) == ({}, {})


@pytest.mark.parametrize("text", ["", "0", "6", "1,1", "a,b", "1;2"])
def test_parse_folds_rejects(text):
    with pytest.raises(ConfigError, match="--folds"):
        parse_folds(text)


def test_parse_folds_keeps_order():
    assert parse_folds("3, 1,5") == [3, 1, 5]


def test_explicit_splits_are_refused(tmp_path, ravdess_shards):
    cfg = load_config(tiny_toml(tmp_path, ravdess_shards), ['data.train_splits=["fold1"]'])
    with pytest.raises(ConfigError, match="data.train_splits"):
        check_cv_config(cfg)


def test_cli_errors_are_one_line(tmp_path, ravdess_shards):
    result = runner.invoke(app, ["cv", "--config", str(tiny_toml(tmp_path, ravdess_shards)), "--folds", "7"])
    assert result.exit_code == 1
    assert "--folds must list distinct folds between 1 and 5" in result.output
    result = runner.invoke(app, ["cv", "--config", str(tiny_toml(tmp_path, tmp_path / "nowhere"))])
    assert result.exit_code == 1 and "manifest.json" in result.output and "Traceback" not in result.output


def test_two_folds_end_to_end(tmp_path, ravdess_shards):
    out = tmp_path / "cv"
    result = runner.invoke(app, ["cv", "--config", str(tiny_toml(tmp_path, ravdess_shards)), "--folds", "2,1",
                                 "--out", str(out), "--json", str(tmp_path / "copy.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "cv.json").read_text())
    assert json.loads((tmp_path / "copy.json").read_text()) == summary
    assert [f["fold"] for f in summary["folds"]] == [2, 1]
    manifest = read_manifest(ravdess_shards)
    for fold in summary["folds"]:
        run = out / f"fold{fold['fold']}"
        assert fold["run_dir"] == str(run)
        assert (run / "best.pt").is_file() and (run / "config.toml").is_file()
        # each fold tested its own actors: the fold's clip count from the manifest, and its own config
        assert fold["test"]["num_samples"] == manifest.splits[f"fold{fold['fold']}"].samples
        assert f"fold = {fold['fold']}" in (run / "config.toml").read_text()
    accs = [f["test"]["acc"] for f in summary["folds"]]
    assert summary["mean"]["acc"] == pytest.approx(np.mean(accs))
    assert summary["std"]["acc"] == pytest.approx(np.std(accs))
    assert summary["metric"] == "ua"
    assert "mean" in result.output and "cv.json" in result.output  # the table (rich wraps it to the terminal)
    # the parent is not reused: a second cross-validation into the same folder is refused
    again = runner.invoke(app, ["cv", "--config", str(tiny_toml(tmp_path, ravdess_shards)), "--folds", "3", "--out", str(out)])
    assert again.exit_code == 1 and "already holds a cross-validation" in again.output
