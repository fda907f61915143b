"""The training loop on CPU with the real (tiny) AVFusionModel and an in-memory loader of an easy task:
it learns, resumes exactly, skips non-finite steps, writes atomic checkpoints and TensorBoard events."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avdali.data.batch import Batch
from avdali.errors import AvdaliError
from avdali.shardformat.manifest import ShardEntry, build_manifest, write_manifest
from avdali.train import checkpoint as ckpt, loop
from avdali.train.config_toml import load_config
from avdali.train import run as train_run
from avdali.train.distributed import init_distributed
from avdali.train.loop import TrainingStopped, lr_at
from avdali.train.run import resolve_config, train

NUM_CLASSES = 7
PER_SPLIT = 14  # 2 clips of each class per fold
T, CROP, MELS, AUDIO_FRAMES = 2, 16, 8, 16

TINY_MODEL = [
    "model.audio_dim=16", "model.audio_conv_channels=[8]", "model.audio_heads=2", "model.audio_layers=1",
    "model.audio_ff_dim=16", "model.video_dim=16", "model.fusion_heads=2", "model.fusion_ff_dim=16",
    "model.additive_dim=8",
    "model.freeze_backbone=true",  # a random frozen ResNet18 still passes brightness on; keeps CPU steps cheap
]


def fake_shards(root: Path, dataset: str = "ravdess") -> Path:
    """A manifest.json for 5 folds of PER_SPLIT clips (the fake loader makes the clips themselves)."""
    splits = [f"fold{k}" for k in range(1, 6)] if dataset == "ravdess" else ["train", "dev", "test"]
    entries = []
    for split in splits:
        name = f"{dataset}-{split}-000000.tar"
        entries.append(ShardEntry(
            name=name, index_name=name[:-4] + ".idx", split=split, samples=PER_SPLIT,
            keys=[f"{split}_{i}" for i in range(PER_SPLIT)], sha256="0" * 64, bytes=0,
            labels={"neutral": 4, "happy": 2, "sad": 2, "angry": 2, "fearful": 2, "disgust": 1, "surprised": 1},
        ))
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, build_manifest(dataset, {}, entries, splits, [], complete=True))
    return root


class FakeLoader:
    """The Loader contract over an easy synthetic task: the class shows in the frames' brightness and in one
    log-mel bin. Per rank: every world_size-th sample; padding (valid=False) evens out ranks and the last batch."""

    def __init__(self, cfg, splits, *, train, device="cpu", rank=0, world_size=1, seed=0, local_ranks=1,
                 say=None, progress=None, nan_batches=()):
        self.batch_size = cfg.batch_size
        self.train = train
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.nan_batches = set(nan_batches)
        labels = []
        for split in splits:
            k = int(split[-1]) if split[-1].isdigit() else len(split)
            labels += [(i + k) % NUM_CLASSES for i in range(PER_SPLIT)]
        self.labels = np.array(labels)
        self.num_samples = len(labels)
        self.per_rank = math.ceil(self.num_samples / world_size)
        self.epoch = 0

    def __len__(self):
        return math.ceil(self.per_rank / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = np.arange(self.num_samples)
        if self.train:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        mine = order[self.rank :: self.world_size]
        valid = np.ones(len(mine), bool)
        pad = len(self) * self.batch_size - len(mine)
        mine = np.concatenate([mine, np.resize(order, pad)]) if pad else mine
        valid = np.concatenate([valid, np.zeros(pad, bool)])
        noise = np.random.default_rng([self.seed, self.epoch, self.rank, 7])
        for b in range(len(self)):
            idx = mine[b * self.batch_size : (b + 1) * self.batch_size]
            y = self.labels[idx]
            video = (y[:, None, None, None, None] * 30 + noise.integers(0, 40, (len(idx), T, 3, CROP, CROP))).astype(np.uint8)
            audio = noise.normal(0, 0.5, (len(idx), MELS, AUDIO_FRAMES)).astype(np.float32)
            audio[np.arange(len(idx)), y % MELS, :] += 2.0
            if b in self.nan_batches:
                audio[:] = np.nan
            yield Batch(
                video=torch.from_numpy(video),
                audio=torch.from_numpy(audio),
                audio_len=torch.full((len(idx),), AUDIO_FRAMES, dtype=torch.int64),
                label=torch.from_numpy(y.astype(np.int64)),
                index=torch.from_numpy(idx.astype(np.int64)),
                valid=torch.from_numpy(valid[b * self.batch_size : (b + 1) * self.batch_size]),
            )


def tiny_config(shards: Path, run_dir: Path, *extra: str):
    """The resolved config and its split plan (``train(*tiny_config(...))``)."""
    cfg = load_config(None, [
        f"data.shards={str(shards)!r}", "data.batch_size=8", f"data.frames={T}", f"data.crop={CROP}",
        f"data.n_mels={MELS}", "data.loader=torch", *TINY_MODEL,
        "optim.lr=1e-2", "optim.warmup_steps=2", "model.dropout=0.0", "optim.label_smoothing=0.0",
        "train.device=cpu", "train.epochs=4", "train.log_every=2", "train.compile=false",
        f"train.run_dir={str(run_dir)!r}", *extra,
    ])
    return resolve_config(cfg)


@pytest.fixture
def fake_loader(monkeypatch):
    monkeypatch.setattr(loop, "build_loader", FakeLoader)
    return FakeLoader


def scalar_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_lr_schedule_warms_up_then_decays_to_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=20)
    lrs = [lr_at(s, **kw) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[12] == pytest.approx(0.55)  # half way through the cosine
    assert lrs[20] == pytest.approx(0.1)


@pytest.mark.slow  # ~2 s on an idle 2-core machine, >20 s on a busy one
def test_training_learns_and_writes_run(tmp_path, fake_loader):
    shards = fake_shards(tmp_path / "shards")
    cfg, plan = tiny_config(shards, tmp_path / "run", "train.epochs=4")
    result = train(cfg, plan)

    # 3 training folds of 14 clips, batch 8 → 6 steps per epoch; validation on fold 2, test on fold 1
    assert result.step == 4 * 6 and result.epoch == 4
    assert result.metric == "ua"
    assert result.best_metric >= 0.85  # chance is 1/7
    assert result.test["acc"] >= 0.85 and result.test["num_samples"] == PER_SPLIT
    events = scalar_events(cfg.train.run_dir)
    losses = [v for _, v in events["train/loss"]]
    assert losses[-1] < 0.5 * losses[0]
    for tag in ("train/loss", "train/acc", "train/lr", "train/clips_per_s", "train/data_wait_frac", "train/step_ms",
                "val/loss", "val/acc", "val/ua", "val/weighted_f1", "val/macro_f1", "test/acc"):
        assert tag in events, tag
    assert [s for s, _ in events["val/ua"]] == [6, 12, 18, 24]
    assert all(0 <= v <= 1 for _, v in events["train/data_wait_frac"])

    run = Path(cfg.train.run_dir)
    assert (run / "config.toml").is_file() and load_config(run / "config.toml") == cfg
    best = torch.load(run / "best.pt", weights_only=True)  # only tensors and primitive containers
    assert best["config"] == cfg.to_dict()
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in best["model"])
    last = ckpt.load_checkpoint(run / "last.pt")
    assert last["step"] == 24 and last["epoch"] == 4
    assert set(last) >= {"model", "optimizer", "scaler", "scheduler", "step", "epoch", "config", "best_metric", "rng"}
    assert not list(run.glob("*.tmp"))
    assert len(result.ranks) == 1 and len(result.ranks[0].last_epoch_indices) == 3 * PER_SPLIT


@pytest.mark.parametrize("modality_dropout", [
    (), pytest.param(("train.drop_audio=0.3", "train.drop_video=0.3"), marks=pytest.mark.slow)  # ~15-50 s
], ids=["plain", "modality_dropout"])
def test_resume_continues_exactly(tmp_path, fake_loader, monkeypatch, modality_dropout):
    shards = fake_shards(tmp_path / "shards")
    extra = ("train.epochs=2", "model.dropout=0.2", "train.test_at_end=false", *modality_dropout)
    straight = train(*tiny_config(shards, tmp_path / "straight", *extra))

    class CrashInSecondEpoch(FakeLoader):
        def set_epoch(self, epoch):
            if self.train and epoch == 1:
                raise RuntimeError("simulated crash")
            super().set_epoch(epoch)

    cfg, plan = tiny_config(shards, tmp_path / "resumed", *extra)
    monkeypatch.setattr(loop, "build_loader", CrashInSecondEpoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, plan)
    monkeypatch.setattr(loop, "build_loader", FakeLoader)
    resumed = train(cfg, plan, resume=True)

    assert resumed.step == straight.step == 12
    a = ckpt.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = ckpt.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(value, b["optimizer"]["state"][pid][name], rtol=0, atol=0)
    assert a["best_metric"] == b["best_metric"]
    # TensorBoard continues with no duplicated or missing steps
    steps_a = [s for s, _ in scalar_events(tmp_path / "straight")["train/loss"]]
    steps_b = [s for s, _ in scalar_events(tmp_path / "resumed")["train/loss"]]
    assert steps_b == steps_a == [2, 4, 6, 8, 10, 12]


def test_resume_refusals(tmp_path, fake_loader):
    shards = fake_shards(tmp_path / "shards")
    cfg, plan = tiny_config(shards, tmp_path / "run", "train.epochs=1", "train.test_at_end=false")
    with pytest.raises(AvdaliError, match="last.pt not found"):
        train_run.run_training(cfg, resume=True)
    train_run.run_training(cfg)
    with pytest.raises(AvdaliError, match="already holds a run"):
        train_run.run_training(cfg)
    # a different model cannot continue this checkpoint
    other, _ = tiny_config(shards, tmp_path / "run", "train.epochs=2", "model.video_dim=32")
    with pytest.raises(AvdaliError, match="does not fit"):
        train(other, plan, resume=True)


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    shards = fake_shards(tmp_path / "shards")

    class SomeNan(FakeLoader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw, nan_batches={1, 3} if kw.get("train") else ())

    monkeypatch.setattr(loop, "build_loader", SomeNan)
    result = train(*tiny_config(shards, tmp_path / "some", "train.epochs=2", "train.test_at_end=false"))
    assert result.bad_steps == 4  # 2 per epoch, skipped
    state = ckpt.load_checkpoint(tmp_path / "some" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(int(s["step"]) == 12 - 4 for s in state["optimizer"]["state"].values())  # AdamW counted only real steps

    class NanFromEpoch2(FakeLoader):
        def __iter__(self):
            self.nan_batches = set(range(len(self))) if self.train and self.epoch >= 1 else set()
            return super().__iter__()

    monkeypatch.setattr(loop, "build_loader", NanFromEpoch2)
    cfg, plan = tiny_config(shards, tmp_path / "diverged", "train.epochs=3", "train.max_bad_steps=3")
    with pytest.raises(TrainingStopped, match=r"steps in a row had a non-finite loss.*last\.pt"):
        train(cfg, plan)
    kept = ckpt.load_checkpoint(tmp_path / "diverged" / "last.pt")
    assert kept["epoch"] == 1 and kept["step"] == 6  # the last good checkpoint stays


def test_balanced_class_weights_from_manifest(tmp_path, fake_loader):
    shards = fake_shards(tmp_path / "shards", dataset="meld")
    cfg, plan = tiny_config(shards, tmp_path / "run", "optim.class_weights=balanced", "train.epochs=1", "train.test_at_end=false")
    assert cfg.train.metric == "weighted_f1"  # MELD's metric when "auto"
    trainer = loop.Trainer(cfg, plan, init_distributed("cpu"))
    # train split: neutral 4, the others 2,2,2,2,1,1 of 14 → 14 / (7 · count)
    expected = torch.tensor([14 / 28, 14 / 14, 14 / 14, 14 / 14, 14 / 14, 14 / 7, 14 / 7])
    torch.testing.assert_close(trainer.loss_weight, expected)
    trainer.writer.close()


def test_checkpoint_is_atomic_and_errors_name_the_file(tmp_path):
    path = tmp_path / "x.pt"
    ckpt.save_checkpoint(path, {"a": torch.ones(2), "step": 3})
    assert ckpt.load_checkpoint(path)["step"] == 3 and not (tmp_path / "x.pt.tmp").exists()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AvdaliError, match=r"bad\.pt: not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(AvdaliError, match=r"nope\.pt: checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("amp", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])  # fp16 on CPU is slow
def test_autocast_precisions_train_on_cpu(tmp_path, fake_loader, amp):
    shards = fake_shards(tmp_path / "shards")
    cfg, plan = tiny_config(shards, tmp_path / "run", "train.epochs=1", "train.test_at_end=false", f"train.amp={amp}")
    result = train(cfg, plan)
    assert result.step == 6 and result.bad_steps == 0
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in state["model"].values())  # fp32 master weights
    assert ("scale" in state["scaler"]) == (amp == "fp16")  # the GradScaler state travels with fp16 only


@pytest.mark.slow  # dynamo tracing takes ~25 s on 2 cores
def test_compiled_model_saves_raw_state_dict(tmp_path, fake_loader, monkeypatch):
    # The eager backend keeps the wrapping (OptimizedModule with _orig_mod) without inductor's compile time.
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kw):
        compiled.append(model)
        return real_compile(model, backend="eager", **kw)

    monkeypatch.setattr(loop.torch, "compile", eager_compile)
    shards = fake_shards(tmp_path / "shards")
    cfg, plan = tiny_config(shards, tmp_path / "run", "train.epochs=1", "train.test_at_end=false", "train.compile=true")
    trainer = loop.Trainer(cfg, plan, init_distributed("cpu"))
    assert compiled and trainer.model is not trainer.raw_model
    trainer.fit()
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert set(state["model"]) == set(trainer.raw_model.state_dict())
    assert not any("_orig_mod" in k for k in state["model"])


def test_log_window_sums_steps_on_the_device_and_reads_them_once():
    from avdali.train.log_window import LogWindow

    window = LogWindow(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    window.add_wait(0.5)
    # 2 valid clips of 3 (the last is padding), one right; then a bad step of 3 valid clips
    window.add_step(torch.tensor(1.5), logits, torch.tensor([0, 0, 1]), torch.tensor([True, True, False]), torch.tensor(False))
    window.add_step(torch.tensor(float("nan")), logits, torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), torch.tensor(True))
    sums = window.close()
    assert (sums.steps, sums.clips, sums.good_clips, sums.correct, sums.bad_steps, sums.bad_run) == (2, 5, 2, 4, 1, 1)
    assert sums.loss_sum == pytest.approx(3.0) and sums.data_wait_s == 0.5 and sums.seconds > 0
    rates = sums.rates()
    assert rates["loss"] == pytest.approx(1.5) and rates["acc"] == pytest.approx(4 / 5)
    assert rates["clips_per_s"] == pytest.approx(5 / sums.seconds) and rates["step_ms"] == pytest.approx(500 * sums.seconds)
    window.add_step(torch.tensor(float("nan")), logits, torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), torch.tensor(True))
    again = window.close()  # a new window, but the run of bad steps goes on across it
    assert (again.steps, again.bad_steps, again.bad_run, again.data_wait_s) == (1, 1, 2, 0.0)
