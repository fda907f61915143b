"""Pure pieces of the input pipelines: config checks, the clip specification's frame/crop/audio formulas (in numpy
and in a DALI graph), video normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avdali.data import clipspec, order
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
    got = clipspec.draw_frame_indices(n, t)
    expected = [min(math.floor((i + 0.5) * n / t), n - 1) for i in range(t)]
    assert got.tolist() == expected


@pytest.mark.parametrize("n, t", [(30, 8), (55, 16), (17, 16), (7, 16), (1, 4)])
def test_jittered_frame_indices_stay_in_their_segment(n, t):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = clipspec.draw_frame_indices(n, t, rng)
        assert idx.min() >= 0 and idx.max() <= n - 1
        assert np.all(np.diff(idx) > 0) if n >= t else np.all(np.diff(idx) >= 0)  # distinct when the clip is long enough
        for i, f in enumerate(idx):  # frame f lies in the i-th integer segment [i*n//t, (i+1)*n//t)
            assert i * n // t <= f <= max((i + 1) * n // t - 1, i * n // t)
        seen.add(tuple(idx))
    if n > t:  # it does jitter, and every frame of every segment can be drawn
        assert len(seen) > 1 and {f for s in seen for f in s} == set(range(n))
    else:  # a clip of at most T frames uses each of its frames, in order, every time
        assert seen == {tuple(np.arange(t) * n // t)} and set(next(iter(seen))) == set(range(n))


def test_audio_start_centres_and_jitters():
    assert clipspec.draw_audio_start(20_000, 48_000) == 0
    assert clipspec.draw_audio_start(50_000, 48_000) == 1_000
    rng = np.random.default_rng(0)
    starts = {clipspec.draw_audio_start(50_000, 48_000, rng) for _ in range(300)}
    assert min(starts) >= 0 and max(starts) <= 2_000 and len(starts) > 10
    assert clipspec.feature_frames(48_000) == 301


@pytest.mark.parametrize("height, width", [(128, 128), (128, 160), (96, 200)])
def test_random_crop_box_stays_in_the_frame_with_the_specified_area_and_aspect(height, width):
    rng = np.random.default_rng(0)
    boxes = [clipspec.draw_crop_box(height, width, rng) for _ in range(500)]
    for top, left, h, w in boxes:
        assert 0 <= top <= height - h and 0 <= left <= width - w and h >= 1 and w >= 1
        if h < height and w < width:  # not clipped by the frame: the drawn area and aspect (rounded to pixels)
            assert clipspec.CROP_AREA[0] - 0.02 <= h * w / (height * width) <= clipspec.CROP_AREA[1] + 0.02
            assert clipspec.CROP_ASPECT[0] - 0.05 <= w / h <= clipspec.CROP_ASPECT[1] + 0.05
    assert len(set(boxes)) > 400  # it does draw
    assert {top for top, *_ in boxes} >= {0} and min(h * w for _, _, h, w in boxes) < 0.45 * height * width


def _graph_values(fn_of_graph, draws, count: int):
    """Run ``fn_of_graph(u, n)`` in a CPU DALI pipeline, one sample per row of ``draws`` (uniform draws ``u``) with the
    int32 ``n = count`` (both fed by external_source, so they are DataNodes as in the loader's graph)."""
    from nvidia.dali import fn, pipeline_def, types

    rows = [np.asarray(row, dtype=np.float32) for row in draws]

    @pipeline_def(enable_conditionals=False)
    def pipe():
        u = fn.external_source(source=lambda: rows, batch=True, dtype=types.FLOAT)
        n = fn.external_source(source=lambda: [np.int32(count)] * len(rows), batch=True, dtype=types.INT32)
        return fn_of_graph(u, n)

    p = pipe(batch_size=len(rows), num_threads=1, device_id=None)
    p.build()
    return [np.asarray(x) for x in p.run()[0]]


def test_the_formulas_give_the_same_numbers_in_a_dali_graph():
    """clipspec's formulas, computed with GRAPH_OPS inside DALI and with numpy, agree exactly for the same draws."""
    from avdali.data.dali import GRAPH_OPS

    rng = np.random.default_rng(1)
    draws = rng.random((64, 16), dtype=np.float32)
    draws[0], draws[1] = 0.0, np.nextafter(np.float32(1), np.float32(0))  # the ends of [0, 1)
    for n in (1, 7, 16, 17, 55, 150):
        got = _graph_values(lambda u, c: clipspec.frame_indices(c, 16, u, GRAPH_OPS), draws, n)
        assert [g.tolist() for g in got] == [clipspec.frame_indices(np.int64(n), 16, row).tolist() for row in draws], n
        centres = _graph_values(lambda u, c: clipspec.frame_indices(c, 16, None, GRAPH_OPS) + 0 * GRAPH_OPS.to_int(u[0]),
                                draws[:1], n)
        assert centres[0].tolist() == clipspec.draw_frame_indices(n, 16).tolist()
    for i in range(4):
        got = _graph_values(lambda u, c: clipspec.random_crop_box(u, 128, 160, GRAPH_OPS)[i] + 0 * c, draws[:, :4], 0)
        assert [int(g) for g in got] == [int(clipspec.random_crop_box(row, 128, 160)[i]) for row in draws[:, :4]], i
    got = _graph_values(lambda u, c: clipspec.audio_start(c, 48_000, u[0], GRAPH_OPS), draws, 50_000)
    assert [int(g) for g in got] == [int(clipspec.audio_start(np.int64(50_000), 48_000, row[0])) for row in draws]


@pytest.mark.parametrize("n, world", [(8, 3), (10, 2), (5, 5), (3, 4)])
def test_rank_ranges_partition_the_samples(n, world):
    ranges = [order.rank_range(n, r, world) for r in range(world)]
    covered = [i for lo, hi in ranges for i in range(lo, hi)]
    assert covered == list(range(n))
    assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_batches_per_epoch_fits_the_largest_rank():
    assert order.batches_per_epoch(8, 2, 3) == 2  # ranks of 2, 3, 3 samples
    assert order.batches_per_epoch(12, 5, 2) == 2
    assert order.batches_per_epoch(4, 4, 1) == 1


def test_center_crop_box():
    assert clipspec.center_crop_box(128, 128, 112) == (8, 8, 112)
    assert clipspec.center_crop_box(128, 160, 112) == (8, 24, 112)
    assert clipspec.center_crop_box(96, 96, 112) == (0, 0, 96)


def test_prepare_video_normalises_uint8_and_passes_floats():
    video = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    out = prepare_video(video)
    assert out.dtype == torch.float32 and out.shape == video.shape
    for c in range(3):
        expected = (video[:, :, c].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[:, :, c], expected)
    already = torch.randn(1, 2, 3, 4, 4, dtype=torch.float16)
    assert prepare_video(already) is already


@pytest.mark.parametrize("train", [True, False])
def test_batch_draws_are_the_per_clip_draws(train):
    """The cache draws a batch at once: the same generator state gives what the per-clip draws give, clip by clip
    (frame indices of short and long clips, audio starts with and without slack, crop boxes)."""
    frames = np.array([1, 3, 15, 16, 17, 55, 160, 7])
    samples = np.array([100, 48_000, 48_001, 55_637, 20_000, 96_000, 1, 60_000])
    seed = 11
    rng = np.random.default_rng(seed) if train else None
    got_frames = clipspec.draw_batch_frame_indices(frames, 16, rng)
    got_starts = clipspec.draw_audio_starts(samples, 48_000, rng)
    ref = np.random.default_rng(seed) if train else None
    want_frames = np.stack([clipspec.draw_frame_indices(int(n), 16, ref) for n in frames])
    want_starts = [clipspec.draw_audio_start(int(n), 48_000, ref) for n in samples]
    assert got_frames.dtype == np.int64 and got_frames.shape == (8, 16)
    assert got_frames.tolist() == want_frames.tolist() and got_starts.tolist() == want_starts
    with pytest.raises(ValueError, match="at least one frame"):
        clipspec.draw_batch_frame_indices(np.array([4, 0]), 16, rng)


def test_batch_crop_boxes_are_the_per_clip_boxes():
    for height, width in [(128, 128), (144, 256), (37, 91)]:
        boxes = clipspec.draw_crop_boxes(2000, height, width, np.random.default_rng(height))
        rng = np.random.default_rng(height)
        assert boxes.dtype == np.int32
        assert [tuple(b) for b in boxes.tolist()] == [clipspec.draw_crop_box(height, width, rng) for _ in range(2000)]
