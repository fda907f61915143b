"""tools/dali_cpu_profile.py: every row runs the part of the streaming graph it names, on the tiny shards."""

from __future__ import annotations

from test_gpu_check import load_tool

from avdali import shardformat as fmt
from avdali.data import clipspec
from avdali.data.config import DataConfig

SPLITS = ["fold1", "fold2", "fold3", "fold4", "fold5"]


def test_each_row_outputs_what_its_part_of_the_graph_makes(ravdess_shards):
    tool = load_tool("dali_cpu_profile")
    cfg = DataConfig(shards=str(ravdess_shards), batch_size=2, frames=4, crop=32, n_mels=16, num_threads=1,
                     shuffle_buffer=4, verify=False)
    out = tool.profile(cfg, SPLITS, batches=2, warmup=1)
    rows, (height, width) = out["rows"], out["frame_size"]
    shape = {name: tuple(row.get("sample_shape", ())) for name, row in rows.items()}
    assert shape["read"] == (len(fmt.META_FIELDS),)  # the reader's meta.i32
    assert shape["decode"][1:] == (height, width, 3) and 1 <= shape["decode"][0] <= cfg.frames
    assert shape["frames"] == (cfg.frames, height, width, 3)
    crops = (cfg.frames, cfg.crop, cfg.crop, 3)
    assert shape["crop-nearest"] == shape["crop-linear"] == shape["whole"] == shape["loader"] == crops
    assert len(shape["audio-decode"]) == 1 and shape["audio-decode"][0] > 0  # the whole track, mono
    assert shape["audio"] == (cfg.n_mels, clipspec.feature_frames(clipspec.window_samples(cfg.audio_seconds)))
    assert all(row["cpu_ms_per_clip"] >= 0 for row in rows.values()) and rows["torch-bilinear"]["cpu_ms_per_clip"] > 0
    assert out["batches_per_run"] == 10  # 20 clips in batches of 2: the pipeline rows run the loader's runs of 20
    assert out["bound"] == round(rows["decode"]["cpu_ms_per_clip"] / rows["loader"]["cpu_ms_per_clip"], 3)
    work = rows["decode"]["cpu_ms_per_clip"] + rows["audio"]["cpu_ms_per_clip"] + rows["torch-bilinear"]["cpu_ms_per_clip"]
    assert out["limit"] == round(rows["decode"]["cpu_ms_per_clip"] / work, 3) and 0 < out["limit"] < 1
