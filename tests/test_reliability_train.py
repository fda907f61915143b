"""Faults at training time: each ends in one clear line with nothing lost.

- a run killed with SIGKILL mid-epoch resumes from last.pt with continuous steps, optimizer state and curves;
- a write that fails (disk full, unwritable run folder) names the file and keeps the previous checkpoint / shards;
- a shard with flipped or missing bytes stops the run naming the shard, in both loaders;
- a run whose loss stays non-finite stops with one line and keeps the last good checkpoint;
- a rank killed in a 2-rank CPU run stops the whole group within a bounded time.

Related tests elsewhere (not repeated here): tests/test_train_loop.py::test_resume_continues_exactly (bit-exact
resume in process), ::test_nonfinite_steps_are_skipped_then_stop (skip + count + stop), tests/test_inspect.py
(``avdali inspect`` finds flipped bytes and truncated tars), tests/test_shard_cli.py (packing killed and resumed).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from test_train_loop import TINY_MODEL, FakeLoader
from test_train_loop import fake_shards as fake_manifest
from typer.testing import CliRunner

from avdali import files
from avdali.cli.app import app
from avdali.data.build import build_loader
from avdali.data.config import DataConfig
from avdali.errors import AvdaliError
from avdali.packing import writer
from avdali.shardformat.options import PackOptions
from avdali.train import checkpoint as ckpt, loop
from conftest import tiny_run_toml

runner = CliRunner()

STEPS_PER_EPOCH = 6
"""ravdess_shards: folds 3-5 train, 4 clips each, batch 2 → 6 steps per epoch on one rank."""


def tiny_toml(tmp_path: Path, shards: Path, *, epochs: int, loader: str = "torch") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_run_toml(shards, loader=loader, train=f'device = "cpu"\nepochs = {epochs}\nlog_every = 1\ntest_at_end = false'))
    return path


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_one_error_line(result, *needles: str) -> str:
    """Exit code 1, exactly one ``error:`` line that holds every needle, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a full disk ------------------------------------------------------------------------------------------


class FullDisk:
    """Stands in for ``open`` in a module under test: a file opened for writing whose name ``matches`` takes
    ``room`` more bytes, then its write fails with ENOSPC, as on a full disk (root ignores chmod, so a
    read-only folder cannot be made by permissions). Files that do not match are written normally."""

    def __init__(self, room: int = 0, matches=lambda path: True):
        self.room = room
        self.matches = matches
        self.failed: list[Path] = []

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax") and self.matches(Path(file)):
            return _FillingFile(handle, Path(file), self)
        return handle


class _FillingFile:
    def __init__(self, handle, path: Path, disk: FullDisk):
        self._handle, self._path, self._disk = handle, path, disk

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._disk.room:
            self._handle.write(data[: self._disk.room])  # a partial file, as a real full disk leaves
            self._handle.flush()
            self._disk.room = 0
            self._disk.failed.append(self._path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"w": torch.ones(1000), "step": 6})
    before = sha256(path)
    disk = FullDisk(room=4096)
    monkeypatch.setattr(files, "open", disk, raising=False)  # every atomic write opens its .tmp there
    with pytest.raises(AvdaliError) as caught:
        ckpt.save_checkpoint(path, {"w": torch.zeros(100_000), "step": 12})
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write the checkpoint (No space left on device)")
    assert "\n" not in message
    assert disk.failed == [tmp_path / "last.pt.tmp"]  # it was the temporary file that filled the disk …
    assert sha256(path) == before and ckpt.load_checkpoint(path)["step"] == 6  # … the checkpoint is untouched
    assert not (tmp_path / "last.pt.tmp").exists()  # and the partial file is gone


def fake_shards(root: Path) -> Path:
    """test_train_loop's manifest of 5 folds (its FakeLoader makes the clips), with the pack options a manifest holds."""
    fake_manifest(root)
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["options"] = {**PackOptions().content_options(), **manifest.get("options", {})}
    path.write_text(json.dumps(manifest))
    return root


def cli_with_fake_loader(monkeypatch, loader_cls=FakeLoader):
    """``avdali train`` runs in this process with the in-memory loader of test_train_loop (tiny model, fast)."""
    monkeypatch.setattr(loop, "build_loader", loader_cls)


def fake_run_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    settings = [f"data.shards={str(shards)!r}", "data.batch_size=8", "data.frames=2", "data.crop=16", "data.n_mels=8",
                "data.loader='torch'", *TINY_MODEL, "optim.lr=1e-2", "optim.warmup_steps=2", "train.log_every=2",
                "train.test_at_end=false", *extra]
    args = ["train", "--device", "cpu", "--no-compile", "--run-dir", str(run_dir)]
    for s in settings:
        args += ["--set", s]
    return args


def test_full_disk_during_training_is_one_line_and_keeps_last_pt(tmp_path, monkeypatch):
    shards = fake_shards(tmp_path / "shards")
    run = tmp_path / "run"
    cli_with_fake_loader(monkeypatch)
    toml = tmp_path / "empty.toml"
    toml.write_text("")
    result = runner.invoke(app, [*fake_run_args(shards, run, "train.epochs=1"), "--config", str(toml)])
    assert result.exit_code == 0, result.output
    before = sha256(run / "last.pt")

    # Resume for a second epoch on a disk that fills while last.pt is being rewritten.
    disk = FullDisk(room=10_000, matches=lambda p: p.name == "last.pt.tmp")
    monkeypatch.setattr(files, "open", disk, raising=False)
    result = runner.invoke(app, [*fake_run_args(shards, run, "train.epochs=2"), "--config", str(toml), "--resume"])
    assert_one_error_line(result, f"{run / 'last.pt'}: cannot write the checkpoint (No space left on device)")
    assert disk.failed  # the failure really came from the checkpoint write
    assert sha256(run / "last.pt") == before
    assert ckpt.load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not list(run.glob("*.tmp"))


def test_unwritable_run_folder_is_one_line(tmp_path, monkeypatch):
    # A file where the run folder's parent should be: mkdir fails for root too.
    shards = fake_shards(tmp_path / "shards")
    (tmp_path / "blocked").write_text("not a folder")
    run = tmp_path / "blocked" / "run"
    cli_with_fake_loader(monkeypatch)
    toml = tmp_path / "empty.toml"
    toml.write_text("")
    result = runner.invoke(app, [*fake_run_args(shards, run, "train.epochs=1"), "--config", str(toml)])
    assert_one_error_line(result, f"{run}: cannot write the folder (Not a directory)")


def _sample(key: str, payload: bytes) -> dict:
    return {"__key__": key, "cls": b"1", "json": b"{}", "meta.i32": bytes(16), "flac": payload, "webm": payload}


def test_full_disk_while_writing_a_shard_keeps_the_previous_set(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    out.mkdir()
    name = "ravdess-fold1-000000.tar"
    writer.write_shard(out, name, [_sample("a", b"x" * 5000), _sample("b", b"y" * 5000)])
    files.atomic_write_bytes(out / "manifest.json", b'{"previous": true}')
    before = {p.name: sha256(p) for p in out.iterdir()}

    disk = FullDisk(room=8000)
    monkeypatch.setattr(writer, "open", disk, raising=False)  # the tar
    monkeypatch.setattr(files, "open", disk, raising=False)  # its index and the manifest
    with pytest.raises(AvdaliError) as caught:
        writer.write_shard(out, name, [_sample("a", b"z" * 20_000)])
    assert str(caught.value).startswith(f"{out / name}: cannot write (No space left on device)")
    with pytest.raises(AvdaliError) as caught:
        files.atomic_write_bytes(out / "manifest.json", b"{" + b" " * 20_000 + b"}")
    assert str(caught.value).startswith(f"{out / 'manifest.json'}: cannot write (No space left on device)")

    assert {p.name: sha256(p) for p in out.iterdir()} == before  # same files, same bytes, no partial .tmp


@pytest.mark.slow  # packs the 20-clip fixture twice (~15 s on a busy 2-core machine)
def test_pack_on_a_full_disk_is_one_line_then_resumes_to_the_same_bytes(tmp_path, monkeypatch, ravdess_src, ravdess_shards):
    out = tmp_path / "out"
    args = ["shard", "ravdess", str(ravdess_src), str(out), "--size", "128", "--fps", "15", "--max-seconds", "4",
            "--shard-size", "4", "--workers", "2"]
    disk = FullDisk(room=1000, matches=lambda p: p.name == "ravdess-fold3-000000.tar.tmp")
    monkeypatch.setattr(writer, "open", disk, raising=False)
    result = runner.invoke(app, args)
    assert_one_error_line(result, f"{out / 'ravdess-fold3-000000.tar'}: cannot write (No space left on device)")
    assert not list(out.glob("*.tmp"))
    assert not (out / "ravdess-fold3-000000.tar").exists()
    assert (out / "ravdess-fold1-000000.tar").read_bytes() == (ravdess_shards / "ravdess-fold1-000000.tar").read_bytes()

    monkeypatch.undo()  # space again: the re-run keeps what was finished and writes the rest
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for tar in sorted(ravdess_shards.glob("*.tar")):
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name


# --- corrupt shards ------------------------------------------------------------------------------------------

CORRUPT_TAR = "ravdess-fold3-000000.tar"
"""A training shard (fold 3) of ravdess_shards."""


def corrupt_copy(src: Path, dst: Path, how: str) -> Path:
    """A copy of the shard folder with CORRUPT_TAR damaged: ``truncate`` (half the bytes) or ``flip_<ext>`` (bytes
    inverted inside every ``<ext>`` member's data, where tar headers, sizes and the index stay valid)."""
    shutil.copytree(src, dst)
    tar = dst / CORRUPT_TAR
    data = bytearray(tar.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        ext = how.removeprefix("flip_")
        with tarfile.open(tar) as t:
            members = [m for m in t if m.isreg() and m.name.endswith("." + ext)]
        assert members
        for m in members:
            step = 5 if ext == "i32" else 97  # meta.i32 is 16 bytes: flip its label too
            start = 0 if ext == "i32" else 200  # past the webm/flac header: the data itself
            for offset in range(m.offset_data + start, m.offset_data + m.size, step):
                data[offset] ^= 0xFF
    tar.write_bytes(bytes(data))
    return dst


def loader_config(shards: Path, loader: str, **kw) -> DataConfig:
    return DataConfig(shards=str(shards), loader=loader, batch_size=2, frames=2, crop=32, n_mels=16, num_threads=1, **kw)


@pytest.mark.parametrize("loader", ["torch", "dali"])
@pytest.mark.parametrize("how", ["truncate", "flip_webm", "flip_i32"])
def test_corrupt_shard_is_named_when_the_loader_is_built(tmp_path, ravdess_shards, loader, how):
    shards = corrupt_copy(ravdess_shards, tmp_path / "shards", how)
    with pytest.raises(AvdaliError) as caught:
        build_loader(loader_config(shards, loader), ["fold3", "fold4", "fold5"], train=True)
    message = str(caught.value)
    assert message.startswith(str(shards / CORRUPT_TAR)) and "\n" not in message
    assert "sha256 differs" in message or "truncated" in message
    # The other folds are intact and still load.
    build_loader(loader_config(shards, loader), ["fold4", "fold5"], train=True)


@pytest.mark.parametrize("loader", ["torch", "dali"])
@pytest.mark.parametrize("how", ["flip_webm", "flip_flac", "flip_i32"])
def test_corrupt_shard_mid_epoch_stops_with_its_name(tmp_path, ravdess_shards, loader, how):
    # data.verify = false skips the SHA-256 check at build time: the damage shows only when a sample is decoded.
    shards = corrupt_copy(ravdess_shards, tmp_path / "shards", how)
    loader_ = build_loader(loader_config(shards, loader, verify=False), ["fold3", "fold4"], train=True)
    loader_.set_epoch(0)
    with pytest.raises(AvdaliError) as caught:
        for _ in loader_:
            pass
    message = str(caught.value)
    assert message.startswith(str(shards / CORRUPT_TAR)), message
    assert "corrupt shard" in message  # the SHA-256 check after the failure found the changed tar
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_undecodable_sample_the_manifest_vouches_for_is_one_line(tmp_path, ravdess_shards, loader):
    # Damage that the SHA-256 cannot see (the manifest records the damaged bytes, as if packed that way): the
    # decoder's failure itself must still end as one line naming the shard, not a worker traceback.
    shards = corrupt_copy(ravdess_shards, tmp_path / "shards", "flip_webm")
    manifest = json.loads((shards / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == CORRUPT_TAR:
            entry["sha256"] = sha256(shards / CORRUPT_TAR)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    loader_ = build_loader(loader_config(shards, loader), ["fold3", "fold4"], train=True)
    loader_.set_epoch(0)
    with pytest.raises(AvdaliError) as caught:
        for _ in loader_:
            pass
    message = str(caught.value)
    assert message.startswith(str(shards / CORRUPT_TAR)) and "\n" not in message, message
    assert "corrupt shard" not in message  # nothing differs from the manifest


@pytest.mark.slow  # a CLI training start with the torch loader's workers (~20 s on a busy 2-core machine)
def test_train_on_a_corrupt_shard_stops_naming_it(tmp_path, ravdess_shards):
    shards = corrupt_copy(ravdess_shards, tmp_path / "shards", "flip_webm")
    config = tiny_toml(tmp_path, shards, epochs=1)
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert_one_error_line(result, f"{shards / CORRUPT_TAR}: sha256 differs")
    # Without the check at start the run gets as far as the damaged sample, then stops naming the same shard.
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run2"),
                                 "--set", "data.verify=false"])
    assert_one_error_line(result, f"{shards / CORRUPT_TAR}: corrupt shard", "cannot decode the video")


# --- non-finite loss ------------------------------------------------------------------------------------------


class NanFromEpoch2(FakeLoader):
    def __iter__(self):
        self.nan_batches = set(range(len(self))) if self.train and self.epoch >= 1 else set()
        return super().__iter__()


def test_nonfinite_run_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    shards = fake_shards(tmp_path / "shards")
    run = tmp_path / "run"
    cli_with_fake_loader(monkeypatch, NanFromEpoch2)
    toml = tmp_path / "empty.toml"
    toml.write_text("")
    result = runner.invoke(app, [*fake_run_args(shards, run, "train.epochs=3", "train.max_bad_steps=3"),
                                 "--config", str(toml)])
    assert_one_error_line(result, "stopped at step", "non-finite loss", f"{run / 'last.pt'}")
    kept = ckpt.load_checkpoint(run / "last.pt")
    assert kept["epoch"] == 1 and kept["step"] == 6  # the last good checkpoint, not a poisoned one
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


# --- killed processes ------------------------------------------------------------------------------------------


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """What TensorBoard shows: EventAccumulator over all event files of the run (orphans purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not list(run_dir.glob("events.out.tfevents.*")):
        return []  # not started yet (EventAccumulator refuses a missing folder)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def raw_scalar_steps(event_file: Path, tag: str) -> list[int]:
    """Every step written for ``tag`` in one event file, as stored (nothing purged)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [event.step for event in EventFileLoader(str(event_file)).Load()
            if any(v.tag == tag for v in event.summary.value)]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m avdali ARGS`` in its own session (so the test can find and end all it starts), output to ``log``
    unwrapped (wide COLUMNS: rich would fold long paths)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "avdali", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "COLUMNS": "400"})


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the run exited first ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (the test's subprocess and everything it started); zombies have ended."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and _state(int(entry.name)) != "Z":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def wait_until_gone(sid: int, timeout: float = 60.0) -> list[int]:
    """The session's processes still alive after waiting up to ``timeout`` seconds for them to end."""
    deadline = time.monotonic() + timeout
    while session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    return session_pids(sid)


def end_session(proc: subprocess.Popen) -> None:
    """Kill whatever the test's subprocess left behind (its own process group, nothing else)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow  # two CLI runs of 4 short epochs (~1-2 min on a busy 2-core machine)
def test_sigkill_mid_epoch_then_resume_continues_cleanly(tmp_path, ravdess_shards):
    epochs = 4
    config = tiny_toml(tmp_path, ravdess_shards, epochs=epochs)
    run = tmp_path / "run"
    proc = start(["train", "--config", str(config), "--run-dir", str(run)], tmp_path / "first.log")
    try:
        def mid_epoch_after_a_checkpoint():
            if not (run / "last.pt").exists():
                return False
            steps = scalar_steps(run, "train/loss")
            return bool(steps) and steps[-1] > STEPS_PER_EPOCH and steps[-1] % STEPS_PER_EPOCH != 0

        wait_for(mid_epoch_after_a_checkpoint, proc, tmp_path / "first.log", "a logged step after the first last.pt")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # last.pt at the kill moment is a whole checkpoint (written to .tmp, then renamed)
        killed_at = torch.load(run / "last.pt", weights_only=True)
        # the loader's worker processes notice their owner is gone and end (they would linger forever otherwise)
        leftovers = wait_until_gone(proc.pid)
        assert not leftovers, [_cmdline(p) for p in leftovers]
    finally:
        end_session(proc)
    saved_step = killed_at["step"]
    assert saved_step % STEPS_PER_EPOCH == 0 and 0 < saved_step < epochs * STEPS_PER_EPOCH
    first_events = sorted(run.glob("events.out.tfevents.*"))
    assert len(first_events) == 1
    orphans = [s for s in raw_scalar_steps(first_events[0], "train/loss") if s > saved_step]
    assert orphans  # the killed run logged steps past its checkpoint: what the resume must not duplicate

    resumed = start(["train", "--resume", "--run-dir", str(run)], tmp_path / "resume.log")
    try:
        assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        end_session(resumed)
    log = (tmp_path / "resume.log").read_text()
    assert f"resumed {run / 'last.pt'} at epoch {killed_at['epoch']}, step {saved_step}" in " ".join(log.split())

    total = epochs * STEPS_PER_EPOCH
    final = ckpt.load_checkpoint(run / "last.pt")
    assert final["step"] == total and final["epoch"] == epochs and final["bad_steps"] == 0
    # AdamW's own step count went on from the checkpoint's: the optimizer state was restored, not restarted.
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {total}
    # The curves: every step once, in order, after TensorBoard dropped the killed run's orphaned events.
    assert scalar_steps(run, "train/loss") == list(range(1, total + 1))
    assert scalar_steps(run, "val/ua") == [STEPS_PER_EPOCH * (e + 1) for e in range(epochs)]


@pytest.mark.slow  # a 2-rank gloo run started, then one rank killed (~1 min on a busy 2-core machine)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the rank processes through /proc")
def test_a_killed_rank_stops_the_group_in_bounded_time(tmp_path, ravdess_shards):
    config = tiny_toml(tmp_path, ravdess_shards, epochs=50)  # far longer than the test waits
    run = tmp_path / "run"
    log = tmp_path / "ranks.log"
    proc = start(["train", "--config", str(config), "--run-dir", str(run), "--procs", "2"], log)
    try:
        wait_for(lambda: len(scalar_steps(run, "train/loss")) >= 2, proc, log, "two logged DDP steps")
        ranks = [pid for pid in session_pids(proc.pid) if _parent(pid) == proc.pid and "spawn_main" in _cmdline(pid)]
        assert len(ranks) == 2, [(_cmdline(p), _parent(p)) for p in session_pids(proc.pid)]
        victim = max(ranks)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        returncode = proc.wait(timeout=120)  # raises TimeoutExpired if the group hangs
        took = time.monotonic() - killed
        # nothing of the run lingers: the other rank and every loader worker are gone too
        leftovers = wait_until_gone(proc.pid)
    finally:
        end_session(proc)
    text = " ".join(log.read_text().split())
    assert returncode == 1, text[-2000:]
    assert re.search(r"error: rank \d failed: killed by SIGKILL \(exit code -9, pid \d+\); the other 1 rank\(s\) were stopped", text), text[-2000:]
    assert took < 120 and not leftovers, (took, [_cmdline(p) for p in leftovers])


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, …"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _state(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[0] if fields else "?"


def _parent(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
