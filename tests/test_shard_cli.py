"""``avdali shard`` and ``avdali bench shard`` end to end: exit codes, messages, Ctrl-C/SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pack import folder_bytes, make_bad_ravdess
from typer.testing import CliRunner

from avdali.shardformat.manifest import read_manifest

runner = CliRunner()


def invoke(*args: str):
    from avdali.cli.app import app

    result = runner.invoke(app, list(args))
    return result, " ".join(result.output.split())


def test_shard_bad_tree_lists_skips_and_summary(tmp_path):
    src = tmp_path / "raw"
    expected = make_bad_ravdess(src)
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "out"), "--shard-size", "2", "--workers", "1")
    assert result.exit_code == 0, result.output
    for source in expected:
        assert f"skip {source}:" in text
    assert "fold5" in text and "skipped 6 sources" in text and "bytes per packed clip" in text
    assert read_manifest(tmp_path / "out").samples == 1


def test_split_with_0_samples_is_a_problem_and_exit_1_and_splits_leaves_it_out(tmp_path):
    src = tmp_path / "raw"
    make_bad_ravdess(src)  # Actor_01 (fold5): one good clip
    good = (src / "Actor_01" / "01-01-01-01-01-01-01.mp4").read_bytes()
    (src / "Actor_02").mkdir()  # Actor_02 (fold1): only a truncated clip
    (src / "Actor_02" / "01-01-03-01-01-01-02.mp4").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    result, text = invoke("shard", "ravdess", str(src), str(out), "--workers", "1")
    assert result.exit_code == 1, result.output
    assert "fold1 │ 0 ✗ nothing packed" in text and "problem: split fold1 has 0 samples" in text
    assert "error: split fold1: 0 samples packed" in text and "--splits" in text
    assert "note: no actor of fold2, fold3, fold4 in SRC" in text
    manifest = read_manifest(out)
    assert manifest.complete and manifest.splits["fold1"].samples == 0 and manifest.splits["fold5"].samples == 1

    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "fold5"), "--workers", "1", "--splits", "fold5")
    assert result.exit_code == 0, result.output
    assert list(read_manifest(tmp_path / "fold5").splits) == ["fold5"] and "note:" not in text
    assert "problem" not in text
    # a different subset in the same OUT is another run: refused, not mixed
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "fold5"), "--workers", "1", "--splits", "fold1,fold5")
    assert result.exit_code == 1 and "packed with other options (splits ['fold5'] → ['fold1', 'fold5'])" in text
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "x"), "--splits", "fold9")
    assert result.exit_code == 1 and "--splits: unknown RAVDESS split fold9; expected some of fold1,fold2" in text


def test_strict_fails_after_packing(tmp_path):
    src = tmp_path / "raw"
    make_bad_ravdess(src)
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "out"), "--workers", "1", "--strict")
    assert result.exit_code == 1
    assert "error: 6 sources skipped under --strict" in text
    assert read_manifest(tmp_path / "out").complete  # the record of what was skipped is still written


def test_nothing_packable_fails(tmp_path):
    src = tmp_path / "raw"
    make_bad_ravdess(src, with_good=False)
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "out"), "--workers", "1")
    assert result.exit_code == 1 and "error:" in text and "no clip could be packed" in text


def test_missing_or_wrong_src_is_one_line(tmp_path):
    result, text = invoke("shard", "meld", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert result.exit_code == 1 and "no such folder" in text and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result, text = invoke("shard", "ravdess", str(tmp_path / "empty"), str(tmp_path / "out"))
    assert result.exit_code == 1 and "no Actor_XX folders found" in text and len(result.output.strip().splitlines()) <= 3


def test_seed_is_recorded_shown_by_inspect_and_another_seed_refuses_to_resume(tmp_path):
    src = tmp_path / "raw"
    make_bad_ravdess(src)
    out = tmp_path / "out"
    result, text = invoke("shard", "ravdess", str(src), str(out), "--workers", "1", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert read_manifest(out).options["shuffle_seed"] == 3
    result, text = invoke("inspect", str(out), "--decode", "0")
    assert result.exit_code == 0 and "format 3: each split's clips shuffled with --seed 3" in text
    result, text = invoke("shard", "ravdess", str(src), str(out), "--workers", "1", "--seed", "4")
    assert result.exit_code == 1 and "packed with other options (shuffle_seed 3 → 4)" in text
    result, text = invoke("shard", "ravdess", str(src), str(tmp_path / "x"), "--seed", "-1")
    assert result.exit_code == 1 and "--seed must be an integer between 0 and" in text


def test_bad_option_is_one_line(tmp_path):
    result, text = invoke("shard", "ravdess", str(tmp_path), "--size", "64")
    assert result.exit_code == 1 and "--size must be ≥ 128" in text


def _wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(read_manifest(out).shards) >= n:
                return
        except Exception:  # noqa: BLE001 - the manifest may not exist yet
            pass
        if proc.poll() is not None:
            raise AssertionError(f"avdali shard exited early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.01)  # fast: a resumed run may write its last shards in one burst
    raise AssertionError("no shard was written in time")


@pytest.mark.slow
def test_ctrl_c_and_sigkill_then_resume_gives_the_uninterrupted_bytes(ravdess_src, ravdess_shards, tmp_path):
    out = tmp_path / "out"
    options = read_manifest(ravdess_shards).options
    args = [
        sys.executable, "-m", "avdali", "shard", "ravdess", str(ravdess_src), str(out),
        "--size", str(options["size"]), "--fps", str(options["fps"]), "--max-seconds", str(options["max_seconds"]),
        "--shard-size", str(options["shard_size"]), "--workers", str(options["workers"]),
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}

    # Ctrl-C (SIGINT to the whole process group, as a terminal sends it) after the first shard
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    _wait_for_shards(out, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in " ".join(stderr.split())
    stopped = read_manifest(out)
    assert not stopped.complete and len(stopped.shards) >= 1
    assert not list(out.glob("*.tmp"))

    # SIGKILL (no chance to clean up) after one more shard
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    _wait_for_shards(out, len(stopped.shards) + 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed = read_manifest(out)
    assert not killed.complete
    kept = {s.name: os.stat(out / s.name) for s in killed.shards}

    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} kept" in done.stdout
    # the killed run's folder lock is recognised as stale and taken over, and the run says so (Ctrl-C released it)
    took_over = [line for line in done.stderr.splitlines() if "took over the lock" in line]
    assert len(took_over) == 1 and f"left by avdali shard (pid {proc.pid} on host " in took_over[0], done.stderr
    assert took_over[0].endswith("which is no longer running")
    for name, st in kept.items():
        assert (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert folder_bytes(out) == folder_bytes(ravdess_shards)


@pytest.mark.slow
def test_bench_shard_reports_figures(tmp_path):
    figures_path = tmp_path / "bench.json"
    result, text = invoke("bench", "shard", "--size", "320x180", "--clips", "2", "--workers", "1", "--json", str(figures_path))
    assert result.exit_code == 0, result.output
    figures = json.loads(figures_path.read_text())
    assert figures["clips_packed"] == 2 and figures["skipped"] == 0
    assert figures["clips_per_s"] > 0 and figures["bytes_per_clip"]["webm"] > 0 and figures["bytes_per_clip"]["flac"] > 0
    assert set(figures["time_split_s_per_clip"]) == {"face_detection", "verify_decode_back", "decode_crop_encode"}
    assert "clips/s per core" in text


def test_kaggle_trees_pack_every_clip_of_every_split_from_where_kaggle_mounts_them(tmp_path, meld_csv_dir):
    """synth --layout kaggle → shard with SRC as a user passes it: MELD's dataset folder, and /kaggle/input
    for RAVDESS mounted at /kaggle/input/datasets/orvile/ravdess-dataset."""
    meld = tmp_path / "kaggle" / "input" / "meld-dataset"
    result, text = invoke("synth", "meld", str(meld), "--csv-dir", str(meld_csv_dir), "--layout", "kaggle",
                          "--limit", "2", "--size", "160x96", "--max-seconds", "1")
    assert result.exit_code == 0, result.output
    result, text = invoke("shard", "meld", str(meld), str(tmp_path / "meld"), "--workers", "1")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "meld")
    assert {split: totals.samples for split, totals in manifest.splits.items()} == {"dev": 2, "test": 2, "train": 2}
    assert manifest.skipped == [] and "problem" not in text

    ravdess = tmp_path / "kaggle" / "input" / "datasets" / "orvile" / "ravdess-dataset"
    result, text = invoke("synth", "ravdess", str(ravdess), "--layout", "kaggle", "--actors", "2,3", "--trials", "1",
                          "--size", "160x96")
    assert result.exit_code == 0, result.output
    result, text = invoke("shard", "ravdess", str(tmp_path / "kaggle" / "input"), str(tmp_path / "ravdess"), "--workers", "1")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "ravdess")
    assert {split: totals.samples for split, totals in manifest.splits.items()} == {"fold1": 1, "fold2": 1}
    assert manifest.skipped == []
    assert all(k.startswith("01-01-") for s in manifest.shards for k in s.keys)
