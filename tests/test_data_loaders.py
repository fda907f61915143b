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


def _graph_ops(*outputs) -> list[tuple[str, str]]:
    """(schema name, device) of every operator upstream of traced ``outputs`` (DALI's private graph objects)."""
    seen, stack = {}, list(outputs)
    while stack:
        op = stack.pop().source
        if op is None or op.id in seen:
            continue
        seen[op.id] = (getattr(op._op, "schema_name", None) or type(op._op).__name__, op._op.device)
        stack += list(op.inputs)
    return list(seen.values())


@pytest.mark.parametrize("train, features, video_dtype, crop_interp, decode",
                         [(True, "logmel", "uint8", "nearest", "gpu"), (True, "logmel", "uint8", "linear", "cpu"),
                          (False, "mfcc", "float16", "nearest", "gpu"), (False, "logmel", "uint8", "linear", "cpu")])
def test_gpu_pipeline_is_defined(ravdess_shards, train, features, video_dtype, crop_interp, decode):
    """Tracing the GPU variant checks every argument name of the mixed/gpu ops without needing a GPU, for both
    places the video can be decoded (NVDEC, or the CPU threads with every later op on the GPU)."""
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    shardset = resolve(ravdess_shards, SPLITS)
    cfg = small(ravdess_shards, features=features, video_dtype=video_dtype, crop_interp=crop_interp, decode=decode)
    loader = DaliLoader(cfg, shardset, train=train, device="cuda", rank=0, world_size=1, seed=0, frame_size=(128, 128))
    assert loader.decode == decode
    pipe = loader.make_pipeline(device_id=0)
    assert pipe.device_id == 0
    # the traced outputs: video and audio features must come out of GPU ops (a CPU op there would
    # silently move work back to the CPU); DALI keeps them in the private _graph_out
    assert [node.device for node in pipe._graph_out[:2]] == ["gpu", "gpu"]
    ops = _graph_ops(*pipe._graph_out[:2])
    assert [device for name, device in ops if name == "decoders__Video"] == ["mixed" if decode == "gpu" else "cpu"]
    # hybrid: the decode (and the reader, audio decode, slicing) on the CPU, but every crop/resize/feature op on the GPU
    later = [device for name, device in ops if name in ("RandomResizedCrop", "CropMirrorNormalize", "Resize", "Spectrogram",
                                                         "MelFilterBank", "ToDecibels", "MFCC", "Normalize")]
    assert later and set(later) == {"gpu"}


def test_decode_rule_resolves_auto_from_the_nvdec_probe(monkeypatch):
    from avdali.data.config import resolve_decode

    asked = []

    def probe(answer):
        return lambda: asked.append(answer) or answer

    assert resolve_decode("auto", probe(True)) == "gpu"
    assert resolve_decode("auto", probe(False)) == "cpu"
    assert resolve_decode("gpu", probe(False)) == "gpu" and resolve_decode("cpu", probe(True)) == "cpu"
    assert asked == [True, False]  # the probe runs for auto only
    with pytest.raises(AvdaliError, match="data.decode must be one of 'auto', 'gpu', 'cpu'; got 'nvdec'"):
        DataConfig(decode="nvdec")


@pytest.mark.parametrize("usable, expected", [(True, "gpu"), (False, "cpu")])
def test_dali_loader_auto_decode_asks_native_probe(ravdess_shards, monkeypatch, usable, expected):
    from avdali import native
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    monkeypatch.setattr(native, "nvdec_usable", lambda device_id=0: usable)
    shardset = resolve(ravdess_shards, SPLITS)
    cfg = small(ravdess_shards, decode="auto")
    loader = DaliLoader(cfg, shardset, train=True, device="cuda", rank=0, world_size=1, seed=0, frame_size=(128, 128))
    assert loader.decode == expected
    cpu = DaliLoader(cfg, shardset, train=True, device="cpu", rank=0, world_size=1, seed=0, frame_size=(128, 128))
    assert cpu.decode == "cpu"  # the CPU pipeline never probes


def test_nvdec_unusable_without_cuda():
    from avdali import native

    if torch.cuda.is_available():
        pytest.skip("checks the answer without CUDA")
    assert native.nvdec_usable() is False


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


@pytest.mark.slow
def test_torch_workers_split_the_samples_of_a_single_tar(ravdess_shards):
    """Two workers on a rank with one tar both decode: worker w takes samples w, w+2, … (in evaluation order)."""
    cfg = small(ravdess_shards, loader="torch", batch_size=2, num_threads=2)
    loader = build_loader(cfg, ["fold1"], train=False)
    assert len(loader.dataset.urls) == 1 and loader.workers == 2
    batches = [b.index.tolist() for b in loader]
    assert sorted(batches) == [[0, 2], [1, 3]]


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_dali_crop_interp_is_used(ravdess_shards, interp):
    """Nearest-neighbour crops only copy pixels: every output value of a flat-coloured ramp exists in the input;
    linear blends neighbours and makes new values."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from avdali.data.dali import _INTERPS

    ramp = np.repeat(np.repeat(np.arange(0, 256, 8, dtype=np.uint8), 4)[None, :, None], 128, axis=0)  # 128x128, steps of 8
    frames = np.broadcast_to(ramp, (2, 128, 128, 3)).copy()

    @pipeline_def
    def crop():
        video = fn.external_source(source=lambda: [frames], layout="FHWC", batch=True)
        return fn.random_resized_crop(video, size=[112, 112], random_area=[0.35, 1.0], interp_type=_INTERPS[interp],
                                      antialias=False)

    pipe = crop(batch_size=1, num_threads=1, device_id=None, seed=0)
    pipe.build()
    values = set(np.unique(np.array(pipe.run()[0][0])).tolist())
    assert (values <= set(ramp.ravel().tolist())) == (interp == "nearest")


def test_torch_nearest_crop_matches_torchvision():
    from torchvision.transforms.v2 import functional as F

    from avdali.data.torch_loader import nearest_resized_crop

    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        height, width = (int(x) for x in torch.randint(16, 160, (2,), generator=g))
        video = torch.randint(0, 255, (2, height, width, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
        h, w = int(torch.randint(1, height + 1, (1,), generator=g)), int(torch.randint(1, width + 1, (1,), generator=g))
        top, left = int(torch.randint(0, height - h + 1, (1,), generator=g)), int(torch.randint(0, width - w + 1, (1,), generator=g))
        size = int(torch.randint(8, 128, (1,), generator=g))
        expected = F.resized_crop(video, top, left, h, w, [size, size], interpolation=F.InterpolationMode.NEAREST)
        assert torch.equal(nearest_resized_crop(video, top, left, h, w, size), expected)


def test_replace_keeps_config_checks(ravdess_shards):
    with pytest.raises(AvdaliError):
        replace(small(ravdess_shards), loader="jax")
