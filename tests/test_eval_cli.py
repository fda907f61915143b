"""``avdali eval`` and its pieces: report numbers against scikit-learn, checkpoint loading, the CLI end to end
on the tiny fixture shards (same dataset, cross-dataset, label-space and shape mismatches)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.data.build import build_loader
from avdali.errors import AvdaliError
from avdali.labels import NATIVE_RAVDESS, UNIFIED
from avdali.models.avfusion import build_model
from avdali.shardformat.manifest import read_manifest
from avdali.train.checkpoint import save_checkpoint
from avdali.train.config_toml import load_config
from avdali.train.evaluate import classification_metrics
from avdali.infer.load import load_model, newest_checkpoint
from avdali.infer.report import per_class, report_dict, write_confusion_png, write_json

TINY = [
    "data.loader=torch", "data.frames=4", "data.crop=64", "data.n_mels=32", "data.batch_size=4", "data.num_threads=1",
    "model.audio_dim=32", "model.audio_conv_channels=[16, 32]", "model.audio_heads=2", "model.audio_layers=1",
    "model.audio_ff_dim=64", "model.video_dim=32", "model.fusion_heads=2", "model.fusion_ff_dim=64",
    "train.device=cpu", "train.amp=none", "train.compile=false", "train.channels_last=false",
]
"""A model small enough for 2 CPU cores (configs/demo.toml, narrower)."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_checkpoint(path: Path, shards: Path, *overrides: str, seed: int = 0) -> Path:
    """An untrained model saved in the training loop's checkpoint format (model + resolved config + counters)."""
    cfg = load_config(None, [*TINY, f'data.shards="{shards}"', *overrides])
    torch.manual_seed(seed)
    # "imagenet" in the config stands for how the run started; the saved weights are what matter (no download here)
    model = build_model(dataclasses.replace(cfg.model, backbone_weights="none"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, {"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 3, "step": 12,
                                  "metric": "ua", "best_metric": 0.0, "val": {}})


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# --- report functions vs scikit-learn --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1])
def test_report_matches_sklearn(seed, tmp_path):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 6, 150)  # class 6 never true; it may be predicted
    pred = np.where(rng.random(150) < 0.5, label, rng.integers(0, 7, 150))
    metrics = classification_metrics(pred, label, 7)
    rows = per_class(metrics["confusion"], UNIFIED)
    precision, recall, f1, support = precision_recall_fscore_support(label, pred, labels=range(7), zero_division=0)
    np.testing.assert_allclose([r.precision for r in rows], precision)
    np.testing.assert_allclose([r.recall for r in rows], recall)
    np.testing.assert_allclose([r.f1 for r in rows], f1)
    np.testing.assert_array_equal([r.support for r in rows], support)
    np.testing.assert_array_equal([r.predicted for r in rows], np.bincount(pred, minlength=7))

    report = report_dict({**metrics, "loss": 1.5}, UNIFIED, checkpoint=Path("a/best.pt"), splits=("fold1",))
    path = write_json(tmp_path / "m.json", report)
    back = json.loads(path.read_text())
    assert back["checkpoint"] == "a/best.pt" and back["splits"] == ["fold1"]
    assert back["metrics"]["acc"] == pytest.approx(accuracy_score(label, pred))
    assert back["metrics"]["ua"] == pytest.approx(balanced_accuracy_score(label, pred))
    assert back["metrics"]["weighted_f1"] == pytest.approx(f1_score(label, pred, average="weighted"))
    assert back["metrics"]["macro_f1"] == pytest.approx(f1_score(label, pred, average="macro"))
    assert back["metrics"]["num_samples"] == 150 and back["metrics"]["loss"] == 1.5
    assert back["confusion"] == confusion_matrix(label, pred, labels=range(7)).tolist()
    assert [r["name"] for r in back["per_class"]] == list(UNIFIED)


def test_confusion_png_is_a_png(tmp_path):
    confusion = np.arange(64).reshape(8, 8)
    path = write_confusion_png(tmp_path / "sub" / "c.png", confusion, NATIVE_RAVDESS, title="t")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(tmp_path.rglob("*.tmp"))


def test_per_class_rejects_wrong_shape():
    with pytest.raises(ValueError, match="7 classes"):
        per_class(np.zeros((8, 8)), UNIFIED)


# --- loading checkpoints ------------------------------------------------------------------------------------


def test_load_model_forces_no_backbone_download(tmp_path, ravdess_shards):
    # "imagenet" would download torchvision's weights; inference must build with "none" and load the trained ones.
    path = make_checkpoint(tmp_path / "best.pt", ravdess_shards, "model.backbone_weights=imagenet")
    loaded = load_model(path, "cpu")
    assert loaded.config.model.backbone_weights == "none"
    assert loaded.class_names == UNIFIED and loaded.epoch == 3 and not loaded.model.training
    saved = torch.load(path, weights_only=True)["model"]
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)


def test_load_model_errors(tmp_path, ravdess_shards):
    with pytest.raises(AvdaliError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt", "cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(AvdaliError, match="junk.pt: not a readable checkpoint"):
        load_model(junk, "cpu")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(AvdaliError, match="not an avdali checkpoint"):
        load_model(tmp_path / "other.pt", "cpu")

    # weights of a wider model under a config that describes a narrower one
    path = make_checkpoint(tmp_path / "wide.pt", ravdess_shards, "model.video_dim=64")
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["video_dim"] = 32
    torch.save(state, path)
    with pytest.raises(AvdaliError, match="wide.pt: the weights do not fit the model its config describes"):
        load_model(path, "cpu")

    path = make_checkpoint(tmp_path / "r8.pt", ravdess_shards, "data.label_space=ravdess8")
    with pytest.raises(AvdaliError, match="label space 'ravdess8' \\(8 classes\\), 'unified' \\(7 classes\\)"):
        load_model(path, "cpu", label_space="unified")


def test_newest_checkpoint(tmp_path):
    with pytest.raises(AvdaliError, match="no checkpoint given"):
        newest_checkpoint(tmp_path / "output")
    import os

    for i, name in enumerate(["b-run", "a-run"]):
        (tmp_path / "output" / name).mkdir(parents=True)
        (tmp_path / "output" / name / "best.pt").write_bytes(b"x")
        os.utime(tmp_path / "output" / name / "best.pt", (1000 + i, 1000 + i))
    assert newest_checkpoint(tmp_path / "output") == tmp_path / "output" / "a-run" / "best.pt"
    # any depth: avdali demo's run folders are output/demo/runs/demo-<time>/
    deep = tmp_path / "output" / "demo" / "runs" / "demo-20261129-230000" / "best.pt"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"x")
    os.utime(deep, (1002, 1002))
    assert newest_checkpoint(tmp_path / "output") == deep


# --- the CLI end to end -----------------------------------------------------------------------------------------


def _reference(loaded, shards: Path, splits) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions by running the model over a fresh loader ourselves (not through evaluate())."""
    from avdali.infer.predict import logits_of

    data_cfg = loaded.config.data.loader_config()
    data_cfg.shards = str(shards)
    loader = build_loader(data_cfg, splits, train=False)
    labels, preds = [], []
    for batch in loader:
        keep = batch.valid
        labels.append(batch.label[keep])
        preds.append(logits_of(loaded, batch).argmax(1)[keep])
    return torch.cat(labels).numpy(), torch.cat(preds).numpy()


def test_eval_cli_ravdess_default_fold(tmp_path, ravdess_shards):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ravdess_shards, "data.fold=2")
    out = tmp_path / "metrics.json"
    result = run("eval", "--checkpoint", ckpt, "--shards", ravdess_shards, "--json", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["dataset"] == "ravdess" and report["splits"] == ["fold2"]  # the checkpoint's test fold
    manifest = read_manifest(ravdess_shards)
    expected = manifest.splits["fold2"].labels
    assert report["metrics"]["num_samples"] == manifest.splits["fold2"].samples
    assert {r["name"]: r["support"] for r in report["per_class"]} == {n: expected.get(n, 0) for n in UNIFIED}

    label, pred = _reference(load_model(ckpt, "cpu"), ravdess_shards, ["fold2"])
    assert report["metrics"]["acc"] == pytest.approx(accuracy_score(label, pred))
    assert report["metrics"]["weighted_f1"] == pytest.approx(f1_score(label, pred, average="weighted"))
    assert report["confusion"] == confusion_matrix(label, pred, labels=range(7)).tolist()

    png = ckpt.parent / "best-ravdess-fold2-confusion.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    for text in ("per class", "weighted F1", "confusion", "surprised"):
        assert text in result.output


@pytest.mark.slow  # ~20 s on 2 shared cores: two evaluations, each starting a loader worker
def test_eval_cli_cross_dataset_and_splits(tmp_path, ravdess_shards, meld_shards):
    # trained (here: saved) on RAVDESS in the unified space, evaluated on MELD's test split and on two splits together
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards)
    out, png = tmp_path / "meld.json", tmp_path / "pics" / "meld.png"
    result = run("eval", "-k", ckpt, "-s", meld_shards, "--json", out, "--png", png, "--loader", "torch", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    manifest = read_manifest(meld_shards)
    assert report["dataset"] == "meld" and report["splits"] == ["test"] and report["loader"] == "torch"
    assert report["metrics"]["num_samples"] == manifest.splits["test"].samples
    assert png.read_bytes().startswith(PNG_MAGIC)

    result = run("eval", "-k", ckpt, "-s", meld_shards, "--split", "dev", "--split", "test", "--json", out, "--png", png)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["splits"] == ["dev", "test"]
    assert report["metrics"]["num_samples"] == manifest.splits["dev"].samples + manifest.splits["test"].samples


def test_eval_cli_native_ravdess_space(tmp_path, ravdess_shards, meld_shards):
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards, "data.label_space=ravdess8", "data.fold=3")
    out = tmp_path / "r8.json"
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["class_names"] == list(NATIVE_RAVDESS) and len(report["confusion"]) == 8
    assert report["splits"] == ["fold3"]

    result = run("eval", "-k", ckpt, "-s", meld_shards)
    assert result.exit_code == 1
    assert "ravdess8" in result.output and "meld" in result.output and "Traceback" not in result.output


def test_eval_cli_bad_input(tmp_path, ravdess_shards):
    ckpt = make_checkpoint(tmp_path / "best.pt", ravdess_shards)
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--split", "fold9")
    assert result.exit_code == 1 and "no split 'fold9'" in result.output
    result = run("eval", "-k", tmp_path / "nope.pt", "-s", ravdess_shards)
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    result = run("eval", "-k", ckpt, "-s", tmp_path)
    assert result.exit_code == 1 and "manifest" in result.output
    result = run("eval", "-k", ckpt, "-s", ravdess_shards, "--loader", "nvjpeg")
    assert result.exit_code == 1 and "--loader must be one of" in result.output


@pytest.mark.slow
def test_eval_reproduces_the_training_runs_test_metrics(tmp_path, ravdess_shards):
    # A real (one-epoch) run's best.pt: eval on the same test fold must give the numbers training logged as test/*.
    from avdali.train.run import run_training

    cfg = load_config(None, [*TINY, f'data.shards="{ravdess_shards}"', "train.epochs=1", "data.augment=false",
                             f'train.run_dir="{tmp_path / "run"}"'])
    trained = run_training(cfg)
    out = tmp_path / "test.json"
    result = run("eval", "-k", tmp_path / "run" / "best.pt", "-s", ravdess_shards, "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["splits"] == ["fold1"]
    for key in ("acc", "ua", "weighted_f1", "macro_f1", "loss", "num_samples"):
        assert report["metrics"][key] == pytest.approx(trained.test[key], rel=1e-5), key
