"""``avdali bench loader`` end to end on the tiny shards (figures are not asserted: speed is for benchmarks)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from avdali.cli.app import app


def test_bench_loader_writes_figures(ravdess_shards, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali", "--batch-size", "2",
                                      "--batches", "2", "--warmup", "1", "--frames", "4", "--splits", "fold1,fold2",
                                      "--crop-interp", "nearest", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert set(figures["results"]) == {"dali", "ceiling-dali", "ceiling-pyav"}
    assert figures["results"]["dali"]["clips"] == 4  # 2 timed batches of 2
    assert figures["config"]["crop_interp"] == "nearest"
    assert figures["results"][figures["ceiling"]]["share_of_ceiling"] == 1.0
    assert figures["device"] == "cpu" and figures["results"]["dali"]["cpu_cores"] > 0
    assert figures["results"]["dali"]["main_thread_busy"] > 0  # DALI's outputs are taken on this thread
    assert figures["results"]["ceiling-pyav"]["main_thread_busy"] is None  # its batches come from worker processes
    assert "gpu_peak_allocated_mb" not in figures["results"]["dali"]
    assert "dali" in result.output
    ceiling = figures["results"][figures["ceiling"]]
    # process CPU is counted in clock ticks (10 ms): a timed part this short may count none, then the share is unknown
    assert ceiling["cpu_share_of_ceiling"] == (1.0 if ceiling["cpu_ms_per_clip"] else None)
    assert figures["results"]["dali"]["cpu_ms_per_clip"] >= 0
    assert all(r["steal_cores"] is not None and r["steal_cores"] >= 0 for r in figures["results"].values())


def test_shares_of_the_ceiling_by_throughput_and_by_cpu_per_clip():
    """The share by CPU divides the ceiling's CPU per clip by the loader's: a loader that decodes as fast but uses
    twice the CPU per clip on a machine whose cores were stolen during the ceiling still reads 50 %."""
    from avdali.bench.loaders import Throughput, _figures

    ceiling = Throughput("ceiling-dali", clips=100, seconds=1.0, frames_per_clip=16, cpu_seconds=1.0, steal_seconds=0.5)
    loader = Throughput("dali", clips=100, seconds=1.0, frames_per_clip=16, cpu_seconds=2.0, steal_seconds=0.0)
    figures = _figures(loader, ceiling)
    assert figures["share_of_ceiling"] == 1.0 and figures["cpu_share_of_ceiling"] == 0.5
    assert figures["cpu_ms_per_clip"] == 20.0 and figures["steal_cores"] == 0.0
    assert _figures(ceiling, ceiling)["steal_cores"] == 0.5
    assert _figures(Throughput("naive", 10, 1.0, 16), ceiling)["cpu_share_of_ceiling"] is None  # CPU not measured


def test_host_steal_is_read_from_proc_stat(monkeypatch, tmp_path):
    import builtins
    import os

    from avdali.bench import loaders

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 900 3 0 2 250 0 0\ncpu0 1 2 3\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k))
    assert loaders.host_steal_seconds() == 250 / os.sysconf("SC_CLK_TCK")
    stat.write_text("cpu  100 0 50\n")  # no steal field: unknown, not zero
    assert loaders.host_steal_seconds() is None


def test_main_thread_busy_counts_the_batch_taking_threads_cpu_not_its_waits():
    import time

    from avdali.bench.loaders import time_batches

    def batches(work):
        while True:
            work()
            yield [0]

    def spin():  # 20 ms of this thread's CPU time
        until = time.thread_time() + 0.02
        while time.thread_time() < until:
            pass

    busy = time_batches("busy", batches(spin), len, count=5, warmup=1, frames=1)
    idle = time_batches("idle", batches(lambda: time.sleep(0.02)), len, count=5, warmup=1, frames=1)
    assert busy.main_thread_seconds >= 0.1 and busy.main_thread_busy > idle.main_thread_busy
    assert idle.main_thread_seconds < 0.05 and idle.seconds >= 0.1


def test_bench_loader_measures_the_cache_apart_from_its_first_pass(ravdess_shards, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali,cache", "--batch-size",
                                      "2", "--batches", "2", "--warmup", "1", "--frames", "4", "--splits", "fold1,fold2",
                                      "--no-ceiling", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    cache = figures["results"]["cache"]
    assert cache["clips"] == 4 and cache["first_pass_s"] > 0 and 0 < cache["cache_gb"] < 1
    assert "first_pass_s" not in figures["results"]["dali"]
    assert "cache/dali" in figures["ratios"] and "first pass" in result.output


def test_bench_loader_rejects_unknown_loader_and_naive_without_src(ravdess_shards):
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali,tf"])
    assert result.exit_code == 1 and "unknown tf" in result.output
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "naive"])
    assert result.exit_code == 1 and "--src" in result.output
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--crop-interp", "cubic"])
    assert result.exit_code == 1 and "crop_interp" in result.output and "'nearest', 'linear'" in result.output
    result = runner.invoke(app, ["bench", "loader", str(ravdess_shards), "--loaders", "dali-gpu"])
    assert result.exit_code == 1 and "unknown dali-gpu for --device cpu" in result.output


def test_bench_loader_cuda_without_cuda_is_one_line(ravdess_shards):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the error without CUDA")
    result = CliRunner().invoke(app, ["bench", "loader", str(ravdess_shards), "--device", "cuda"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["bench", "loader", str(ravdess_shards), "--device", "cuda", "--loaders", "dali"])
    assert result.exit_code == 1 and "unknown dali for --device cuda" in result.output


def test_process_tree_cpu_counts_children():
    """A busy child process's CPU time is counted (DataLoader workers are children), and this process's own."""
    import subprocess
    import sys
    import time

    from avdali.bench.loaders import process_tree_cpu_seconds

    before = process_tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\ntime.sleep(30)"])
    try:
        deadline = time.time() + 20
        while process_tree_cpu_seconds() - before < 0.5 and time.time() < deadline:
            time.sleep(0.1)
        assert process_tree_cpu_seconds() - before >= 0.5
    finally:
        child.kill()
        child.wait()


def test_cuda_loaders_cover_every_way_of_feeding_a_gpu():
    from avdali.bench.loaders import CUDA_LOADERS
    from avdali.data.config import DataConfig

    assert CUDA_LOADERS["dali-gpu"] == ("dali", "cuda", "gpu", "off")
    assert CUDA_LOADERS["dali-hybrid"] == ("dali", "cuda", "cpu", "off")
    assert CUDA_LOADERS["dali-cpu"][1] == "cpu" and CUDA_LOADERS["torch"][0] == "torch"
    assert CUDA_LOADERS["cache"] == ("dali", "cuda", "auto", "device")
    for loader, _device, decode, cache in CUDA_LOADERS.values():
        DataConfig(loader=loader, decode=decode, cache=cache)  # valid settings


def test_naive_loader_reads_only_the_clips_the_manifest_packed(ravdess_src, tmp_path):
    """A raw tree holding a truncated clip the packer skipped: the notebook-style loader must not open it."""
    import av
    import pytest

    from avdali.data.config import DataConfig
    from avdali.bench.naive_loader import NaiveClips, packed_records
    from avdali.errors import AvdaliError
    from avdali.shardformat.manifest import read_manifest
    from avdali.shardformat.options import PackOptions
    from avdali.packing.run import pack
    from avdali.sources import scan

    raw = tmp_path / "raw" / "Actor_02"
    raw.mkdir(parents=True)
    clips = sorted((ravdess_src / "Actor_02").glob("01-*.mp4"))[:3]
    for clip in clips[:2]:
        (raw / clip.name).write_bytes(clip.read_bytes())
    truncated = raw / clips[2].name
    truncated.write_bytes(clips[2].read_bytes()[:3000])
    pack("ravdess", raw.parent, tmp_path / "shards", PackOptions(shard_size=4, workers=1))
    manifest = read_manifest(tmp_path / "shards")
    assert [s["source"] for s in manifest.skipped] == [f"Actor_02/{truncated.name}"]

    cfg = DataConfig(shards=str(tmp_path / "shards"), batch_size=1, frames=2, crop=32, n_mels=16, num_threads=1)
    records = packed_records("ravdess", raw.parent, None, manifest)
    assert [r.key for r in records] == [c.stem for c in clips[:2]]
    naive = NaiveClips(records, cfg)
    assert [naive[i]["video"].shape for i in range(len(naive))] == [(2, 3, 32, 32)] * 2
    # what the loader did before: every clip of the raw tree, the truncated one too
    everything = NaiveClips(scan("ravdess", raw.parent).records, cfg)
    with pytest.raises(av.error.FFmpegError):
        [everything[i] for i in range(len(everything))]

    with pytest.raises(AvdaliError, match="--dataset meld, but the shards hold ravdess"):
        packed_records("meld", raw.parent, None, manifest)
    with pytest.raises(AvdaliError, match="none of the 0 clips packed in the shards' splits"):
        packed_records("ravdess", raw.parent, ["fold3"], manifest)
