"""Both loaders on tiny packed shards: shapes, dtypes, ranges, sharding, exact evaluation, epochs, errors.

The torch loader starts forkserver workers (a few seconds each time), so its cases are few and marked slow.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch

from avdali.data import sampling
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.shards import list_splits
from avdali.errors import AvdaliError

SPLITS = ["fold1", "fold2"]


def small(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), batch_size=3, frames=4, crop=96, audio_seconds=1.0, num_threads=1, shuffle_buffer=8)
    base.update(kw)
    return DataConfig(**base)


def collect(loader):
    """Every batch of one epoch; (index, valid) pairs and the batch count."""
    pairs, count = [], 0
    for batch in loader:
        count += 1
        pairs += list(zip(batch.index.tolist(), batch.valid.tolist()))
    return pairs, count


def test_dali_batch_shapes_dtypes_and_ranges(ravdess_shards):
    cfg = small(ravdess_shards)
    loader = build_loader(cfg, SPLITS, train=True, seed=1)
    frames = sampling.feature_frames(sampling.window_samples(cfg.audio_seconds))
    batch = next(iter(loader))
    assert batch.video.shape == (3, 4, 3, 96, 96) and batch.video.dtype == torch.uint8
    assert batch.audio.shape == (3, 64, frames) and batch.audio.dtype == torch.float32
    assert batch.audio_len.dtype == batch.label.dtype == batch.index.dtype == torch.int64
    assert batch.valid.dtype == torch.bool
    assert batch.video.float().std() > 5  # real pictures, not a blank fill
    assert ((batch.audio_len >= 1) & (batch.audio_len <= frames)).all()
    assert ((batch.label >= 0) & (batch.label < 7)).all()
    for j in range(3):  # normalised per bin over the valid frames, zero padding after
        valid = batch.audio[j, :, : batch.audio_len[j]]
        assert valid.mean(dim=1).abs().max() < 1e-3
        assert batch.audio[j, :, batch.audio_len[j] :].abs().max() == 0 if batch.audio_len[j] < frames else True


def test_dali_mfcc_and_float16_video(ravdess_shards):
    cfg = small(ravdess_shards, features="mfcc", n_mfcc=13, video_dtype="float16", label_space="ravdess8")
    batch = next(iter(build_loader(cfg, SPLITS, train=False)))
    assert batch.audio.shape[1] == 13 == cfg.feature_bins
    assert batch.video.dtype == torch.float16 and batch.video.shape == (3, 4, 3, 96, 96)
    assert -2.2 <= batch.video.min() and batch.video.max() <= 2.7  # ImageNet-normalised range
    assert ((batch.label >= 0) & (batch.label < 8)).all()


@pytest.mark.parametrize("loader_name", ["dali", pytest.param("torch", marks=pytest.mark.slow)])
def test_evaluation_visits_every_sample_once_across_ranks(ravdess_shards, loader_name):
    # 8 samples over 3 ranks (2, 3, 3) with batch 2: 2 batches per rank, rank 0 pads a whole batch
    cfg = small(ravdess_shards, batch_size=2, loader=loader_name)
    total = sum(list_splits(ravdess_shards)[s] for s in SPLITS)
    assert total == 8
    seen = []
    for rank in range(3):
        loader = build_loader(cfg, SPLITS, train=False, rank=rank, world_size=3)
        pairs, count = collect(loader)
        assert count == len(loader) == 2
        lo, hi = sampling.rank_range(total, rank, 3)
        assert sorted(i for i, v in pairs if v) == list(range(lo, hi))
        seen += [i for i, v in pairs if v]
    assert sorted(seen) == list(range(total))


def test_dali_training_shards_are_disjoint_and_cover_the_split(ravdess_shards):
    cfg = small(ravdess_shards, batch_size=2)
    per_rank = []
    for rank in range(2):
        loader = build_loader(cfg, SPLITS, train=True, rank=rank, world_size=2, seed=3)
        pairs, count = collect(loader)
        assert count == len(loader) == 2
        per_rank.append({i for i, v in pairs if v})
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(range(8))


def test_dali_epochs_reshuffle_reproducibly(ravdess_shards):
    cfg = small(ravdess_shards, batch_size=4, augment=False)
    splits = ["fold1", "fold2", "fold3", "fold4"]

    def orders(seed):
        loader = build_loader(cfg, splits, train=True, seed=seed)
        out = []
        for epoch in range(3):
            loader.set_epoch(epoch)
            pairs, count = collect(loader)
            assert count == len(loader) == 4
            assert sorted(i for i, _ in pairs) == list(range(16))
            out.append([i for i, _ in pairs])
        return out

    first = orders(seed=5)
    assert len({tuple(o) for o in first}) > 1  # epochs differ
    assert orders(seed=5) == first  # and are reproducible


def test_dali_index_matches_the_sample(ravdess_shards):
    """index → the same clip in the torch-free order of the shard indexes: labels agree with meta.i32."""
    from avdali.data.shards import resolve
    import numpy as np

    shardset = resolve(ravdess_shards, SPLITS)
    labels = {}
    for f in shardset.files:
        import webdataset as wds

        for j, sample in enumerate(wds.WebDataset(f.tar, shardshuffle=False)):
            labels[f.first + j] = int(np.frombuffer(sample["meta.i32"], "<i4")[1])
    for batch in build_loader(small(ravdess_shards), SPLITS, train=True, seed=0):
        for i, label in zip(batch.index.tolist(), batch.label.tolist()):
            assert labels[i] == label


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error(ravdess_shards):
    with pytest.raises(AvdaliError, match="CUDA is not available"):
        build_loader(small(ravdess_shards), SPLITS, train=True, device="cuda")


@pytest.mark.parametrize("train, features, video_dtype", [(True, "logmel", "uint8"), (False, "mfcc", "float16")])
def test_gpu_pipeline_is_defined(ravdess_shards, train, features, video_dtype):
    """Tracing the GPU variant checks every argument name of the mixed/gpu ops without needing a GPU."""
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    shardset = resolve(ravdess_shards, SPLITS)
    cfg = small(ravdess_shards, features=features, video_dtype=video_dtype)
    loader = DaliLoader(cfg, shardset, train=train, device="cuda", rank=0, world_size=1, seed=0, frame_size=(128, 128))
    pipe = loader.make_pipeline(device_id=0)
    assert pipe.device_id == 0
    # the traced outputs: video and audio features must come out of GPU ops (a CPU op there would
    # silently move work back to the CPU); DALI keeps them in the private _graph_out
    assert [node.device for node in pipe._graph_out[:2]] == ["gpu", "gpu"]


@pytest.mark.slow
def test_torch_loader_works_without_dali(ravdess_shards, monkeypatch):
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.") or m == "avdali.data.dali"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    with pytest.raises(AvdaliError, match='data.loader = "torch"'):
        build_loader(small(ravdess_shards), SPLITS, train=False)
    cfg = small(ravdess_shards, loader="torch", batch_size=4)
    loader = build_loader(cfg, SPLITS, train=True, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        b = batches[0]
        assert b.video.shape == (4, 4, 3, 96, 96) and b.video.dtype == torch.uint8
        assert b.audio.shape == (4, 64, 101) and b.audio.dtype == torch.float32
        assert sorted(i for x in batches for i in x.index.tolist()) == list(range(8))
    assert "nvidia.dali" not in [m for m in sys.modules if sys.modules[m] is not None]


def test_replace_keeps_config_checks(ravdess_shards):
    with pytest.raises(AvdaliError):
        replace(small(ravdess_shards), loader="jax")
