"""tools/rank_mix.py: the figures it reports for a loader at W ranks, on the tiny shards."""

from __future__ import annotations

from collections import Counter

from test_gpu_check import load_tool

from avdali.data.config import DataConfig


def test_tvd_and_the_random_baseline():
    tool = load_tool("rank_mix")
    whole = Counter({0: 50, 1: 50})
    assert tool.tvd(Counter({0: 10, 1: 10}), whole) == 0.0
    assert tool.tvd(Counter({0: 10}), whole) == 0.5
    labels = [0] * 50 + [1] * 50
    assert 0.0 < tool.random_split_tvd(labels, [10], draws=200) < 0.3


def test_measure_reports_what_every_rank_read(ravdess_shards):
    tool = load_tool("rank_mix")
    cfg = DataConfig(shards=str(ravdess_shards), loader="dali", batch_size=2, frames=2, crop=32, n_mels=16,
                     num_threads=1, augment=False, verify=False)
    row = tool.measure(cfg, ["fold1", "fold2", "fold3", "fold4", "fold5"], world_size=2, epochs=3)
    from avdali.shardformat.manifest import read_manifest

    emotions = sum(1 for n in read_manifest(ravdess_shards).labels.values() if n)
    assert row["samples"] == 20 and row["coverage"] is True and row["epochs"] == 3
    assert row["pairs"] == 2 * emotions and 0 <= row["unseen"] < row["pairs"]
    assert 0.0 <= row["tvd"] <= 1.0 and 0.0 < row["kept"] < 1.0  # two ranks trade some clips between epochs
