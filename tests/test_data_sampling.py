"""Pure pieces of the input pipelines: config checks, the shared frame/audio sampling, video normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avdali.data import sampling
from avdali.data.config import DataConfig
from avdali.data.normalize import IMAGENET_MEAN, IMAGENET_STD, prepare_video
from avdali.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loader", "tf", "data.loader must be one of 'dali', 'torch'; got 'tf'"),
        ("features", "fbank", "data.features must be one of 'logmel', 'mfcc'"),
        ("video_dtype", "int8", "data.video_dtype must be one of 'uint8', 'float16', 'float32'"),
        ("label_space", "x", "data.label_space must be one of 'unified', 'ravdess8'"),
        ("batch_size", 0, "data.batch_size must be ≥ 1, got 0"),
        ("audio_seconds", 0.0, "data.audio_seconds"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**{field: value})


def test_feature_bins_follow_features():
    assert DataConfig().feature_bins == 64
    assert DataConfig(features="mfcc", n_mfcc=13).feature_bins == 13
    assert DataConfig(label_space="ravdess8").num_classes == 8


@pytest.mark.parametrize("n, t", [(30, 8), (55, 16), (7, 16), (1, 4), (100, 3)])
def test_centred_frame_indices_match_the_float_formula(n, t):
    got = sampling.frame_indices(n, t)
    expected = [min(math.floor((i + 0.5) * n / t), n - 1) for i in range(t)]
    assert got.tolist() == expected


@pytest.mark.parametrize("n, t", [(30, 8), (7, 16), (1, 4)])
def test_jittered_frame_indices_stay_in_their_segment(n, t):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = sampling.frame_indices(n, t, rng)
        assert idx.min() >= 0 and idx.max() <= n - 1
        assert np.all(np.diff(idx) >= 0)
        for i, f in enumerate(idx):  # frame f lies in segment i: i*n/t ≤ f + something < (i+1)*n/t
            assert math.floor(i * n / t) <= f <= math.ceil((i + 1) * n / t) - 1
        seen.add(tuple(idx))
    assert len(seen) > 1 or n == 1  # it does jitter


def test_audio_start_centres_and_jitters():
    assert sampling.audio_start(20_000, 48_000) == 0
    assert sampling.audio_start(50_000, 48_000) == 1_000
    rng = np.random.default_rng(0)
    starts = {sampling.audio_start(50_000, 48_000, rng) for _ in range(100)}
    assert min(starts) >= 0 and max(starts) <= 2_000 and len(starts) > 10
    assert sampling.feature_frames(48_000) == 301


@pytest.mark.parametrize("n, world", [(8, 3), (10, 2), (5, 5), (3, 4)])
def test_rank_ranges_partition_the_samples(n, world):
    ranges = [sampling.rank_range(n, r, world) for r in range(world)]
    covered = [i for lo, hi in ranges for i in range(lo, hi)]
    assert covered == list(range(n))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_batches_per_epoch_fits_the_largest_rank():
    assert sampling.batches_per_epoch(8, 2, 3) == 2  # ranks of 2, 3, 3 samples
    assert sampling.batches_per_epoch(12, 5, 2) == 2
    assert sampling.batches_per_epoch(4, 4, 1) == 1


def test_center_crop_box():
    assert sampling.center_crop_box(128, 128, 112) == (8, 8, 112)
    assert sampling.center_crop_box(128, 160, 112) == (8, 24, 112)
    assert sampling.center_crop_box(96, 96, 112) == (0, 0, 96)


def test_prepare_video_normalises_uint8_and_passes_floats():
    video = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    out = prepare_video(video)
    assert out.dtype == torch.float32 and out.shape == video.shape
    for c in range(3):
        expected = (video[:, :, c].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[:, :, c], expected)
    already = torch.randn(1, 2, 3, 4, 4, dtype=torch.float16)
    assert prepare_video(already) is already
