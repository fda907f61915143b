"""``avdali bench loader`` end to end on the tiny shards (figures are not asserted: speed is for benchmarks)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from avdali.cli.app import app


def test_bench_loader_writes_figures(ravdess_shards, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali", "--batch-size", "2",
                                      "--batches", "2", "--warmup", "1", "--frames", "4", "--splits", "fold1,fold2",
                                      "--crop-interp", "nearest", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert set(figures["results"]) == {"dali", "ceiling-dali", "ceiling-pyav"}
    assert figures["results"]["dali"]["clips"] == 4  # 2 timed batches of 2
    assert figures["config"]["crop_interp"] == "nearest"
    assert figures["results"][figures["ceiling"]]["share_of_ceiling"] == 1.0
    assert "dali" in result.output


def test_bench_loader_rejects_unknown_loader_and_naive_without_src(ravdess_shards):
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali,tf"])
    assert result.exit_code == 1 and "unknown tf" in result.output
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "naive"])
    assert result.exit_code == 1 and "--src" in result.output
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--crop-interp", "cubic"])
    assert result.exit_code == 1 and "crop_interp" in result.output and "nearest, linear" in result.output
