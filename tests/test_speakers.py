"""data.speaker_norm: per-speaker mean frames (against a webdataset + PyAV reference), their cache, and the torch
loader's frames minus them."""

from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
import webdataset as wds

from avdali.data import speakers
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.errors import ConfigError
from avdali.shardformat.manifest import read_manifest
from avdali.sources.ravdess import parse_ravdess_name


@pytest.fixture
def shards(tmp_path, ravdess_shards):
    """A private copy: the cache file is written into the folder."""
    return shutil.copytree(ravdess_shards, tmp_path / "shards")


def reference_means(folder) -> dict[tuple[str, str], np.ndarray]:
    """(split, actor from the file name) → mean of every frame, decoded with PyAV's own RGB conversion."""
    sums, counts = {}, {}
    for entry in read_manifest(folder).shards:
        for sample in wds.WebDataset(str(folder / entry.name), shardshuffle=False):
            actor = f"Actor_{parse_ravdess_name(sample['__key__'] + '.mp4').actor:02d}"
            with av.open(io.BytesIO(sample["webm"])) as c:
                frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float64)
            group = (entry.split, actor)
            sums[group] = sums.get(group, 0) + frames.sum(axis=0)
            counts[group] = counts.get(group, 0) + len(frames)
    return {g: sums[g] / counts[g] for g in sums}


def test_speaker_means_match_a_reference(shards):
    got = speakers.compute_speaker_frames(shards)
    want = reference_means(shards)
    assert got.means.keys() == want.keys() and len(want) == 5  # one actor per fold in the fixture
    for group, mean in want.items():
        assert got.means[group].shape == mean.shape == (128, 128, 3)
        # PyAV's swscale and the loaders' BT.601 conversion differ by ~1.3 levels on average
        assert np.abs(got.means[group] - mean).mean() < 2.0, group
    for (tar, key), who in got.speaker.items():
        assert who == f"Actor_{parse_ravdess_name(key + '.mp4').actor:02d}"
    different = [np.abs(a - b).mean() for a in got.means.values() for b in got.means.values() if a is not b]
    assert min(different) > 10  # each actor has a face and background of their own


def test_cache_is_reused_and_refreshed_when_the_shards_change(shards, monkeypatch):
    first = speakers.load_speaker_frames(shards)
    assert (shards / speakers.CACHE_NAME).is_file()

    def no_pass(_):
        raise AssertionError("recomputed although the cache matches")

    with monkeypatch.context() as m:
        m.setattr(speakers, "compute_speaker_frames", no_pass)
        again = speakers.load_speaker_frames(shards)
    assert again.speaker == first.speaker and again.split == first.split
    assert all(np.array_equal(again.means[g], first.means[g]) for g in first.means)
    monkeypatch.setattr(speakers, "_cache_key", lambda _: "another pack")  # as after a re-pack
    calls = []
    monkeypatch.setattr(speakers, "compute_speaker_frames", lambda folder: calls.append(folder) or first)
    speakers.load_speaker_frames(shards)
    assert calls == [shards]


def test_torch_loader_subtracts_the_speakers_mean_frame(shards):
    """Evaluation crops the centre without resampling, so the result is exactly (frame - mean) + 128, rounded."""
    base = dict(shards=str(shards), loader="torch", batch_size=4, frames=3, crop=64, n_mels=16, num_threads=1)
    plain = {int(i): v for b in build_loader(DataConfig(**base), ["fold1", "fold2"], train=False)
             for i, v, ok in zip(b.index, b.video, b.valid) if ok}
    normed = {int(i): v for b in build_loader(DataConfig(speaker_norm=True, **base), ["fold1", "fold2"], train=False)
              for i, v, ok in zip(b.index, b.video, b.valid) if ok}
    frames = speakers.load_speaker_frames(shards)
    keys = [(e.name, k) for e in read_manifest(shards).shards if e.split in ("fold1", "fold2") for k in e.keys]
    assert plain.keys() == normed.keys() == set(range(len(keys)))
    for i, (tar, key) in enumerate(keys):
        mean = frames.mean_for(tar, key)[32:96, 32:96]  # the centre 64² of 128²
        expected = speakers.subtract_mean(plain[i].permute(0, 2, 3, 1).numpy(), mean)
        assert np.array_equal(normed[i].permute(0, 2, 3, 1).numpy(), expected)
    assert not np.array_equal(plain[0].numpy(), normed[0].numpy())


def test_speaker_norm_needs_the_torch_loader():
    with pytest.raises(ConfigError, match=r'data\.speaker_norm needs data\.loader = "torch"'):
        DataConfig(loader="dali", speaker_norm=True)


def test_a_sample_without_a_speaker_is_named():
    with pytest.raises(Exception, match=r"tar:key: the sample's json names no speaker"):
        speakers.speaker_of({"dataset": "ravdess"}, "tar:key")
