"""One writer per folder (``avdali.folder_lock``): real processes racing for each kind of folder avdali writes, a
SIGKILLed holder taken over, rank 0 alone locking a multi-rank run, and training refused while shards are written."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_toml
from typer.testing import CliRunner

from avdali.folder_lock import LOCK_NAME, FolderBusy, acquire, hold_folder
from avdali.shardformat.manifest import read_manifest

HOST = socket.gethostname()

HOLDER = """
import sys, time
from avdali.folder_lock import acquire
lock = acquire(sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(300)
"""
"""A process that takes a folder's lock (as every command does, through ``acquire``) and keeps it until killed."""

GATED_PACK = """
import sys, time
from pathlib import Path
from avdali.shardformat.options import PackOptions
from avdali.packing.run import pack
from avdali.packing.workers import real_transcode

gate = Path(sys.argv[3])

def transcode_when_open(path, options):
    while not gate.exists():  # stays mid-run until the test opens the gate
        time.sleep(0.02)
    return real_transcode(path, options)

pack("ravdess", Path(sys.argv[1]), Path(sys.argv[2]), PackOptions(size=128, fps=15, max_seconds=4.0, shard_size=4, workers=1),
     transcode=transcode_when_open)
"""
"""``avdali shard``'s packer, held mid-run (lock taken, manifest written with ``complete: false``) until a gate file exists."""


def start(script: str, *args: Path | str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start_holder(folder: Path) -> subprocess.Popen:
    proc = start(HOLDER, folder, "avdali test-holder")
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.communicate(timeout=60)


def wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode} before {what}: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def invoke(*args: str | Path):
    from avdali.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, result.output.strip()


def busy_line(folder: Path, command: str, pid: int) -> re.Pattern:
    """The one line a refused writer prints: the folder, and the holder's command, pid, host and start time."""
    return re.compile(
        rf"^error: {re.escape(str(folder))}: in use by {re.escape(command)} \(pid {pid} on host {re.escape(HOST)}, "
        r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait for it to finish or use another folder$"
    )


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory) -> Path:
    """1 actor × 4 trials: enough for a packer that runs a few seconds."""
    from avdali.synth.ravdess import make_ravdess

    root = tmp_path_factory.mktemp("lock_raw")
    make_ravdess(root, actors=(2,), size=(256, 144), trials_per_actor=4, seed=0)
    return root


# --- the lock itself ------------------------------------------------------------------------------------------


def test_lock_file_holds_the_holder_and_goes_with_the_lock(tmp_path):
    folder = tmp_path / "new" / "run"
    with hold_folder(folder, "avdali test") as lock:
        recorded = json.loads((folder / LOCK_NAME).read_text())
        assert recorded["pid"] == os.getpid() and recorded["host"] == HOST and recorded["command"] == "avdali test"
        assert lock.previous is None and lock.takeover_message() is None
        # a second open of the same file is a second writer, also within one process (flock is per open file)
        with pytest.raises(FolderBusy, match=f"in use by avdali test \\(pid {os.getpid()} on host "):
            acquire(folder, "avdali other")
    assert not folder.exists()  # created for nothing: gone with the lock, so a failed run leaves no empty folder
    assert folder.parent.is_dir()

    with hold_folder(tmp_path, "avdali test"):
        (tmp_path / "made.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made.txt", "new"]  # no lock file left behind

    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="exists and is not a folder"):
        acquire(tmp_path / "file", "avdali test")


@pytest.mark.parametrize("kind", ["shard", "train", "cv", "demo", "synth"])
def test_a_second_writer_stops_at_once_naming_the_holder(kind, tmp_path, ravdess_shards, tiny_src):
    """A real process holds the folder; each command that writes such a folder refuses with one line and writes nothing."""
    folder = tmp_path / f"{kind}-out"
    folder.mkdir()
    holder = start_holder(folder)
    try:
        config = tmp_path / "tiny.toml"
        config.write_text(tiny_run_toml(ravdess_shards))
        args = {
            "shard": ["shard", "ravdess", tiny_src, folder, "--workers", "1"],
            "train": ["train", "--config", config, "--run-dir", folder],
            "cv": ["cv", "--config", config, "--out", folder, "--folds", "1"],
            "demo": ["demo", "--out", folder, "--quick"],
            "synth": ["synth", "ravdess", folder, "--actors", "1", "--trials", "1", "--size", "256x144"],
        }[kind]
        tic = time.monotonic()
        result, output = invoke(*args)
        assert result.exit_code == 1, output
        assert busy_line(folder, "avdali test-holder", holder.pid).match(output), output
        assert time.monotonic() - tic < 30
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written, the holder's lock intact
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        stop(holder)


def test_two_shard_commands_race_one_packs_the_other_stops(tmp_path, tiny_src):
    out = tmp_path / "shards"
    args = [sys.executable, "-m", "avdali", "shard", "ravdess", str(tiny_src), str(out), "--workers", "1", "--shard-size", "2"]
    env = {**os.environ, "COLUMNS": "300"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outcomes = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in outcomes)
    (winner, _, _), (_, _, loser_err) = sorted(outcomes, key=lambda o: o[0].returncode)
    if codes == [0, 0]:
        # the second started only after the first had finished (a loaded machine): it found nothing left to do
        assert any("; 0 clips to transcode" in err for _, _, err in outcomes), [err for _, _, err in outcomes]
    else:  # the usual race: the second stops at once with the busy line (always tested with a held lock above)
        assert codes == [0, 1], [(p.returncode, err) for p, _, err in outcomes]
        lines = [line for line in loser_err.splitlines() if line.strip()]
        assert len(lines) == 1 and busy_line(out, "avdali shard", winner.pid).match(lines[0]), loser_err
    manifest = read_manifest(out)
    assert manifest.complete and manifest.samples == 4
    assert LOCK_NAME not in {p.name for p in out.iterdir()}


def test_killed_packer_is_taken_over_and_training_waits_for_complete_shards(tmp_path, tiny_src):
    """While ``avdali shard`` writes, training from the folder is refused (the manifest says the packing is not
    complete; readers take no lock). The packer is SIGKILLed mid-run; the next one says it takes over and finishes."""
    out, gate = tmp_path / "shards", tmp_path / "gate"
    packer = start(GATED_PACK, tiny_src, out, gate)
    try:
        wait_for(lambda: (out / "manifest.json").is_file(), packer, "the first manifest")
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == packer.pid
        config = tmp_path / "tiny.toml"
        config.write_text(tiny_run_toml(out))
        result, output = invoke("train", "--config", config, "--run-dir", tmp_path / "run")
        assert result.exit_code == 1 and output == f"error: {out / 'manifest.json'}: packing is not complete; re-run `avdali shard` to finish it"
        assert not (tmp_path / "run").exists()
    finally:
        stop(packer, signal.SIGKILL)
    assert not read_manifest(out).complete and (out / LOCK_NAME).is_file()  # killed: no chance to clean up

    result, output = invoke("shard", "ravdess", tiny_src, out, "--size", "128", "--fps", "15", "--max-seconds", "4",
                            "--shard-size", "4", "--workers", "1")
    assert result.exit_code == 0, output
    flat = " ".join(output.split())
    assert re.search(
        rf"{re.escape(str(out))}: took over the lock left by avdali shard \(pid {packer.pid} on host {re.escape(HOST)}, "
        r"started [0-9: -]+ UTC\), which is no longer running", flat
    ), flat
    assert flat.count("took over") == 1
    assert read_manifest(out).complete and not (out / LOCK_NAME).exists()


def test_multi_rank_training_locks_the_run_folder_on_rank_0_only(tmp_path, monkeypatch, ravdess_shards):
    from avdali.train import run as train_run
    from avdali.train.config_toml import load_config

    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml(ravdess_shards))
    run_dir = tmp_path / "run"
    cfg = load_config(config, [f'train.run_dir="{run_dir}"'])
    monkeypatch.setattr(train_run, "_run_training_locked", lambda cfg, run_dir, *a: "trained")
    monkeypatch.setenv("WORLD_SIZE", "2")
    holder = start_holder(run_dir)
    try:
        monkeypatch.setenv("RANK", "1")
        assert train_run.run_training(cfg) == "trained"  # rank 1 neither takes nor needs the lock
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
            train_run.run_training(cfg)
    finally:
        stop(holder)
    messages = []

    class Reporter:
        def message(self, text):
            messages.append(text)

    assert train_run.run_training(cfg, reporter=Reporter()) == "trained"  # rank 0 after the holder was killed
    assert len(messages) == 1 and f"took over the lock left by avdali test-holder (pid {holder.pid}" in messages[0]
    assert "which is no longer running" in messages[0]
