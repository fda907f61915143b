"""Joint RAVDESS + MELD runs: config rules (one line each), the mixture loader's draws, the mixture's class
weights, per-dataset metrics and the best.pt rule, with fake loaders and with both real loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avdali.data.batch import Batch
from avdali.data.mixture import PASS_STRIDE, MixtureLoader
from avdali.errors import AvdaliError, ConfigError
from avdali.shardformat.manifest import ShardEntry, build_manifest, read_manifest, write_manifest
from avdali.train import checkpoint as ckpt, loop
from avdali.train.config_toml import load_config
from avdali.train.distributed import init_distributed
from avdali.train.plan import RunPlan, mixture_class_distribution
from avdali.train.run import resolve_config, train

from test_train_loop import PER_SPLIT, FakeLoader, fake_loader, fake_shards, scalar_events, tiny_config  # noqa: F401 (fixture)

JOINT_TAGS = ("val/ravdess/ua", "val/ravdess/acc", "val/meld/weighted_f1", "val/meld/num_samples", "val/joint",
              "val/best_joint", "test/ravdess/ua", "test/meld/weighted_f1", "test/joint")


def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    return fake_shards(tmp_path / "rav"), fake_shards(tmp_path / "meld", dataset="meld")


def shards_override(*folders) -> str:
    return "data.shards=[" + ", ".join(repr(str(f)) for f in folders) + "]"


# --- config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (['data.shards=["a", "b"]', "data.mix=[1, 0]"], "data.mix must be positive numbers"),
    (['data.shards=["a", "b"]', "data.mix=[1, -2.5]"], "data.mix must be positive numbers"),
    (['data.shards=["a", "b"]', 'data.mix=[1, "x"]'], "data.mix must be a number, got 'x'"),
    (['data.shards=["a", "b"]', "data.mix=[1, true]"], "data.mix must be a number"),
    (['data.shards=["a", "b"]', "data.mix=[1]"], "data.mix has 1 weight(s) but data.shards names 2 folder(s)"),
    (['data.shards=["a", "b"]', "data.mix=[1, 2, 3]"], "data.mix has 3 weight(s)"),
    (['data.shards=["a", "./a"]'], "data.shards names the folder './a' twice"),
    (["data.shards=[]"], "data.shards must name at least one shard folder"),
    (["data.shards=[a, b]"], "looks like a list that is not TOML; quote each folder"),
    (['data.shards=["a", "b"]', "data.label_space=ravdess8"], "a joint run (several data.shards) trains in the shared 'unified' space"),
    (['data.shards=["a", "b"]', 'data.val_splits=["dev"]'], "data.val_splits: a joint run uses each dataset's own splits"),
    (['data.shards=["a", "b"]', "data.dataset=ravdess"], "data.dataset 'ravdess': a joint run names one dataset per"),
    (["train.joint_metric=best"], "train.joint_metric must be one of 'mean', 'ravdess', 'meld'"),
])
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    text = str(e.value)
    assert message in text and "\n" not in text


def test_shard_list_forms():
    cfg = load_config(None, ['data.shards=["x/rav", "x/meld"]', "data.mix=[2, 1]"])
    assert cfg.data.joint and cfg.data.shard_folders() == ["x/rav", "x/meld"] and cfg.data.mix == [2.0, 1.0]
    one = load_config(None, ['data.shards=["x/rav"]'])
    assert not one.data.joint and one.data.shards == "x/rav"  # a one-folder list is the plain run
    with pytest.raises(AvdaliError, match="built per shard folder"):
        cfg.data.loader_config()
    assert cfg.data.loader_config("x/meld").shards == "x/meld"


def test_shard_folders_must_fit_together(tmp_path):
    rav, meld = two_datasets(tmp_path)
    rav2 = fake_shards(tmp_path / "rav2")
    cases = [
        ([rav, rav2], [], f"both hold ravdess shards; a joint run takes one folder per dataset"),
        ([rav, meld], ["data.dataset=meld+ravdess"], "data.dataset is 'meld' but"),
        ([rav, meld], ["train.joint_metric=ravdess", "data.dataset=ravdess+meld"], None),
    ]
    for folders, extra, message in cases:
        cfg = load_config(None, [shards_override(*folders), "train.device=cpu", f"train.run_dir={str(tmp_path / 'r')!r}", *extra])
        if message is None:
            resolved, plan = resolve_config(cfg)
            assert isinstance(plan, RunPlan) and plan.joint and resolved.data.dataset == "ravdess+meld"
            continue
        with pytest.raises(ConfigError) as e:
            resolve_config(cfg)
        assert message in str(e.value) and "\n" not in str(e.value)
    # a dataset the rule names must be in the run; the RAVDESS-only label space cannot take MELD shards
    only_rav = load_config(None, [shards_override(rav, meld), "train.device=cpu", "train.joint_metric=meld"])
    resolve_config(only_rav)
    with pytest.raises(ConfigError, match="data.label_space 'ravdess8' needs RAVDESS shards"):
        resolve_config(load_config(None, [f"data.shards={str(meld)!r}", "data.label_space=ravdess8", "train.device=cpu"]))


def test_labels_outside_the_unified_space_are_refused(tmp_path):
    rav, _ = two_datasets(tmp_path)
    other = fake_shards(tmp_path / "other", dataset="meld")
    manifest = read_manifest(other)
    entries = [ShardEntry(**{**e.__dict__, "labels": {"neutral": 7, "bored": 7}}) for e in manifest.shards]
    write_manifest(other, build_manifest("meld", {}, entries, ["train", "dev", "test"], [], complete=True))
    with pytest.raises(ConfigError, match="has labels bored outside the unified space"):
        resolve_config(load_config(None, [shards_override(rav, other), "train.device=cpu"]))


# --- the mixture loader -------------------------------------------------------------------------------------------


class CountingLoader:
    """``num_samples`` samples in batches of ``batch_size`` (the last padded with invalid rows); label = ``tag``."""

    def __init__(self, num_samples, batch_size, tag, pad_value=-7):
        self.num_samples, self.batch_size, self.tag = num_samples, batch_size, tag
        self.epochs: list[int] = []
        self.epoch = 0

    def __len__(self):
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        self.epochs.append(self.epoch)
        order = np.random.default_rng(self.epoch).permutation(self.num_samples)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            n, pad = len(idx), self.batch_size - len(idx)
            index = torch.from_numpy(np.concatenate([idx, np.full(pad, -7)]).astype(np.int64))
            yield Batch(video=torch.zeros(self.batch_size, 1, 3, 2, 2, dtype=torch.uint8),
                        audio=torch.zeros(self.batch_size, 2, 3), audio_len=torch.full((self.batch_size,), 3),
                        label=torch.full((self.batch_size,), self.tag), index=index,
                        valid=torch.arange(self.batch_size) < n,
                        audio_present=torch.arange(self.batch_size) % 2 == 0)


def test_mixture_draws_by_weight_deterministically():
    a, b = CountingLoader(1000, 10, 0), CountingLoader(200, 7, 1)
    mix = MixtureLoader([a, b], [1, 1], batch_size=16, seed=3, names=["a", "b"])
    assert len(mix) == 1200 // 16 and mix.num_samples == 1200 and mix.offsets == [0, 1000]
    mix.set_epoch(2)
    batches = list(mix)
    assert len(batches) == len(mix) and all(len(x) == 16 for x in batches)
    labels = torch.cat([x.label for x in batches]).numpy()
    index = torch.cat([x.index for x in batches]).numpy()
    assert all(bool(x.valid.all()) for x in batches)  # padding never reaches a mixture batch
    # every sample's dataset is the one drawn for it, and the draws follow the weights
    draws = mix.draws(2)
    assert np.array_equal(np.bincount(labels, minlength=2), np.bincount(draws.ravel(), minlength=2))
    assert abs((labels == 1).mean() - 0.5) < 0.06  # 1200 draws: 4 standard deviations
    assert ((index >= 1000) == (labels == 1)).all() and index.min() >= 0  # offsets keep indices apart
    # b (200 samples, ~600 draws) ran out and restarted with the next loader epochs of mixture epoch 2
    assert b.epochs == [2 * PASS_STRIDE + k for k in range(len(b.epochs))] and len(b.epochs) >= 3
    # within one pass of b every sample comes once: the first 200 of its rows are a permutation
    first_pass = index[labels == 1][:200] - 1000
    assert sorted(first_pass.tolist()) == list(range(200))
    # audio_present (and every other Batch field) travels with its rows
    present = torch.cat([x.audio_present for x in batches])
    assert present.dtype == torch.bool and len(present) == len(labels)
    # the same epoch again: the same batches; another epoch or rank: other draws
    twin = MixtureLoader([CountingLoader(1000, 10, 0), CountingLoader(200, 7, 1)], [1, 1], batch_size=16, seed=3)
    twin.set_epoch(2)
    again = torch.cat([x.index for x in twin]).numpy()
    assert np.array_equal(again, index)
    assert not np.array_equal(mix.draws(3), draws)
    other_rank = MixtureLoader([a, b], [1, 1], batch_size=16, seed=3, rank=1, world_size=2)
    assert not np.array_equal(other_rank.draws(2)[: len(other_rank)], draws[: len(other_rank)])


def test_mixture_weights_set_the_proportions():
    a, b = CountingLoader(300, 8, 0), CountingLoader(300, 8, 1)
    mix = MixtureLoader([a, b], [1, 4], batch_size=20, seed=0)
    labels = torch.cat([x.label for x in mix]).numpy()
    assert len(labels) == 600 and abs((labels == 1).mean() - 0.8) < 0.07
    with pytest.raises(AvdaliError, match="weights must be positive"):
        MixtureLoader([a, b], [1, 0], batch_size=4)


def test_mixture_rows_keep_every_field_and_the_dali_memory_layout():
    from avdali.data.mixture import concat_batches, select_rows

    def batch(n, start):
        memory = torch.arange(start, start + n * 2 * 4 * 4 * 3, dtype=torch.int64).reshape(n, 2, 4, 4, 3)
        return Batch(video=memory.permute(0, 1, 4, 2, 3), audio=torch.rand(n, 2, 5), audio_len=torch.full((n,), 5),
                     label=torch.arange(n), index=torch.arange(start, start + n), valid=torch.ones(n, dtype=torch.bool),
                     video_present=torch.arange(n) % 2 == 1)

    a, b = batch(3, 0), batch(2, 1000)
    both = concat_batches([select_rows(a, torch.tensor([0, 2])), b])
    assert both.video.shape == (4, 2, 3, 4, 4) and both.video.permute(0, 1, 3, 4, 2).is_contiguous()
    torch.testing.assert_close(both.video, torch.cat([a.video[[0, 2]], b.video]))
    assert both.index.tolist() == [0, 2, 1000, 1001] and both.video_present.tolist() == [False, False, False, True]
    assert both.audio_present.all() and torch.equal(both.audio, torch.cat([a.audio[[0, 2]], b.audio]))


def test_mixture_class_weights_match_a_hand_computation(tmp_path, fake_loader):
    rav = fake_shards(tmp_path / "rav")  # per split: neutral 4, happy..fearful 2, disgust 1, surprised 1 (of 14)
    meld = tmp_path / "meld"
    fake_shards(meld, dataset="meld")
    manifest = read_manifest(meld)
    skewed = {"neutral": 10, "happy": 4, "sad": 0, "angry": 0, "fearful": 0, "disgust": 0, "surprised": 0}
    entries = [ShardEntry(**{**e.__dict__, "labels": skewed}) for e in manifest.shards]
    write_manifest(meld, build_manifest("meld", {}, entries, ["train", "dev", "test"], [], complete=True))
    cfg, plan = tiny_config(rav, tmp_path / "run", shards_override(rav, meld), "data.mix=[1, 3]",
                            "optim.class_weights=balanced", "train.epochs=1", "train.test_at_end=false")
    # p = (1/4, 3/4); RAVDESS trains on 3 folds of the same distribution, MELD on its train split
    rav_dist = np.array([4, 2, 2, 2, 2, 1, 1]) / 14
    meld_dist = np.array([10, 4, 0, 0, 0, 0, 0]) / 14
    q = 0.25 * rav_dist + 0.75 * meld_dist
    np.testing.assert_allclose(mixture_class_distribution(plan), q)
    trainer = loop.Trainer(cfg, plan, init_distributed("cpu"))
    expected = torch.tensor(1 / (7 * q), dtype=torch.float32)  # sklearn's n / (classes · count) with n = 1
    torch.testing.assert_close(trainer.loss_weight, expected)
    trainer.writer.close()


def test_best_rule_names_and_values(tmp_path):
    from avdali.train.plan import joint_value, rule_text

    rav, meld = two_datasets(tmp_path)
    per_dataset = {"ravdess": {"ua": 0.6, "acc": 0.5, "weighted_f1": 0.1}, "meld": {"ua": 0.3, "acc": 0.9, "weighted_f1": 0.2}}
    cases = [([], "mean(ravdess/ua, meld/weighted_f1)", 0.4), (["train.joint_metric=meld"], "meld/weighted_f1", 0.2),
             (["train.metric=acc"], "mean(ravdess/acc, meld/acc)", 0.7), (["train.joint_metric=ravdess"], "ravdess/ua", 0.6)]
    for extra, text, value in cases:
        cfg, plan = resolve_config(load_config(None, [shards_override(rav, meld), "train.device=cpu", *extra]))
        assert rule_text(cfg.train, plan) == text
        assert joint_value(cfg.train, plan, per_dataset) == pytest.approx(value)


# --- a joint run, fake loaders -----------------------------------------------------------------------------


@pytest.mark.slow  # a few seconds idle; more on a busy machine
def test_joint_run_logs_per_dataset_and_keeps_best_by_the_rule(tmp_path, fake_loader):
    rav, meld = two_datasets(tmp_path)
    cfg, plan = tiny_config(rav, tmp_path / "run", shards_override(rav, meld), "train.epochs=2")
    assert cfg.data.dataset == "ravdess+meld" and cfg.train.metric == "auto" and cfg.train.joint_metric == "mean"
    result = train(cfg, plan)
    # union: 3 RAVDESS folds + MELD train = 4 · 14 clips, batch 8 → 7 steps per epoch
    assert result.step == 2 * 7 and result.metric == "joint"
    events = scalar_events(cfg.train.run_dir)
    for tag in JOINT_TAGS:
        assert tag in events, tag
    assert "val/ua" not in events and "val/acc" not in events
    for (step, joint), (_, ua), (_, wf1) in zip(events["val/joint"], events["val/ravdess/ua"], events["val/meld/weighted_f1"]):
        assert joint == pytest.approx((ua + wf1) / 2)
    joint = [v for _, v in events["val/joint"]]
    assert result.best_metric == pytest.approx(max(joint))
    best = ckpt.load_checkpoint(Path(cfg.train.run_dir) / ckpt.BEST)
    assert best["epoch"] == 1 + int(np.argmax(joint)) and best["metric"] == "joint"
    assert best["metric_rule"] == "mean(ravdess/ua, meld/weighted_f1)"
    assert best["config"]["train"]["joint_metric"] == "mean"
    # each dataset's test split, every sample once
    assert result.test["ravdess/num_samples"] == PER_SPLIT and result.test["meld/num_samples"] == PER_SPLIT
    assert result.test["joint"] == pytest.approx((result.test["ravdess/ua"] + result.test["meld/weighted_f1"]) / 2)
    assert load_config(Path(cfg.train.run_dir) / "config.toml") == cfg
    # the training indices of the two datasets stay apart (MELD's shifted by the RAVDESS training clips)
    indices = result.ranks[0].last_epoch_indices
    assert len(indices) == 7 * 8 and max(indices) < 4 * PER_SPLIT


def test_joint_run_tests_every_modality_it_trained_for(tmp_path, fake_loader):
    """One run path: a joint run with modality dropout tests best.pt per modality as a single run does, each
    dataset apart and by the rule (``test/audio_only/<dataset>/*``, ``test/audio_only/joint``)."""
    rav, meld = two_datasets(tmp_path)
    cfg, plan = tiny_config(rav, tmp_path / "run", shards_override(rav, meld), "train.epochs=1", "train.drop_video=0.3")
    result = train(cfg, plan)
    assert set(result.robustness) == {"both", "audio"} and result.robustness["both"] == result.test
    audio = result.robustness["audio"]
    assert audio["ravdess/num_samples"] == PER_SPLIT and audio["meld/num_samples"] == PER_SPLIT
    assert audio["joint"] == pytest.approx((audio["ravdess/ua"] + audio["meld/weighted_f1"]) / 2)
    events = scalar_events(cfg.train.run_dir)
    for tag in ("test/audio_only/ravdess/ua", "test/audio_only/meld/weighted_f1", "test/audio_only/joint", "test/joint"):
        assert tag in events, tag
    assert not any(tag.startswith("test/video_only") for tag in events)  # drop_audio = 0: never trained for it


@pytest.mark.slow  # two short runs
def test_joint_resume_continues_exactly(tmp_path, fake_loader, monkeypatch):
    rav, meld = two_datasets(tmp_path)
    extra = (shards_override(rav, meld), "data.mix=[1, 2]", "train.epochs=2", "model.dropout=0.2", "train.test_at_end=false")
    straight = train(*tiny_config(rav, tmp_path / "straight", *extra))

    class CrashInSecondEpoch(FakeLoader):
        def set_epoch(self, epoch):
            if self.train and epoch >= PASS_STRIDE:  # the mixture's epoch 1 starts its loaders' passes at 1000
                raise RuntimeError("simulated crash")
            super().set_epoch(epoch)

    cfg, plan = tiny_config(rav, tmp_path / "resumed", *extra)
    monkeypatch.setattr(loop, "build_loader", CrashInSecondEpoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, plan)
    monkeypatch.setattr(loop, "build_loader", FakeLoader)
    resumed = train(cfg, plan, resume=True)
    assert resumed.step == straight.step == 2 * 7
    a = ckpt.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = ckpt.load_checkpoint(tmp_path / "resumed" / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert a["best_metric"] == b["best_metric"] and a["val"] == b["val"]
    assert straight.ranks[0].last_epoch_indices == resumed.ranks[0].last_epoch_indices


# --- real loaders on the tiny synthetic shards --------------------------------------------------------------


def _joint_toml(tmp_path, ravdess_shards, meld_shards, loader) -> Path:
    from conftest import tiny_run_toml

    text = tiny_run_toml(ravdess_shards, loader=loader, batch_size=4,
                         train='device = "cpu"\nepochs = 2\nlog_every = 1\ncompile = false')
    text = text.replace(f'shards = "{ravdess_shards}"', f'shards = ["{ravdess_shards}", "{meld_shards}"]\nmix = [1, 1]')
    path = tmp_path / "joint.toml"
    path.write_text(text)
    return path


@pytest.mark.slow  # packs the session's tiny shards when no test did yet, then 2 epochs with each loader
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_joint_training_with_real_loaders(tmp_path, ravdess_shards, meld_shards, loader):
    from typer.testing import CliRunner

    from avdali.cli.app import app

    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    config = _joint_toml(tmp_path, ravdess_shards, meld_shards, loader)
    run = tmp_path / "run"
    cfg, plan = resolve_config(load_config(config, [f"train.run_dir={str(run)!r}"]))
    result = train(cfg, plan)
    assert result.epoch == 2 and result.metric == "joint"
    events = scalar_events(run)
    for tag in JOINT_TAGS:
        assert tag in events, tag
    rav, meld = read_manifest(ravdess_shards), read_manifest(meld_shards)
    # exact evaluation per dataset: every clip of the split once
    assert result.val["ravdess/num_samples"] == rav.splits["fold2"].samples
    assert result.val["meld/num_samples"] == meld.splits["dev"].samples
    assert result.test["ravdess/num_samples"] == rav.splits["fold1"].samples
    assert result.test["meld/num_samples"] == meld.splits["test"].samples
    union = sum(rav.splits[f].samples for f in ("fold3", "fold4", "fold5")) + meld.splits["train"].samples
    assert result.step == 2 * (union // 4)
    # `avdali eval` of the joint checkpoint on either folder: that dataset's test split
    if loader != "torch":
        return  # the checkpoint's use below reads the same files with either loader
    import json

    runner = CliRunner()
    for shards, split in ((ravdess_shards, "fold1"), (meld_shards, "test")):
        report = tmp_path / f"{split}.json"
        out = runner.invoke(app, ["eval", "-k", str(run / "best.pt"), "-s", str(shards), "--device", "cpu",
                                  "--json", str(report), "--png", str(tmp_path / f"{split}.png")])
        assert out.exit_code == 0, out.output
        assert split in json.dumps(json.loads(report.read_text()))


def test_cross_marks_both_datasets_of_a_joint_checkpoint_in_domain(tmp_path, ravdess_shards, meld_shards):
    from test_eval_cli import make_checkpoint

    from avdali.experiments.cross import plan_cross

    joint = make_checkpoint(tmp_path / "joint" / "best.pt", ravdess_shards, shards_override(ravdess_shards, meld_shards),
                            "data.dataset=ravdess+meld", "data.fold=2")
    _, table = plan_cross([joint], [ravdess_shards, meld_shards], device="cpu")
    assert [r.trained_on for r in table.rows] == ["ravdess+meld"]
    assert table.in_domain().tolist() == [[True, True]]
    assert [c.splits for c in table.cells[0]] == [("fold2",), ("test",)]  # each dataset's held-out split
