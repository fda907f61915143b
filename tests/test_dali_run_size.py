"""tools/dali_run_size.py: the four streams take turns on the tiny shards, and the shares are those of their figures."""

from __future__ import annotations

import json

import pytest
from test_gpu_check import load_tool


def test_the_streams_take_turns_and_report_their_shares(ravdess_shards, tmp_path):
    tool = load_tool("dali_run_size")
    out = tmp_path / "runs.json"
    result = tool.main([str(ravdess_shards), "--batch-size", "2", "--frames", "4", "--threads", "1", "--rounds", "2",
                        "--clips", "4", "--json", str(out)])
    assert result == json.loads(out.read_text())
    k = result["batches_per_run"]
    assert k == 10  # 20 clips in batches of 2: the whole epoch in one run
    names = {"ceiling-1", f"ceiling-{k}", "loader-1", f"loader-{k}"}
    assert set(result["figures"]) == set(result["rounds_figures"]) == names
    assert all(len(rows) == 2 for rows in result["rounds_figures"].values())
    loader = result["figures"][f"loader-{k}"]
    assert loader["clips_per_s"] > 0 and loader["cpu_ms_per_clip"] >= 0 and loader["share_of_ceiling"] > 0


def test_summary_divides_by_the_ceiling_of_the_same_run_size():
    tool = load_tool("dali_run_size")
    figures = {"ceiling-1": [(100.0, 10.0), (200.0, 10.0)], "loader-1": [(50.0, 20.0), (50.0, 20.0)]}
    out = tool.summary(figures, {"loader-1": "ceiling-1"})
    assert out["loader-1"]["share_of_ceiling"] == pytest.approx((0.5 + 0.25) / 2, abs=1e-3)  # round by round
    assert out["loader-1"]["share_by_cpu"] == 0.5 and out["ceiling-1"]["clips_per_s"] == 150.0
    idle = tool.summary({"ceiling-1": [(100.0, 10.0)], "loader-1": [(50.0, 0.0)]}, {"loader-1": "ceiling-1"})
    assert idle["loader-1"]["share_by_cpu"] is None  # no CPU tick counted: unknown, not infinite
