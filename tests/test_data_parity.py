"""Loader parity with augmentation off: DALI and the torch loader read the same frames and audio window.

Stated tolerances (uint8 pixel levels / normalised feature units):
- frames: mean |DALI - torch| ≤ 1.0 level (≈ 0.4/255 measured), max ≤ 4 levels (2 measured). Both convert
  BT.601 limited-range YUV with bilinear chroma upsampling; the rest is fixed-point vs float rounding.
- log-mel / MFCC: max |DALI - torchaudio| ≤ 1e-3 after per-utterance normalisation (≈ 1e-4 measured), and the
  DALI log-mel in dB against torchaudio.transforms.MelSpectrogram + AmplitudeToDB before normalisation.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import webdataset as wds

from avdali.data import clipspec
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.data.shards import list_splits, resolve

SPLITS = ["fold1", "fold3"]
FRAME_MEAN_TOL = 1.0
FRAME_MAX_TOL = 4
FEATURE_TOL = 1e-3


def eval_samples(cfg: DataConfig, splits=SPLITS) -> dict[int, tuple]:
    out = {}
    for batch in build_loader(cfg, splits, train=False):
        for j in range(len(batch)):
            if batch.valid[j]:
                out[int(batch.index[j])] = (batch.video[j], batch.audio[j], int(batch.audio_len[j]), int(batch.label[j]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset, features", [("ravdess", "logmel"), ("ravdess", "mfcc"), ("meld", "logmel")])
def test_dali_and_torch_loaders_agree(request, dataset, features):
    """MELD too: its clips are longer or shorter than the audio window and hold other frame counts."""
    shards = request.getfixturevalue(f"{dataset}_shards")
    splits = SPLITS if dataset == "ravdess" else list(list_splits(shards))
    total = sum(list_splits(shards)[s] for s in splits)
    base = dict(shards=str(shards), batch_size=4, frames=6, crop=112, audio_seconds=2.0, num_threads=1, features=features)
    dali = eval_samples(DataConfig(loader="dali", **base), splits)
    torch_ = eval_samples(DataConfig(loader="torch", **base), splits)
    assert dali.keys() == torch_.keys() == set(range(total))
    motion = []
    for i in dali:
        dv, da, dl, dlab = dali[i]
        tv, ta, tl, tlab = torch_[i]
        assert (dl, dlab) == (tl, tlab)
        diff = (dv.float() - tv.float()).abs()
        assert diff.mean() <= FRAME_MEAN_TOL, f"sample {i}: mean frame difference {diff.mean():.2f}"
        assert diff.max() <= FRAME_MAX_TOL, f"sample {i}: max frame difference {diff.max():.0f}"
        assert (da - ta).abs().max() <= FEATURE_TOL
        motion.append((tv[1:].float() - tv[:-1].float()).abs().mean().item())
    # the bound can catch a wrong frame index: neighbouring sampled frames differ by more than it
    assert max(motion) > FRAME_MEAN_TOL
    if dataset == "meld":  # both cases of the window: clips cut to it and clips padded up to it
        full = clipspec.feature_frames(clipspec.window_samples(base["audio_seconds"]))
        lengths = {length for _, _, length, _ in dali.values()}
        assert full in lengths and min(lengths) < full, lengths


def test_dali_log_mel_matches_torchaudio(ravdess_shards):
    """DALI's spectrogram → mel_filter_bank → to_decibels against torchaudio's reference, in dB."""
    from nvidia.dali import fn, pipeline_def, types

    from avdali.data.clipspec import DB_FLOOR as DB_CUTOFF
    from avdali.data.dali import hann_window

    shardset = resolve(ravdess_shards, ["fold1"])

    @pipeline_def
    def log_mel():
        flac = fn.readers.webdataset(paths=[f.tar for f in shardset.files], index_paths=[f.idx for f in shardset.files],
                                     ext=["flac"], missing_component_behavior="error")
        audio, _ = fn.decoders.audio(flac, sample_rate=16000, downmix=True, dtype=types.FLOAT)
        spec = fn.spectrogram(audio, nfft=clipspec.NFFT, window_length=clipspec.WINDOW, window_step=clipspec.HOP,
                              window_fn=hann_window(), power=2)
        mel = fn.mel_filter_bank(spec, nfilter=64, sample_rate=16000, freq_high=8000.0)
        return fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=DB_CUTOFF)

    pipe = log_mel(batch_size=1, num_threads=1, device_id=None)
    pipe.build()
    reference = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=clipspec.NFFT, win_length=clipspec.WINDOW,
                                             hop_length=clipspec.HOP, n_mels=64,
                                             f_min=0.0, f_max=8000.0, norm="slaney", mel_scale="slaney", power=2.0),
        torchaudio.transforms.AmplitudeToDB(stype="power", top_db=None),
    )
    samples = list(wds.WebDataset(shardset.files[0].tar, shardshuffle=False))
    for sample in samples:
        (dali_db,) = pipe.run()
        wav, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        expected = reference(torch.from_numpy(wav))
        got = torch.from_numpy(np.array(dali_db[0]))
        assert got.shape == expected.shape == (64, clipspec.feature_frames(len(wav)))
        loud = expected > expected.max() - 60  # compare where there is signal; near the floor dB is noise
        assert (got - expected)[loud].abs().max() < 0.05, "log-mel differs from torchaudio by ≥ 0.05 dB"


def presence(cfg: DataConfig, splits) -> dict[int, tuple]:
    out = {}
    for batch in build_loader(cfg, splits, train=False):
        for j in range(len(batch)):
            if batch.valid[j]:
                out[int(batch.index[j])] = (bool(batch.audio_present[j]), bool(batch.video_present[j]),
                                            batch.video[j], batch.audio[j], int(batch.label[j]))
    return out


def test_loaders_agree_on_keep_partial_shards(meld_partial_shards):
    """A --keep-partial folder: both loaders give the same presence masks (those of meta.i32 and the manifest),
    and the same placeholder frames and features as for any clip."""
    from avdali.shardformat.manifest import read_manifest

    shards = meld_partial_shards
    splits = list(list_splits(shards))
    base = dict(shards=str(shards), batch_size=4, frames=4, crop=64, audio_seconds=2.0, num_threads=1)
    dali = presence(DataConfig(loader="dali", **base), splits)
    torch_ = presence(DataConfig(loader="torch", **base), splits)
    assert dali.keys() == torch_.keys() == set(range(sum(list_splits(shards).values())))
    # the manifest's partial keys, as sample indexes (manifest split order, then tar order)
    manifest = read_manifest(shards)
    order = [k for split in splits for s in manifest.shards if s.split == split for k in s.keys]
    partial = manifest.partial_keys
    expected = {i: (key not in partial["no_audio"], key not in partial["no_video"]) for i, key in enumerate(order)}
    assert {i: v[:2] for i, v in dali.items()} == {i: v[:2] for i, v in torch_.items()} == expected
    assert sorted(expected.values()).count((True, True)) == len(expected) - 3  # the three partial clips
    for i in dali:
        assert dali[i][4] == torch_[i][4]
        diff = (dali[i][2].float() - torch_[i][2].float()).abs()
        assert diff.mean() <= FRAME_MEAN_TOL and diff.max() <= FRAME_MAX_TOL
        assert (dali[i][3] - torch_[i][3]).abs().max() <= FEATURE_TOL
        if not expected[i][1]:
            assert torch_[i][2].max() <= 2  # black placeholder frames
        if not expected[i][0]:
            assert torch_[i][3].abs().max() == 0  # silence normalises to zeros


@pytest.mark.parametrize("version", [1, 2])
def test_dali_reads_older_format_shards_as_whole(version, request):
    """A format-1 folder (16-byte meta.i32, no streams) reads as both streams present in DALI, as in torch; so does
    a format-2 folder (clips in file-name order, no shuffle_seed)."""
    out = request.getfixturevalue(f"ravdess_shards_v{version}")
    base = dict(shards=str(out), batch_size=4, frames=2, crop=32, n_mels=16, num_threads=1)
    for loader in ("dali", "torch"):
        got = presence(DataConfig(loader=loader, **base), ["fold1"])
        assert got and all(v[:2] == (True, True) for v in got.values()), loader
