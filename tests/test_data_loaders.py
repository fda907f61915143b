"""Both loaders on tiny packed shards: shapes, dtypes, ranges, sharding, exact evaluation, epochs, errors.

The torch loader starts forkserver workers (a few seconds each time), so its cases are few and marked slow.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch

from avdali.data import clipspec, order
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.shards import list_splits
from avdali.errors import AvdaliError
from conftest import graph_ops

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
    frames = clipspec.feature_frames(clipspec.window_samples(cfg.audio_seconds))
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
        lo, hi = order.rank_range(total, rank, 3)
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


@pytest.mark.parametrize("loader_name", ["dali", pytest.param("torch", marks=pytest.mark.slow)])
def test_training_ranks_read_the_epochs_deal(ravdess_shards, loader_name):
    """Every rank reads exactly its share of each epoch's order (order.rank_epoch): all samples once per epoch over
    the ranks, and a rank's share changes from epoch to epoch."""
    from avdali.data.shards import resolve

    splits = ["fold1", "fold2", "fold3", "fold4", "fold5"]
    shardset = resolve(ravdess_shards, splits)
    cfg = small(ravdess_shards, batch_size=2, loader=loader_name, augment=False)
    world = 4
    shares = {}
    for rank in range(world):
        loader = build_loader(cfg, splits, train=True, rank=rank, world_size=world, seed=7)
        for epoch in range(3):
            loader.set_epoch(epoch)
            pairs, count = collect(loader)
            assert count == len(loader)
            got = sorted(i for i, v in pairs if v)
            want = sorted(i for p in order.rank_epoch(shardset, rank, world, train=True, seed=7, epoch=epoch) for i in p.indices)
            assert got == want, (rank, epoch)
            shares[rank, epoch] = set(got)
    for epoch in range(3):
        assert sorted(i for r in range(world) for i in shares[r, epoch]) == list(range(shardset.num_samples))
    assert any(shares[r, 0] != shares[r, 1] for r in range(world))


def test_dali_runs_of_several_batches_give_the_same_batches(ravdess_shards):
    """A pipeline run holding several batches (``order.batches_per_run``) is cut into the batches one batch a run gives:
    evaluation's batches are equal tensor for tensor, over two epochs of the one pipeline evaluation keeps."""
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    shardset = resolve(ravdess_shards, SPLITS)
    cfg = small(ravdess_shards, batch_size=2)

    def epochs(run_clips: int):
        loader = DaliLoader(cfg, shardset, train=False, device="cpu", rank=0, world_size=1, seed=0,
                            frame_size=(128, 128), run_clips=run_clips)
        return loader.batches_per_run, [list(loader) for _ in range(2)]

    (one, single), (four, runs) = epochs(2), epochs(8)
    assert (one, four) == (1, 4)
    for a, b in zip(single, runs):
        assert len(a) == len(b) == 4
        for x, y in zip(a, b):
            for name in ("video", "audio", "audio_len", "label", "index", "valid", "crop_box", "flipped"):
                assert torch.equal(getattr(x, name), getattr(y, name)), name


def test_dali_training_runs_of_several_batches_read_each_epoch_once(ravdess_shards):
    """Runs of 2 batches, 4 runs an epoch, prefetch 2: the next epoch's pipeline starts while this one's last runs
    are read, and every epoch still reads every sample once, in an order of its own."""
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    splits = ["fold1", "fold2", "fold3", "fold4"]
    shardset = resolve(ravdess_shards, splits)
    cfg = small(ravdess_shards, batch_size=2, augment=False, prefetch=2)
    loader = DaliLoader(cfg, shardset, train=True, device="cpu", rank=0, world_size=1, seed=4, frame_size=(128, 128),
                        run_clips=4)
    assert (len(loader), loader.batches_per_run, loader.runs_per_epoch) == (8, 2, 4)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        pairs, count = collect(loader)
        assert count == 8 and sorted(i for i, _ in pairs) == list(range(16))
        orders.append(tuple(i for i, _ in pairs))
    assert len(set(orders)) == 3


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


@pytest.mark.parametrize("train, features, video_dtype, crop_interp, decode, speaker_norm",
                         [(True, "logmel", "uint8", "nearest", "gpu", False), (True, "logmel", "uint8", "linear", "cpu", True),
                          (False, "mfcc", "float16", "nearest", "gpu", False), (False, "logmel", "uint8", "linear", "cpu", True),
                          (True, "logmel", "float32", "linear", "cpu", False)])
def test_gpu_pipeline_is_defined(ravdess_shards, train, features, video_dtype, crop_interp, decode, speaker_norm):
    """Tracing the GPU variant checks every argument name of the mixed/gpu ops without needing a GPU, for both
    places the video can be decoded (NVDEC, or the CPU threads with every later op on the GPU)."""
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    shardset = resolve(ravdess_shards, SPLITS)
    cfg = small(ravdess_shards, features=features, video_dtype=video_dtype, crop_interp=crop_interp, decode=decode,
                speaker_norm=speaker_norm)
    loader = DaliLoader(cfg, shardset, train=train, device="cuda", rank=0, world_size=1, seed=0, frame_size=(128, 128))
    assert loader.decode == decode
    pipe = loader.make_pipeline(device_id=0)
    assert pipe.device_id == 0
    # the traced outputs: video and audio features must come out of GPU ops (a CPU op there would
    # silently move work back to the CPU); DALI keeps them in the private _graph_out
    assert [node.device for node in pipe._graph_out[:2]] == ["gpu", "gpu"]
    ops = graph_ops(*pipe._graph_out[:2])
    assert [device for name, device in ops if name == "decoders__Video"] == ["mixed" if decode == "gpu" else "cpu"]
    # hybrid: the decode (and the reader, audio decode, slicing) on the CPU, but every crop/resize/feature op on the GPU
    later = [device for name, device in ops if name in ("SequenceRearrange", "CropMirrorNormalize", "Resize", "Spectrogram",
                                                         "MelFilterBank", "ToDecibels", "MFCC", "Normalize")]
    assert later and set(later) == {"gpu"}
    assert ("Normalize", "gpu") in ops or speaker_norm  # with speaker_norm the stage after the loader standardises


def test_decode_rule_auto_is_the_hybrid(ravdess_shards, monkeypatch):
    """``auto`` decodes on the CPU threads with every later op on the GPU, without asking the NVDEC probe."""
    from avdali.machine import libraries
    from avdali.data.config import resolve_decode
    from avdali.data.dali import DaliLoader
    from avdali.data.shards import resolve

    assert resolve_decode("auto") == "cpu" and resolve_decode("gpu") == "gpu" and resolve_decode("cpu") == "cpu"
    with pytest.raises(AvdaliError, match="data.decode must be one of 'auto', 'gpu', 'cpu'; got 'nvdec'"):
        DataConfig(decode="nvdec")
    monkeypatch.setattr(libraries, "nvdec_usable", lambda device_id=0: pytest.fail("the probe decides nothing now"))
    shardset = resolve(ravdess_shards, SPLITS)
    for device in ("cuda", "cpu"):
        loader = DaliLoader(small(ravdess_shards, decode="auto"), shardset, train=True, device=device, rank=0,
                            world_size=1, seed=0, frame_size=(128, 128))
        assert loader.decode == "cpu"


def test_num_threads_auto_shares_the_usable_cores(monkeypatch):
    from avdali.data import config

    monkeypatch.setattr(config, "usable_cores", lambda: 16)
    assert config.resolve_threads(DataConfig(num_threads=0), local_ranks=4).num_threads == 4
    assert config.resolve_threads(DataConfig(num_threads=0), local_ranks=32).num_threads == 1
    assert config.resolve_threads(DataConfig(num_threads=3), local_ranks=4).num_threads == 3  # an explicit count stays
    assert DataConfig().num_threads == 0


def test_nvdec_unusable_without_cuda():
    from avdali.machine import libraries

    if torch.cuda.is_available():
        pytest.skip("checks the answer without CUDA")
    assert libraries.nvdec_usable() is False


@pytest.mark.slow
def test_torch_loader_works_without_dali(ravdess_shards, monkeypatch):
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.") or m == "avdali.data.dali" or m.startswith("avdali.data.dali.")]:
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
def test_torch_workers_split_the_tars(ravdess_shards):
    """Two workers on a rank with two tars: each worker reads one whole tar (every tar read once, whatever the worker
    count), so each batch holds the samples of one tar."""
    cfg = small(ravdess_shards, loader="torch", batch_size=4, num_threads=2)
    loader = build_loader(cfg, ["fold1", "fold2"], train=False)
    assert loader.workers == 2 and len(loader.shardset.files) == 2
    batches = sorted(b.index.tolist() for b in loader)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("interp", ["nearest", "linear"])
def test_dali_crop_interp_is_used(ravdess_shards, interp):
    """Nearest-neighbour crops only copy pixels: every output value of a flat-coloured ramp exists in the input;
    linear blends neighbours and makes new values."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from avdali.data.dali.graph import _INTERPS

    ramp = np.repeat(np.repeat(np.arange(0, 256, 8, dtype=np.uint8), 4)[None, :, None], 128, axis=0)  # 128x128, steps of 8
    frames = np.broadcast_to(ramp, (2, 128, 128, 3)).copy()

    @pipeline_def
    def crop():  # the resize of video_graph's training crop: a window of the frame scaled to the crop
        video = fn.external_source(source=lambda: [frames], layout="FHWC", batch=True)
        return fn.resize(video, roi_start=[3.0, 5.0], roi_end=[90.0, 77.0], roi_relative=False, size=[112, 112],
                         interp_type=_INTERPS[interp], antialias=False)

    pipe = crop(batch_size=1, num_threads=1, device_id=None, seed=0)
    pipe.build()
    values = set(np.unique(np.array(pipe.run()[0][0])).tolist())
    assert (values <= set(ramp.ravel().tolist())) == (interp == "nearest")


def test_torch_nearest_crop_matches_torchvision():
    from torchvision.transforms.v2 import functional as F

    from avdali.data.crop import nearest_resized_crop

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


@pytest.mark.parametrize("loader_name", ["dali", pytest.param("torch", marks=pytest.mark.slow)])
def test_frame_count_beyond_the_video_is_named(tmp_path, ravdess_shards, loader_name):
    """A meta.i32 frame count larger than the stored video (hashes re-recorded, so the SHA-256 check passes): one line
    naming the shard and the sample, never a made-up frame."""
    from avdali.packing.writer import write_shard
    from avdali.shardformat.manifest import read_manifest, write_manifest
    from avdali.shardformat.members import decode_meta_i32, encode_meta_i32, read_members
    import shutil

    out = shutil.copytree(ravdess_shards, tmp_path / "shards")
    manifest = read_manifest(out)
    entry = next(e for e in manifest.shards if e.split == "fold1")
    samples: list[dict] = []
    for key, ext, data in read_members(out / entry.name):
        if not samples or samples[-1]["__key__"] != key:
            samples.append({"__key__": key})
        samples[-1][ext] = data
    victim = samples[1]
    meta = decode_meta_i32(victim["meta.i32"])
    victim["meta.i32"] = encode_meta_i32({**meta, "frames": meta["frames"] * 3})
    shard = write_shard(out, entry.name, samples)
    entry.sha256, entry.bytes = shard.sha256, shard.bytes
    write_manifest(out, manifest)
    (out / "speaker_stats-logmel64.npz").unlink(missing_ok=True)
    cfg = small(out, loader=loader_name, frames=16, augment=False)
    with pytest.raises(AvdaliError) as caught:
        for _ in build_loader(cfg, ["fold1"], train=False):
            pass
    message = str(caught.value)
    assert message.startswith(str(out / entry.name)) and victim["__key__"] in message and "\n" not in message, message
    assert "meta.i32" in message and f"holds {meta['frames']} frames" in message, message
