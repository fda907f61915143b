"""``avdali bench train``: the per-step bookkeeping on fixed numbers, the variant grid, and a real 2-step run of
both loaders on the tiny fixture shards that writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.bench.training import StepRecorder, Variant, _Done, variants_for
from avdali.train.log_window import WindowSums
from conftest import tiny_run_toml

runner = CliRunner()


def window(seconds: float, clips: int, data_wait_s: float) -> WindowSums:
    return WindowSums(steps=1, clips=clips, good_clips=clips, correct=0, loss_sum=1.0, bad_steps=0, bad_run=0,
                      seconds=seconds, data_wait_s=data_wait_s)


def test_step_recorder_skips_warmup_and_stops_after_the_timed_steps():
    recorder = StepRecorder(warmup=2, steps=2)
    # the rates the loop writes to TensorBoard do not matter: the recorder adds up the raw window sums
    values = {"step_ms": -1.0, "clips_per_s": -1.0, "data_wait_frac": -1.0}
    recorder.log(1, values, window(5.0, 8, 4.0))  # warm-up: worker start-up, not timed
    recorder.log(2, values, window(5.0, 8, 4.0))
    recorder.log(3, values, window(0.1, 8, 0.025))  # 100 ms, 8 clips, a quarter of it waiting for data
    with pytest.raises(_Done):
        recorder.log(4, values, window(0.3, 12, 0.15))
    assert recorder.timed_steps == 2
    assert recorder.seconds == pytest.approx(0.4)
    assert recorder.clips == 8 + 12
    assert recorder.data_wait_s == pytest.approx(0.025 + 0.15)


def test_variants_cpu_uses_the_config_and_cuda_crosses_amp_and_compile():
    assert variants_for("cpu", ["dali", "torch"], "auto", "auto") == [Variant("dali", "none", False), Variant("torch", "none", False)]
    cuda = variants_for("cuda", ["dali", "torch"], "auto", "auto")
    assert len(cuda) == 8 and len(set(cuda)) == 8
    assert {(v.amp, v.compile) for v in cuda} == {("bf16", True), ("bf16", False), ("none", True), ("none", False)}
    # --config-only: the config's precision and compile, auto resolved as training resolves it on CUDA
    assert variants_for("cuda", ["dali"], "auto", "auto", grid=False) == [Variant("dali", "bf16", True)]
    assert variants_for("cuda", ["torch"], "none", False, grid=False) == [Variant("torch", "none", False)]


def test_unknown_loader_and_missing_shards_are_one_line_errors(tmp_path):
    result = runner.invoke(app, ["bench", "train", str(tmp_path), "--loaders", "naive"])
    assert result.exit_code == 1 and "--loaders: unknown naive" in result.output
    result = runner.invoke(app, ["bench", "train", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no manifest.json" in result.output
    result = runner.invoke(app, ["bench", "train", str(tmp_path), "--batch-sizes", "8,x"])
    assert result.exit_code == 1 and "--batch-sizes: expected comma-separated integers" in result.output


def test_both_loaders_run_and_write_json(tmp_path: Path, ravdess_shards):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml("shards/none", batch_size=4, freeze_backbone=False, train='device = "cpu"'))
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "train", str(ravdess_shards), "--config", str(config), "--loaders", "dali,torch",
                                 "--steps", "2", "--warmup", "1", "--json", str(out),
                                 "--batch-sizes", "4", "--peak-tflops", "0.5"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert [r["loader"] for r in figures["results"]] == ["dali", "torch"]
    assert figures["batch_size"] == 4 and figures["machine"]["cpus"] >= 1
    for r in figures["results"]:
        assert r["steps"] == 2
        # training folds 3-5 hold 12 clips: three full batches of 4, so every timed step trains 4 real clips
        assert r["clips"] == 8
        assert 0.0 <= r["data_wait_frac"] <= 1.0
        assert r["clips_per_s"] == pytest.approx(r["clips"] / r["seconds"], rel=1e-2)
        assert r["step_ms"] == pytest.approx(1000 * r["seconds"] / 2, rel=1e-2)
        assert r["batch_size"] == 4 and r["gflop_per_clip"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["gflop_per_clip"] * r["clips_per_s"] / 1000, rel=2e-2)
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.5, rel=2e-2)
    assert figures["peak_tflops"] == 0.5 and "FlopCounterMode" in figures["flops_counted_by"]
