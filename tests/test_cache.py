"""The decoded-frame cache (``data.cache``): against the streaming DALI loader (its reference), its sample order, its
memory rule and budget, speaker statistics without a second pass, and the GPU graph traced without CUDA."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avdali.data import cache, clipspec, order
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.shards import list_splits, resolve
from avdali.errors import AvdaliError, ConfigError
from conftest import graph_ops, tiny_run_toml

FOLDS = ["fold1", "fold2", "fold3", "fold4", "fold5"]
FRAME_MEAN_TOL = 1.5
"""The worst clip's mean |cached - streamed| frame difference, in levels (the same decoder and crop: 0 measured)."""
FEATURE_TOL = 1e-3


def small(shards, **kw) -> DataConfig:
    base = dict(shards=str(shards), batch_size=3, frames=4, crop=96, audio_seconds=1.0, n_mels=32, num_threads=1,
                shuffle_buffer=8)
    return DataConfig(**{**base, **kw})


def rows(loader, epoch: int = 0) -> list[tuple]:
    """Every row of one epoch, in order: (index, valid, label, audio_len, present flags, crop window, flip, video,
    audio)."""
    loader.set_epoch(epoch)
    out = []
    for b in loader:
        for j in range(len(b)):
            out.append((int(b.index[j]), bool(b.valid[j]), int(b.label[j]), int(b.audio_len[j]),
                        bool(b.audio_present[j]), bool(b.video_present[j]), tuple(b.crop_box[j].tolist()),
                        bool(b.flipped[j]), b.video[j], b.audio[j]))
    return out


@pytest.mark.parametrize("dataset, world", [("ravdess", 1), ("ravdess", 3), ("meld", 1)])
def test_cached_evaluation_batches_equal_the_streaming_loaders(request, dataset, world):
    """With augmentation off: the same samples in the same order, every sample once, the same pixels and features
    (MELD too: clips cut to the audio window and clips padded up to it)."""
    shards = request.getfixturevalue(f"{dataset}_shards")
    splits = FOLDS[:2] if dataset == "ravdess" else list(list_splits(shards))
    seen = []
    for rank in range(world):
        common = dict(train=False, rank=rank, world_size=world)
        streamed = rows(build_loader(small(shards), splits, **common))
        cached_loader = build_loader(small(shards, cache="host"), splits, **common)
        assert isinstance(cached_loader, cache.CachedLoader)
        cached = rows(cached_loader)
        assert [r[:8] for r in cached] == [r[:8] for r in streamed]  # order, padding, labels, lengths, crops
        worst = max((a[8].float() - b[8].float()).abs().mean().item() for a, b in zip(cached, streamed))
        assert worst <= FRAME_MEAN_TOL
        assert max((a[9] - b[9]).abs().max().item() for a, b in zip(cached, streamed)) <= FEATURE_TOL
        seen += [r[0] for r in cached if r[1]]
        assert len(cached_loader) == len(build_loader(small(shards), splits, **common))
    assert sorted(seen) == list(range(sum(list_splits(shards)[s] for s in splits)))


def test_cached_training_follows_the_epochs_deal_and_resumes_exactly(ravdess_shards):
    """Each rank reads its share of each epoch's order (order.rank_epoch), as the streaming loaders do; an epoch
    depends on (seed, rank, epoch) alone, so a loader that starts at epoch 2 reads what one that ran 0 and 1 reads."""
    shardset = resolve(ravdess_shards, FOLDS)
    cfg = small(ravdess_shards, cache="host", batch_size=2)
    world = 4
    for rank in range(world):
        loader = build_loader(cfg, FOLDS, train=True, rank=rank, world_size=world, seed=7)
        for epoch in range(3):
            got = sorted(r[0] for r in rows(loader, epoch) if r[1])
            want = sorted(i for p in order.rank_epoch(shardset, rank, world, train=True, seed=7, epoch=epoch)
                          for i in p.indices)
            assert got == want, (rank, epoch)
        resumed = build_loader(cfg, FOLDS, train=True, rank=rank, world_size=world, seed=7)
        again = rows(loader, 2)
        fresh = rows(resumed, 2)
        assert [r[:8] for r in fresh] == [r[:8] for r in again]
        assert all(torch.equal(a[8], b[8]) and torch.equal(a[9], b[9]) for a, b in zip(fresh, again))


def test_cached_training_augments_within_the_clip_specification(ravdess_shards):
    loader = build_loader(small(ravdess_shards, cache="host", crop=48), FOLDS, train=True, seed=1)
    out = rows(loader, 0) + rows(loader, 1)
    boxes = {r[6] for r in out}
    assert len(boxes) > 10 and {r[7] for r in out} == {True, False}
    for top, left, h, w in boxes:
        assert 0 <= top <= 128 - h and 0 <= left <= 128 - w
    assert out[0][8].shape == (4, 3, 48, 48) and out[0][8].dtype == torch.uint8


def standardised(frames: np.ndarray) -> np.ndarray:
    """A,F raw features standardised per bin over their frames (the clip specification's rule, numpy float64)."""
    return (frames - frames.mean(1, keepdims=True)) / np.sqrt(frames.var(1, keepdims=True) + clipspec.NORM_EPS)


@pytest.mark.parametrize("dataset, features, seconds", [("ravdess", "logmel", 1.0), ("ravdess", "mfcc", 1.0),
                                                       ("meld", "logmel", 2.0)])
def test_cpu_training_cuts_each_audio_window_from_its_tracks_stored_features(request, dataset, features, seconds):
    """Training on a CPU keeps each track's raw features and runs no pipeline: every clip's audio is a window of its
    track's stored frames at a whole-hop offset that streaming's draw allows, standardised, zero past it (MELD: some
    tracks are shorter than the window); the windows move between epochs."""
    shards = request.getfixturevalue(f"{dataset}_shards")
    splits = FOLDS if dataset == "ravdess" else list(list_splits(shards))
    cfg = small(shards, cache="host", num_threads=2, features=features, n_mfcc=13, audio_seconds=seconds)
    loader = build_loader(cfg, splits, train=True, seed=3)
    store = loader.store
    bins = cfg.n_mfcc if features == "mfcc" else cfg.n_mels
    assert loader.runs is None and store.keeps_features and store.audio.shape[1] == bins
    window = clipspec.window_samples(cfg.audio_seconds)
    seen: dict[int, list] = {}
    short = False
    for epoch in range(2):
        for r in rows(loader, epoch):
            row = store.row[r[0]]
            a, count, samples = (int(x[row]) for x in (store.audio_start, store.audio_count, store.samples))
            assert count == clipspec.feature_frames(samples)
            track = store.audio[a : a + count].numpy().T.astype(np.float64)  # A,F
            audio, valid = r[9].numpy(), r[3]
            assert audio.shape == (bins, clipspec.feature_frames(window)) and not audio[:, valid:].any()
            offsets = [o for o in range(max(0, samples - window) // clipspec.HOP + 1)
                       if clipspec.feature_frames(min(samples - o * clipspec.HOP, window)) == valid
                       and np.abs(standardised(track[:, o : o + valid]) - audio[:, :valid]).max() <= FEATURE_TOL]
            assert offsets, r[0]
            seen.setdefault(r[0], []).append(audio)
            short |= valid < audio.shape[1]
    assert any(not np.array_equal(*windows[:2]) for windows in seen.values() if len(windows) > 1)
    assert short == (dataset == "meld")


def test_the_stored_track_features_are_the_clip_specifications(ravdess_shards):
    """Against torchaudio: each stored track's raw features are the clip specification's log-mel of the whole track
    (computed by DALI in the first pass; within the parity tests' 0.05 dB where there is signal)."""
    import webdataset as wds

    from avdali.data.decode import AudioFeatures, read_wav

    cfg = small(ravdess_shards, cache="host")
    store = build_loader(cfg, FOLDS[:1], train=True).store
    reference = AudioFeatures(cfg)
    f = resolve(ravdess_shards, FOLDS[:1]).files[0]
    position = {key: f.first + j for j, key in enumerate(f.keys)}
    for sample in wds.WebDataset(f.tar, shardshuffle=False):
        row = store.row[position[sample["__key__"]]]
        want = reference.raw(torch.from_numpy(read_wav(sample["flac"], f.tar)))
        a, n = int(store.audio_start[row]), int(store.audio_count[row])
        got = store.audio[a : a + n].T
        assert got.shape == want.shape
        loud = want > want.max() - 60
        assert (got - want)[loud].abs().max() < 0.05


def test_the_estimate_is_the_store_and_comes_from_the_manifest(ravdess_shards, ravdess_shards_v2, monkeypatch):
    shardset = resolve(ravdess_shards, FOLDS)
    samples = cache.cached_samples(shardset, train=True, rank=0, world_size=1)
    calls = []
    real = cache.sample_counts
    monkeypatch.setattr(cache, "sample_counts", lambda *a: calls.append(a) or real(*a))
    need = cache.estimate(shardset, samples, (128, 128))
    assert not calls  # format 3: the manifest's per-shard totals, nothing read from the tars
    store = cache.fill(shardset, samples, need, small(ravdess_shards), where="host")
    assert store.bytes == need.bytes and len(store.row) == need.clips == shardset.num_samples
    features = cache.estimate(shardset, samples, (128, 128), bins=32)  # a CPU training cache keeps the features
    kept = cache.fill(shardset, samples, features, small(ravdess_shards), where="host")
    assert kept.keeps_features and kept.bytes == features.bytes and "audio features" in features.describe()
    assert kept.audio.shape == (features.audio_rows, 32) and sum(kept.audio_count) <= features.audio_rows
    old = resolve(ravdess_shards_v2, FOLDS)  # format 2: no totals, each sample's meta.i32 instead
    assert cache.estimate(old, samples, (128, 128)) == need and calls
    part = cache.cached_samples(shardset, train=False, rank=1, world_size=3)  # a rank's evaluation range
    lo, hi = order.rank_range(shardset.num_samples, 1, 3)
    assert part == list(range(lo, hi)) and cache.estimate(shardset, part, (128, 128)).clips == hi - lo


def test_a_budget_that_cannot_hold_the_cache_stops_before_decoding(ravdess_shards, monkeypatch):
    monkeypatch.setattr(cache, "fill", lambda *a, **k: pytest.fail("decoded although the budget is too small"))
    with pytest.raises(AvdaliError) as caught:
        build_loader(small(ravdess_shards, cache="host", cache_max_gb=0.001), FOLDS, train=True)
    message = str(caught.value)
    assert "\n" not in message and "data.cache = 'host': the cache needs" in message
    assert "budget of 0.00 GB" in message and "data.cache_max_gb 0.001 GB" in message
    said = []
    loader = build_loader(small(ravdess_shards, cache="auto", cache_max_gb=0.001), FOLDS, train=True, say=said.append)
    assert not isinstance(loader, cache.CachedLoader)  # auto streams instead, and says why in one line
    assert len(said) == 1 and said[0].startswith("not caching:") and "streaming" in said[0]


def test_auto_picks_the_device_on_cuda_and_host_on_the_cpu(monkeypatch):
    need = cache.CacheEstimate(clips=10, frames=1000, audio_samples=10_000, frame_size=(128, 128))
    cfg = DataConfig(cache="auto")
    monkeypatch.setattr(cache, "host_available_bytes", lambda: 8 * cache.GB)
    monkeypatch.setattr(cache, "device_free_bytes", lambda: 80 * cache.GB)
    assert cache.choose_mode(cfg, need, "cpu")[0] == "host"
    mode, why = cache.choose_mode(cfg, need, "cuda")
    assert mode == "device" and "GPU memory" in why
    monkeypatch.setattr(cache, "device_free_bytes", lambda: int(need.bytes * 1.1))  # fits, but not with the margin
    mode, why = cache.choose_mode(cfg, need, "cuda")
    assert mode == "off" and "80% of the" in why
    with pytest.raises(AvdaliError, match=r'data\.cache = "device" needs CUDA'):
        cache.choose_mode(dataclasses.replace(cfg, cache="device"), need, "cpu")
    assert cache.choose_mode(dataclasses.replace(cfg, cache="off"), need, "cuda")[0] == "off"


def test_cache_options_are_checked():
    with pytest.raises(ConfigError, match=r"data\.cache must be one of 'off', 'host', 'device', 'auto'"):
        DataConfig(cache="gpu")
    with pytest.raises(ConfigError, match=r'data\.cache = \'host\' needs data\.loader = "dali"'):
        DataConfig(cache="host", loader="torch")
    assert DataConfig(cache="auto", loader="torch").cache == "auto"  # streams: the shipped configs work on either loader
    with pytest.raises(ConfigError, match=r"data\.cache_max_gb must be > 0"):
        DataConfig(cache="auto", cache_max_gb=0)


def test_speaker_statistics_come_from_the_cache(tmp_path, ravdess_shards, monkeypatch):
    """No second decoding pass: the cached loaders' speaker stage takes its statistics from the cached frames and
    audio (samples, or a CPU training store's track features), which match the folder pass's (PyAV frames within 2
    levels; the same audio features)."""
    import shutil

    from avdali.data import speakers

    shards = shutil.copytree(ravdess_shards, tmp_path / "shards")  # no statistics file in it
    cfg = small(shards, speaker_norm=True, cache="host", n_mels=16)
    reference = speakers.compute_speaker_stats(shards, cfg)
    with monkeypatch.context() as m:
        m.setattr(speakers, "compute_speaker_stats", lambda *a: pytest.fail("a second pass over the shards"))
        loader = build_loader(cfg, FOLDS[:3], train=False)
        cached = rows(loader)
        training = build_loader(cfg, FOLDS[:3], train=True)  # on a CPU its store keeps the tracks' features
    assert training.loader.store.keeps_features and not loader.loader.store.keeps_features
    batch = next(iter(training))  # raw windows, standardised by the speaker
    assert batch.audio.shape == (cfg.batch_size, *cached[0][9].shape) and batch.audio.abs().max() > 0
    for store in (loader.loader.store, training.loader.store):
        stats = speakers.stats_from_cache(store, resolve(shards, FOLDS[:3]), cfg)
        assert stats.speakers.keys() == {g for g in reference.speakers if g[0] in FOLDS[:3]}
        for group, got in stats.speakers.items():
            want = reference.speakers[group]
            assert np.abs(got.frame - want.frame).mean() < 2.0
            np.testing.assert_allclose(got.audio_mean, want.audio_mean, atol=1e-3)
            np.testing.assert_allclose(got.audio_std, want.audio_std, rtol=1e-3)
    streamed = rows(build_loader(dataclasses.replace(cfg, cache="off"), FOLDS[:3], train=False))  # the folder's pass
    assert [r[0] for r in cached] == [r[0] for r in streamed]
    assert max((a[8].float() - b[8].float()).abs().mean().item() for a, b in zip(cached, streamed)) <= FRAME_MEAN_TOL


@pytest.mark.parametrize("train, inputs_on_gpu", [(True, True), (False, True), (True, False)])
def test_cached_gpu_pipeline_is_defined(train, inputs_on_gpu):
    """The CUDA variant traced without CUDA: every crop and feature op on the GPU, its inputs where the cache is."""
    from avdali.data import dali

    cfg = DataConfig(frames=4, crop=96, n_mels=32)
    pipe = dali.cached_clip_pipeline(cfg=cfg, gpu=True, inputs_on_gpu=inputs_on_gpu, jitter=train,
                                     frame_size=(128, 128), batch_size=2, num_threads=1, device_id=0)
    assert [node.device for node in pipe._graph_out] == ["gpu", "gpu"]
    ops = graph_ops(*pipe._graph_out)
    sources = [device for name, device in ops if name == "ExternalSource"]
    assert len(sources) == 2 + 2 * train  # frames, audio (+ the crop window's corners, always on the host)
    assert sources.count("gpu") == (2 if inputs_on_gpu else 0)
    later = {device for name, device in ops if name in ("Resize", "CropMirrorNormalize", "Spectrogram",
                                                                  "MelFilterBank", "ToDecibels", "Normalize")}
    assert later == {"gpu"}


def test_a_cached_training_run_says_what_it_caches_and_shows_the_first_pass(tmp_path, ravdess_shards):
    """`avdali train` with ``data.cache = "host"``: rank 0's reporter gets the cache's one line and a progress bar
    that reaches every clip of each cached loader, and the run trains."""
    from avdali.train.config_toml import load_config
    from avdali.train.reporting import NullReporter
    from avdali.train.run import run_training

    class Recorder(NullReporter):
        def __init__(self):
            self.lines, self.bars = [], []

        def message(self, text):
            self.lines.append(text)

        def progress(self, what, done, total):
            self.bars.append((what, done, total))

    toml = tmp_path / "tiny.toml"
    toml.write_text(tiny_run_toml(ravdess_shards, loader="dali", data_extra='cache = "host"'))
    reporter = Recorder()
    result = run_training(load_config(toml, [f'train.run_dir="{tmp_path / "run"}"']), reporter=reporter)
    assert result.epoch == 1 and result.step > 0
    cached = [line for line in reporter.lines if line.startswith("caching")]
    assert len(cached) >= 2 and all("host memory" in line for line in cached), reporter.lines  # train and val
    finished = [(done, total) for _what, done, total in reporter.bars if done == total]
    assert len(finished) == len(cached) and all(total > 0 for _done, total in finished)
    assert all(what == "caching decoded frames" for what, _d, _t in reporter.bars)
