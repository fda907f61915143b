"""data.speaker_norm: per-speaker statistics (against a webdataset + PyAV + torchaudio reference), their cache, and
the torch loader's frames and features normalised with them."""

from __future__ import annotations

import dataclasses
import io
import shutil

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import webdataset as wds

from avdali.data import clipspec, speakers
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.errors import AvdaliError, ConfigError
from avdali.shardformat.manifest import read_manifest
from avdali.sources.ravdess import parse_ravdess_name


@pytest.fixture
def shards(tmp_path, ravdess_shards):
    """A private copy: the cache file is written into the folder."""
    return shutil.copytree(ravdess_shards, tmp_path / "shards")


CFG = DataConfig(loader="torch", batch_size=4, frames=3, crop=64, n_mels=16, num_threads=1)


def reference_stats(folder) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(split, actor from the file name) → mean frame (PyAV's own RGB conversion), per-bin mean and std of the
    log-mel in dB (torchaudio, whole clips)."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=clipspec.NFFT, win_length=clipspec.WINDOW,
                                               hop_length=clipspec.HOP, n_mels=CFG.n_mels, norm="slaney",
                                               mel_scale="slaney")
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None)
    frames, feats = {}, {}
    for entry in read_manifest(folder).shards:
        for sample in wds.WebDataset(str(folder / entry.name), shardshuffle=False):
            group = (entry.split, f"Actor_{parse_ravdess_name(sample['__key__'] + '.mp4').actor:02d}")
            with av.open(io.BytesIO(sample["webm"])) as c:
                frames.setdefault(group, []).extend(f.to_ndarray(format="rgb24") for f in c.decode(video=0))
            wav, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
            feats.setdefault(group, []).append(to_db(mel(torch.from_numpy(wav))).double().numpy())
    out = {}
    for g in frames:
        a = np.concatenate(feats[g], axis=1)
        out[g] = (np.mean(np.stack(frames[g]), axis=0), a.mean(axis=1), a.std(axis=1))
    return out


def test_speaker_stats_match_a_reference(shards):
    got = speakers.compute_speaker_stats(shards, CFG)
    want = reference_stats(shards)
    assert got.speakers.keys() == want.keys() and len(want) == 5  # one actor per fold in the fixture
    for group, (frame, mean, std) in want.items():
        s = got.speakers[group]
        assert s.frame.shape == frame.shape == (128, 128, 3)
        # PyAV's swscale and the loaders' BT.601 conversion differ by ~1.3 levels on average
        assert np.abs(s.frame - frame).mean() < 2.0, group
        np.testing.assert_allclose(s.audio_mean, mean, atol=1e-3)
        np.testing.assert_allclose(s.audio_std, std, rtol=1e-3)
    for (tar, key), who in got.speaker.items():
        assert who == f"Actor_{parse_ravdess_name(key + '.mp4').actor:02d}"
    frames = [s.frame for s in got.speakers.values()]
    assert min(np.abs(a - b).mean() for a in frames for b in frames if a is not b) > 10  # a face and background each


def test_cache_is_reused_and_refreshed_when_the_shards_change(shards, monkeypatch):
    first = speakers.load_speaker_stats(shards, CFG)
    assert speakers.cache_path(shards, CFG).is_file()

    def no_pass(*_):
        raise AssertionError("recomputed although the cache matches")

    with monkeypatch.context() as m:
        m.setattr(speakers, "compute_speaker_stats", no_pass)
        again = speakers.load_speaker_stats(shards, CFG)
    assert again.speaker == first.speaker and again.split == first.split and again.speakers.keys() == first.speakers.keys()
    for g, s in first.speakers.items():
        assert all(np.array_equal(getattr(again.speakers[g], n), getattr(s, n)) for n in ("frame", "audio_mean", "audio_std"))
    calls = []
    monkeypatch.setattr(speakers, "compute_speaker_stats", lambda folder, cfg: calls.append(cfg) or first)
    speakers.load_speaker_stats(shards, dataclasses.replace(CFG, n_mels=24))  # other features: their own file
    mfcc = dataclasses.replace(CFG, features="mfcc", n_mfcc=8)
    speakers.load_speaker_stats(shards, mfcc)
    speakers.load_speaker_stats(shards, dataclasses.replace(mfcc, n_mels=24))  # same file name, other statistics
    monkeypatch.setattr(speakers, "_cache_key", lambda *_: "another pack")  # as after a re-pack
    speakers.load_speaker_stats(shards, CFG)
    assert [(c.features, c.n_mels) for c in calls] == [("logmel", 24), ("mfcc", 16), ("mfcc", 24), ("logmel", 16)]


@pytest.mark.parametrize("loader_name", ["torch", "dali"])
def test_loader_normalises_by_the_speaker(shards, loader_name):
    """Evaluation crops the centre without resampling, so the frames are exactly (frame - mean) + 128, rounded; the
    features are the centred window's log-mel (torchaudio) standardised with the speaker's per-bin mean and std."""
    base = dataclasses.replace(CFG, shards=str(shards), loader=loader_name)
    splits = ["fold1", "fold2"]
    plain = {int(i): v for b in build_loader(base, splits, train=False)
             for i, v, ok in zip(b.index, b.video, b.valid) if ok}
    normed = {int(i): (v, a, n) for b in build_loader(dataclasses.replace(base, speaker_norm=True), splits, train=False)
              for i, v, a, n, ok in zip(b.index, b.video, b.audio, b.audio_len, b.valid) if ok}
    stats = speakers.load_speaker_stats(shards, base)
    samples = [(e.name, s) for e in read_manifest(shards).shards if e.split in splits
               for s in wds.WebDataset(str(shards / e.name), shardshuffle=False)]
    assert plain.keys() == normed.keys() == set(range(len(samples)))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=clipspec.NFFT, win_length=clipspec.WINDOW,
                                               hop_length=clipspec.HOP, n_mels=CFG.n_mels, norm="slaney",
                                               mel_scale="slaney")
    for i, (tar, sample) in enumerate(samples):
        speaker = stats.of(tar, sample["__key__"])
        expected = speakers.subtract_mean(plain[i].permute(0, 2, 3, 1).numpy(), speaker.frame[32:96, 32:96])
        video, audio, valid = normed[i]
        assert np.array_equal(video.permute(0, 2, 3, 1).numpy(), expected)
        wav, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        window = clipspec.window_samples(CFG.audio_seconds)
        start = clipspec.draw_audio_start(len(wav), window)
        db = 10 * torch.log10(torch.clamp(mel(torch.from_numpy(wav[start : start + window])), min=1e-10))
        restored = audio[:, :valid] * torch.from_numpy(speaker.audio_std)[:, None] + torch.from_numpy(speaker.audio_mean)[:, None]
        torch.testing.assert_close(restored, db, atol=2e-3, rtol=1e-4)
        assert audio[:, valid:].abs().max() == 0 if valid < audio.shape[1] else True
    assert not np.array_equal(plain[0].numpy(), normed[0][0].numpy())


def test_the_stage_crops_the_mean_frame_as_the_clip_was_cropped(shards):
    """Training batches (random crop windows, flips): the stage's result equals a torchvision reference: the speaker's
    mean frame cut with the clip's window, bilinearly resized (no antialias), mirrored when the clip was, subtracted
    from the loader's own frames."""
    from torchvision.transforms.v2 import functional as F

    base = dataclasses.replace(CFG, shards=str(shards), loader="dali", crop=48)
    splits = ["fold1", "fold2", "fold3"]
    stats = speakers.load_speaker_stats(shards, base)
    stage = speakers.SpeakerNorm.for_shards(stats, speakers_shardset(shards, splits))
    rows, flips = 0, set()
    for batch in build_loader(base, splits, train=True, seed=3):
        out = stage(batch)
        for j in range(len(batch)):
            tar, key = key_of(shards, splits, int(batch.index[j]))
            mean = torch.from_numpy(stats.of(tar, key).frame).permute(2, 0, 1)
            top, left, h, w = batch.crop_box[j].tolist()
            ref = F.resized_crop(mean, top, left, h, w, [48, 48], antialias=False)
            if batch.flipped[j]:
                ref = ref.flip(-1)
            want = (batch.video[j].float() - ref + 128).round().clamp(0, 255)
            got = out.video[j].float()
            assert (got - want).abs().max() <= 1, (tar, key)  # bilinear weights in float32 both ways
            rows += 1
            flips.add(bool(batch.flipped[j]))
    assert rows == 12 and flips == {True, False}


def speakers_shardset(shards, splits):
    from avdali.data.shards import resolve

    return resolve(shards, splits)


def key_of(shards, splits, index: int) -> tuple[str, str]:
    for f in speakers_shardset(shards, splits).files:
        if f.first <= index < f.first + f.count:
            return f.tar, f.keys[index - f.first]
    raise KeyError(index)


@pytest.mark.slow
def test_dali_and_torch_agree_under_speaker_norm(shards):
    """The same stage after both loaders: their evaluation batches agree within the loaders' parity tolerances."""
    base = dataclasses.replace(CFG, shards=str(shards), speaker_norm=True, frames=4)
    splits = ["fold1", "fold3"]
    got = {}
    for name in ("dali", "torch"):
        got[name] = {int(i): (v, a) for b in build_loader(dataclasses.replace(base, loader=name), splits, train=False)
                     for i, v, a, ok in zip(b.index, b.video, b.audio, b.valid) if ok}
    assert got["dali"].keys() == got["torch"].keys() and len(got["dali"]) == 8
    for i, (video, audio) in got["dali"].items():
        tv, ta = got["torch"][i]
        diff = (video.float() - tv.float()).abs()
        assert diff.mean() <= 1.0 and diff.max() <= 4
        assert (audio - ta).abs().max() <= 1e-3


def test_speaker_norm_needs_uint8_frames():
    with pytest.raises(ConfigError, match=r'data\.speaker_norm needs data\.video_dtype = "uint8"'):
        DataConfig(speaker_norm=True, video_dtype="float16")
    DataConfig(loader="dali", speaker_norm=True)  # DALI does it too


def test_bad_input_is_named():
    with pytest.raises(AvdaliError, match=r"tar:key: the sample's json names no speaker"):
        speakers.speaker_of({"dataset": "ravdess"}, "tar:key")
    with pytest.raises(AvdaliError, match=r"tar:key: frames of \(8, 8\) but the speaker's mean frame is \(4, 4\)"):
        speakers.subtract_mean(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((4, 4, 3), np.float32), "tar:key")
    assert speakers.speaker_of({"speaker": " Joey "}, "x") == "Joey" and speakers.speaker_of({"actor": 5}, "x") == "Actor_05"
