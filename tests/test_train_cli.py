"""``avdali train``: option errors, flags → config overrides, and a real 2-rank gloo run on tiny shards whose
TensorBoard events are read back from the files and from TensorBoard's own HTTP server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.train import reporting
from avdali.train import run as train_run
from conftest import tiny_run_toml

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["train", *args])


def tiny_toml(tmp_path: Path, shards: Path | str = "shards/none") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_run_toml(shards))
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--procs", "0"], "--procs must be ≥ 1, got 0"),
        (["--gpus", "0"], "--gpus must be ≥ 1, got 0"),
        (["--gpus", "2", "--procs", "2"], "--gpus and --procs exclude each other"),
        (["--procs", "2", "--device", "cuda"], "--procs starts CPU ranks"),
        (["--device", "tpu"], "--device must be one of auto, cpu, cuda, got 'tpu'"),
        (["--set", "train.epochs=zero"], "train.epochs must be an integer, got 'zero'"),
        (["--set", "optim.lr"], "expected section.key=value"),
    ],
)
def test_option_errors_are_one_line(tmp_path, args, message):
    result = invoke("--config", str(tiny_toml(tmp_path)), *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="this machine has 4 GPUs")
def test_gpus_beyond_the_machine(tmp_path):
    result = invoke("--config", str(tiny_toml(tmp_path)), "--gpus", "4")
    assert result.exit_code == 1
    assert f"--gpus 4: only {torch.cuda.device_count()} CUDA GPU(s) available" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(tmp_path):
    result = invoke("--config", str(tiny_toml(tmp_path)), "--device", "cuda")
    assert result.exit_code == 1
    assert "--device cuda: CUDA is not available" in result.output


def test_config_is_required_and_shards_are_checked(tmp_path):
    result = invoke()
    assert result.exit_code == 1 and "--config is required" in result.output
    result = invoke("--config", str(tiny_toml(tmp_path, tmp_path / "nowhere")))
    assert result.exit_code == 1 and "nowhere/manifest.json: no manifest" in result.output


def test_flags_become_overrides(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, *, resume, nprocs, reporter):
        seen.update(cfg=cfg, resume=resume, nprocs=nprocs)
        return reporting.TrainResult(run_dir=Path(cfg.train.run_dir), step=1, epoch=1, metric="ua", best_metric=0.5)

    monkeypatch.setattr(train_run, "run_training", fake_run)
    path = tiny_toml(tmp_path)
    result = invoke("--config", str(path), "--procs", "2", "--fold", "3", "--run-dir", str(tmp_path / "r"),
                    "--no-compile", "--set", "optim.lr=0.5", "--set", "data.fold=2")
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert seen["nprocs"] == 2 and cfg.train.device == "cpu"
    assert cfg.data.fold == 3  # the flag comes after --set: flags win
    assert cfg.optim.lr == 0.5 and cfg.train.compile is False
    assert cfg.train.run_dir == str(tmp_path / "r") and cfg.train.name == "tiny"
    # --resume with only --run-dir reads the run's own config.toml
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text(path.read_text().replace("epochs = 1", "epochs = 5"))
    result = invoke("--resume", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert seen["resume"] is True and seen["cfg"].train.epochs == 5


@pytest.mark.slow
def test_two_cpu_ranks_train_disjoint_samples_into_identical_weights(tmp_path, monkeypatch, ravdess_shards):
    results = []
    real_run = train_run.run_training

    def spy(cfg, **kw):
        results.append(real_run(cfg, **kw))
        return results[-1]

    monkeypatch.setattr(train_run, "run_training", spy)
    run_dir = tmp_path / "run"
    result = invoke("--config", str(tiny_toml(tmp_path, ravdess_shards)), "--device", "cpu", "--procs", "2",
                    "--run-dir", str(run_dir))
    assert result.exit_code == 0, result.output
    assert "done 1 epochs" in result.output

    ranks = results[0].ranks
    assert [r.rank for r in ranks] == [0, 1]
    assert ranks[0].weights_sha256 == ranks[1].weights_sha256  # DDP kept the replicas identical
    seen0, seen1 = set(ranks[0].last_epoch_indices), set(ranks[1].last_epoch_indices)
    assert not seen0 & seen1  # each rank trained on its own samples …
    assert seen0 | seen1 == set(range(12))  # … and together on all of folds 3-5 (4 clips each)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    expected = {"train/loss", "train/acc", "train/lr", "train/clips_per_s", "train/data_wait_frac", "train/step_ms",
                "val/ua", "val/weighted_f1", "val/acc", "val/macro_f1", "val/loss"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert expected <= set(acc.Tags()["scalars"])
    assert "val/confusion" in acc.Tags()["images"]
    assert expected <= served_scalar_tags(run_dir)


def served_scalar_tags(log_dir: Path, timeout_s: float = 90.0) -> set[str]:
    """Start TensorBoard's own server on a free local port (--port 0) and ask its HTTP API for the scalar tags."""
    log = log_dir.parent / "tensorboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", "0"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:  # TensorBoard prints "TensorBoard 2.x at http://127.0.0.1:PORT/"
            if m := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text()):
                url = f"http://127.0.0.1:{m.group(1)}"
                break
            assert proc.poll() is None, f"TensorBoard exited: {log.read_text()[-500:]}"
            assert time.monotonic() < deadline, "TensorBoard did not report its address in time"
            time.sleep(0.5)
        while True:
            try:
                with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as response:
                    tags = json.loads(response.read())
                if tags:
                    return set().union(*(run_tags.keys() for run_tags in tags.values()))
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard served no scalar tags in time"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(timeout=10)
