"""Training's crop as a torch stage (``data/crop.py``): against torchvision, and where each loader runs it (after the
graph on a CPU, in the graph on CUDA)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from avdali.data import cache, clipspec, crop
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.normalize import prepare_video
from avdali.data.shards import resolve
from conftest import graph_ops

FOLDS = ["fold1", "fold2", "fold3"]


def small(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), batch_size=3, frames=4, crop=48, audio_seconds=1.0, n_mels=32, num_threads=1,
                shuffle_buffer=8)
    return DataConfig(**{**base, **kw})


def reference(video: torch.Tensor, boxes, flips, cfg: DataConfig) -> torch.Tensor:
    """torchvision's resized crop of each clip (no antialiasing), mirrored when flipped."""
    mode = F.InterpolationMode.NEAREST if cfg.crop_interp == "nearest" else F.InterpolationMode.BILINEAR
    clips = []
    for clip, (top, left, h, w), flipped in zip(video, boxes.tolist(), flips.tolist()):
        out = F.resized_crop(clip, top, left, h, w, [cfg.crop, cfg.crop], interpolation=mode, antialias=False)
        clips.append(out.flip(-1) if flipped else out)
    return torch.stack(clips)


@pytest.mark.parametrize("interp", ["linear", "nearest"])
def test_crop_batch_is_torchvisions_resized_crop_and_flip(interp):
    rng = np.random.default_rng(0)
    frames = torch.randint(0, 256, (6, 3, 40, 52, 3), dtype=torch.uint8)  # N,T,H,W,C memory, as DALI hands it over
    video = frames.permute(0, 1, 4, 2, 3)
    cfg = DataConfig(crop=24, crop_interp=interp)
    boxes, flips = crop.draw_windows(6, (40, 52), rng)
    assert boxes.dtype == np.int32 and boxes.shape == (6, 4) and flips.dtype == bool
    out = crop.crop_batch(video, boxes, flips, cfg)
    assert out.shape == (6, 3, 3, 24, 24) and out.dtype == torch.uint8 and out.stride(2) == 1  # channels-last
    assert torch.equal(out, reference(video, boxes, flips, cfg))
    halves = crop.crop_batch(video, boxes, ~flips, cfg)  # the flip is a mirror of the same crop
    assert torch.equal(halves, out.flip(-1))
    as_float = crop.crop_batch(video, boxes, flips, dataclasses.replace(cfg, video_dtype="float16"))
    assert as_float.dtype == torch.float16
    torch.testing.assert_close(as_float, prepare_video(out).half())


def test_draw_windows_is_the_clip_specifications_draw():
    """The same generator state gives ``clipspec.draw_crop_box`` for each clip, then the flips."""
    boxes, flips = crop.draw_windows(5, (128, 160), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    assert [tuple(b) for b in boxes.tolist()] == [clipspec.draw_crop_box(128, 160, rng) for _ in range(5)]
    assert flips.tolist() == (rng.random(5, dtype=np.float32) < clipspec.FLIP_PROBABILITY).tolist()


def capture(monkeypatch) -> list:
    """Every resize_windows call (what crop_batch and the cache's gathered windows go through) as (windows, flips,
    cfg, result), resize_windows still running."""
    calls, real = [], crop.resize_windows

    def spy(windows, flips, cfg):
        out = real(windows, flips, cfg)
        calls.append(([w.clone() for w in windows], flips.copy(), cfg, out))
        return out

    monkeypatch.setattr(crop, "resize_windows", spy)
    return calls


def whole_window(windows) -> np.ndarray:
    return np.array([(0, 0, *w.shape[-2:]) for w in windows], dtype=np.int32)


@pytest.mark.parametrize("cached", [False, True])
def test_on_a_cpu_the_dali_loaders_crop_the_uncropped_frames_after_the_graph(ravdess_shards, monkeypatch, cached):
    """Streaming DALI and the host cache in training: the crop windows are cut from whole stored frames (the cache
    gathers only the windows), the batch is their resize, with the windows and flips the batch reports; the draws
    depend on (seed, rank, epoch) only."""
    calls = capture(monkeypatch)
    cfg = small(ravdess_shards, cache="host" if cached else "off")
    loader = build_loader(cfg, FOLDS, train=True, seed=5)
    assert isinstance(loader, cache.CachedLoader) == cached
    if cached:
        stored = loader.store.frames.permute(0, 3, 1, 2)  # every stored frame, C,H,W
        assert stored.shape[-2:] == (128, 128)
    batches = list(loader)
    assert len(calls) == len(batches) == len(loader)
    windows = set()
    for batch, (cut, flips, _cfg, out) in zip(batches, calls):
        boxes = batch.crop_box.numpy()
        assert torch.equal(batch.video, out) and batch.video.shape[-2:] == (cfg.crop, cfg.crop)
        assert batch.flipped.tolist() == flips.tolist()
        assert [tuple(w.shape) for w in cut] == [(cfg.frames, 3, h, w) for _t, _l, h, w in boxes.tolist()]
        assert torch.equal(batch.video, reference(cut, whole_window(cut), flips, cfg))
        for window, (top, left, h, w) in zip(cut, boxes.tolist() if cached else []):
            source = stored[..., top : top + h, left : left + w]  # each frame: a stored frame's window at the box
            assert all((source == frame).flatten(1).all(1).any() for frame in window)
        windows |= {tuple(b) for b in boxes.tolist()}
    assert len(windows) > 5
    again = build_loader(cfg, FOLDS, train=True, seed=5)
    assert [b.crop_box.tolist() for b in again] == [b.crop_box.tolist() for b in batches]
    loader.set_epoch(1)
    assert [b.crop_box.tolist() for b in loader] != [b.crop_box.tolist() for b in batches]


def test_the_streaming_loaders_windows_are_cut_from_the_graphs_whole_frames(ravdess_shards, monkeypatch):
    calls, real = [], crop.crop_batch

    def spy(video, boxes, flips, cfg):
        out = real(video, boxes, flips, cfg)
        calls.append((video.clone(), boxes.copy(), flips.copy(), out))
        return out

    monkeypatch.setattr(crop, "crop_batch", spy)
    cfg = small(ravdess_shards)
    batches = list(build_loader(cfg, FOLDS, train=True, seed=5))
    assert len(calls) == len(batches)
    for batch, (frames, boxes, flips, out) in zip(batches, calls):
        assert frames.shape[-2:] == (128, 128) and frames.shape[1:3] == (cfg.frames, 3)  # the stored frame size
        assert torch.equal(batch.video, out) and batch.crop_box.tolist() == boxes.tolist()
        assert torch.equal(batch.video, reference(frames, boxes, flips, cfg))


def test_where_the_crop_runs(ravdess_shards):
    """CPU training: no resize in the streaming graph and no pipeline at all in the cache's; evaluation and CUDA crop
    in the graph (the GPU's resize)."""
    from avdali.data import dali

    shardset = resolve(ravdess_shards, FOLDS)
    cfg = small(ravdess_shards)

    def ops(train: bool, device: str) -> set[str]:
        loader = dali.DaliLoader(cfg, shardset, train=train, device=device, rank=0, world_size=1, seed=0,
                                 frame_size=(128, 128))
        pipe = loader.make_pipeline(device_id=0 if device == "cuda" else None)
        return {name for name, _device in graph_ops(*pipe._graph_out)}

    assert "Resize" not in ops(True, "cpu") and "decoders__Video" in ops(True, "cpu")
    assert "Resize" in ops(True, "cuda") and "CropMirrorNormalize" in ops(False, "cpu")
    cached = build_loader(dataclasses.replace(cfg, cache="host"), FOLDS, train=True)
    assert cached.runs is None and cached.croppers is not None  # a CPU training cache: no pipeline, torch crops
