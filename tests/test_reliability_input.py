"""Reliability, packing and bad input: a pack SIGKILLed at random moments never leaves a partial file
under a final name and resumes to the uninterrupted bytes; every bad config, flag or shard folder is a one-line
error with a non-zero exit that writes nothing over what was there.

Covered elsewhere (not repeated here): Ctrl-C + SIGKILL of a real ``avdali shard`` at shard boundaries
(``test_shard_cli.py::test_ctrl_c_and_sigkill_then_resume_gives_the_uninterrupted_bytes``), ``--procs 0`` /
``--gpus 4`` / ``--device cuda`` messages (``test_train_cli.py``), every config key/type/range message
(``test_config.py::test_bad_overrides_name_the_key_and_choices``, ``::test_file_errors_name_the_file``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from avdali import labels
from avdali.cli.app import app
from avdali.files import TMP_SUFFIX, file_sha256
from avdali.folder_lock import LOCK_NAME
from avdali.packing.run import pack_scan
from avdali.shardformat.index import tar_index
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.options import PackOptions
from avdali.sources.records import ClipRecord, Scan
from conftest import tiny_run_toml

runner = CliRunner()


# --- packing killed with SIGKILL at random moments ----------------------------------------------------

KILL_SPLITS = ("fold1", "fold2")
KILL_CLIPS_PER_SPLIT = 4
KILL_SHARD_SIZE = 1
KILL_CLIP_MB = 16
"""Large fake clips and no transcode time: most of a pack is then spent writing, hashing and indexing shards,
so random kills often land inside a write (a non-atomic writer fails this test for most seeds)."""
KILLS_PER_RUN = 6
"""SIGKILLs per seed, each of a resumed run, before the final uninterrupted resume."""


def big_transcode(path: Path, options: PackOptions, clip_mb: int = KILL_CLIP_MB):
    """A deterministic stand-in for transcode_clip whose webm is ``clip_mb`` MB, derived from the file name."""
    seed = hashlib.sha256(path.name.encode()).digest()
    block = hashlib.sha256(seed + b"webm").digest() * 32768  # 1 MiB
    return SimpleNamespace(
        webm=block * clip_mb + seed, flac=block + seed, frames=20 + len(path.name) % 5, fps=options.fps,
        audio_samples=16_000, duration_s=1.3, face="detected", face_box=[1, 2, 30], source=None, detect_s=0.0,
    )  # fmt: skip


def kill_scan(src: Path) -> Scan:
    records = [
        ClipRecord(
            key=f"{split}-{i:02d}", dataset="ravdess", split=split, video_path=src / f"{split}-{i:02d}.mp4",
            label=i % 7, native_label=labels.NATIVE_RAVDESS[i % 8], meta={"actor": i + 1},
        )
        for split in KILL_SPLITS
        for i in range(KILL_CLIPS_PER_SPLIT)
    ]  # fmt: skip
    return Scan(records, [])


def kill_pack(out: Path, clip_mb: int = KILL_CLIP_MB):
    """The pack the SIGKILL tests run (in a forked child when it is to be killed)."""
    options = PackOptions(shard_size=KILL_SHARD_SIZE, workers=1)
    transcode = functools.partial(big_transcode, clip_mb=clip_mb)
    return pack_scan(kill_scan(out.parent / "src"), "ravdess", out.parent / "src", out, options, transcode=transcode)


class DyingFile:
    """A file open for writing whose ``write`` number ``die_at`` (counted over all files the pack opens) writes half
    of its data and SIGKILLs the process: a kill in the middle of writing that file."""

    written = 0

    def __init__(self, file, die_at: int | None):
        self.file, self.die_at = file, die_at

    def write(self, data) -> int:
        DyingFile.written += 1
        if DyingFile.written == self.die_at:
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.file, name)


def pack_dying_in_write(out: Path, die_at: int | None) -> int:
    """``kill_pack(out, clip_mb=1)`` with every file it opens for writing under ``out`` wrapped in a DyingFile; returns how many
    writes it made (when ``die_at`` is None or past the last one)."""
    import builtins

    real_open = builtins.open

    def dying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return DyingFile(f, die_at) if "w" in mode and Path(file).parent == out else f

    builtins.open = dying_open
    try:
        kill_pack(out, clip_mb=1)
    finally:
        builtins.open = real_open
    return DyingFile.written


def killed_pack(out: Path, delay_s: float) -> None:
    """Run ``kill_pack(out)`` in a forked child (this process's imports already done, so the pack starts at once) and
    SIGKILL it after ``delay_s``: no cleanup, no ``finally``, like ``kill -9`` or the OOM killer."""
    child = multiprocessing.get_context("fork").Process(target=kill_pack, args=(out,))
    child.start()
    time.sleep(delay_s)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert child.exitcode in (-signal.SIGKILL, 0), child.exitcode  # 0: it finished before the kill


def assert_consistent_at_kill(out: Path, reference: dict[str, bytes]) -> set[str]:
    """What a SIGKILL left: every file under a final name is complete: each tar has its index beside it, equal to
    what its members give, and is byte-identical to the uninterrupted run's; the manifest (when there is one) reads
    back and vouches only for finished shards. Returns the shards the manifest lists."""
    names = {p.name for p in out.iterdir()}
    for name in sorted(n for n in names if n.endswith(".tar")):
        idx = name[: -len(".tar")] + ".idx"
        assert idx in names, f"{name} is under its final name without its index"
        assert (out / idx).read_bytes() == tar_index(out / name).encode(), f"{idx} does not match {name}"
        assert (out / name).read_bytes() == reference[name], f"{name} differs from the uninterrupted run"
    for name in sorted(n for n in names if n.endswith(".idx")):
        # the index is renamed into place just before its tar: an index may wait for its tar, never be half written
        assert (out / name).read_bytes() == reference[name], f"{name} differs from the uninterrupted run"
    # a killed packer leaves its folder lock behind (the next run takes it over); nothing else may stray
    allowed = set(reference) | {n + TMP_SUFFIX for n in reference} | {LOCK_NAME}
    assert names <= allowed, f"stray files {names - allowed}"
    if "manifest.json" not in names:
        return set()
    manifest = read_manifest(out)
    assert not manifest.complete or manifest.to_json() == reference["manifest.json"]
    for shard in manifest.shards:
        assert shard.name in names and shard.index_name in names
        assert file_sha256(out / shard.name) == shard.sha256
    return {s.name for s in manifest.shards}


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory) -> tuple[dict[str, bytes], float]:
    """The uninterrupted pack's files, and how long the pack took (to spread kill times over it)."""
    out = tmp_path_factory.mktemp("kill_reference") / "out"
    start = time.perf_counter()
    kill_pack(out)
    seconds = time.perf_counter() - start
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len([n for n in files if n.endswith(".tar")]) == len(KILL_SPLITS) * KILL_CLIPS_PER_SPLIT // KILL_SHARD_SIZE
    return files, seconds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_bytes(tmp_path, kill_reference, seed):
    reference, pack_seconds = kill_reference
    shards_total = sum(1 for n in reference if n.endswith(".tar"))
    rng = random.Random(seed)
    out = tmp_path / "out"
    vouched: set[str] = set()
    for _ in range(KILLS_PER_RUN):  # killed, resumed and killed again, ..., then finished
        left = 1 - len(vouched) / shards_total  # a resumed run only redoes what the manifest does not vouch for
        killed_pack(out, rng.uniform(0.0, 1.0) * pack_seconds * max(left, 0.1))
        vouched = assert_consistent_at_kill(out, reference)
    kept = {name: os.stat(out / name) for name in vouched}
    result = kill_pack(out)
    assert result.shards_kept == len(kept)
    for name, st in kept.items():  # finished shards are kept as they are, not rewritten
        assert (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == reference


def test_sigkill_inside_every_write_then_resume(tmp_path):
    """The deterministic complement of the random kills: one run per write the pack makes, killed halfway through
    that write (the small manifest writes too, which random kills rarely hit)."""
    kill_pack(tmp_path / "ref" / "out", clip_mb=1)
    reference = {p.name: p.read_bytes() for p in sorted((tmp_path / "ref" / "out").iterdir())}
    DyingFile.written = 0
    writes = pack_dying_in_write(tmp_path / "count" / "out", None)
    assert writes >= 2 * len([n for n in reference if n.endswith(".tar")]) + 2  # tar + idx per shard, manifests
    for die_at in range(1, writes + 1):
        out = tmp_path / f"die{die_at}" / "out"
        out.parent.mkdir()
        DyingFile.written = 0
        child = multiprocessing.get_context("fork").Process(target=pack_dying_in_write, args=(out, die_at))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == -signal.SIGKILL, f"write {die_at}: the child was not killed ({child.exitcode})"
        assert_consistent_at_kill(out, reference)
        kill_pack(out, clip_mb=1)
        assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == reference, f"killed in write {die_at}"
        shutil.rmtree(out.parent)


# --- bad input: one line, non-zero exit, nothing written over -------------------------------------------


def folder_state(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name → bytes): compared before and after a failing command."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def edited_copy(src: Path, dest: Path, edit) -> Path:
    """A copy of a shard folder whose manifest.json went through ``edit(dict)``."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def not_json_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    (dest / "manifest.json").write_text("{")
    return dest


def _no_shards(d: dict) -> None:
    d.update(shards=[], splits={}, labels={}, complete=True)


SHARD_FOLDERS = {
    "missing": (lambda src, dest: dest, "manifest.json: no manifest"),
    "empty": (lambda src, dest: dest.mkdir() or dest, "manifest.json: no manifest (is"),
    "format_version": (
        lambda src, dest: edited_copy(src, dest, lambda d: d.update(format_version=4)),
        "manifest.json: shard format version 4, this avdali reads 1, 2 or 3; re-pack with `avdali shard`",
    ),
    "not_json": (lambda src, dest: not_json_copy(src, dest), "manifest.json: not valid JSON"),
    "incomplete": (lambda src, dest: edited_copy(src, dest, lambda d: d.update(complete=False)), "packing is not complete"),
    "no_shards": (lambda src, dest: edited_copy(src, dest, _no_shards), "lists no shards"),
}
"""Broken shard folders → what the error says (``avdali inspect`` words some of them as findings)."""


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder that already holds something a failing command must not touch."""
    path = tmp_path / "run"
    path.mkdir()
    (path / "notes.txt").write_text("an earlier run's notes\n")
    (path / "config.toml").write_text("# an earlier run's config\n")
    return path


def train_cli(tmp_path: Path, run_dir: Path, shards, *args: str, extra_data: str = "", text: str | None = None):
    config = tmp_path / "tiny.toml"
    config.write_text(text if text is not None else tiny_run_toml(shards, data_extra=extra_data))
    before = folder_state(run_dir), folder_state(Path(shards)) if Path(shards).is_dir() else {}
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(run_dir), *args])
    after = folder_state(run_dir), folder_state(Path(shards)) if Path(shards).is_dir() else {}
    assert after == before, "a failing `avdali train` changed the run folder or the shards"
    return result


def assert_one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]


BAD_CONFIGS = {
    "unknown_key": ("batch_sise = 4", "tiny.toml: unknown key data.batch_sise; valid keys of [data]: shards, loader"),
    "wrong_type": ('label_space = 7', "tiny.toml: data.label_space must be a string, got 7"),
    "negative_batch": ("batch_size = -2", "tiny.toml: data.batch_size must be ≥ 1, got -2"),
    "crop_too_large": ("crop = 256", "data.crop 256 is larger than the 128x128 frames stored in"),
    "other_dataset": ('dataset = "meld"', "data.dataset is 'meld' but"),
    "bad_dataset_name": ('dataset = "iemocap"', "data.dataset must be one of '', 'ravdess', 'meld'; got 'iemocap'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_train_bad_config_values(tmp_path, run_dir, ravdess_shards, case):
    extra, message = BAD_CONFIGS[case]
    # [data] lists crop/batch_size already: a repeated key is a TOML error, so the bad value replaces the good one
    text = tiny_run_toml(ravdess_shards)
    key = extra.split("=")[0].strip()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} ")).replace("[model]", f"{extra}\n[model]")
    assert_one_line_error(train_cli(tmp_path, run_dir, ravdess_shards, text=text), message)


def test_train_config_not_toml(tmp_path, run_dir, ravdess_shards):
    result = train_cli(tmp_path, run_dir, ravdess_shards, text="this is {not toml\n")
    assert_one_line_error(result, "tiny.toml: not valid TOML")


def test_train_label_space_not_in_the_shards(tmp_path, run_dir, ravdess_shards):
    meld_like = edited_copy(ravdess_shards, tmp_path / "meld_like", lambda d: d.update(dataset="meld"))
    result = train_cli(tmp_path, run_dir, meld_like, "--set", "data.label_space=ravdess8")
    assert_one_line_error(result, "data.label_space 'ravdess8' needs RAVDESS shards")
    result = train_cli(tmp_path, run_dir, meld_like, "--set", "data.dataset=ravdess")
    assert_one_line_error(result, f"data.dataset is 'ravdess' but {meld_like} holds meld shards")


@pytest.mark.parametrize("case", sorted(SHARD_FOLDERS))
def test_train_bad_shard_folder(tmp_path, run_dir, ravdess_shards, case):
    make, message = SHARD_FOLDERS[case]
    shards = make(ravdess_shards, tmp_path / "shards")
    assert_one_line_error(train_cli(tmp_path, run_dir, shards), message)


@pytest.mark.parametrize("case", sorted(SHARD_FOLDERS))
def test_inspect_bad_shard_folder(tmp_path, ravdess_shards, case):
    make, message = SHARD_FOLDERS[case]
    shards = make(ravdess_shards, tmp_path / "shards")
    before = folder_state(shards) if shards.is_dir() else None
    result = runner.invoke(app, ["inspect", str(shards), "--decode", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    if case in ("incomplete", "no_shards"):  # a readable manifest: inspect prints its table and lists the finding
        assert message.replace("packing is not complete", "not complete") in result.output
        assert result.output.strip().splitlines()[-1].startswith("error: ")
    else:
        assert_one_line_error(result, message)
    assert (folder_state(shards) if shards.is_dir() else None) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--procs", "0"], "--procs must be ≥ 1, got 0"),
        pytest.param(["--gpus", "4"], "--gpus 4: only", marks=pytest.mark.skipif(torch.cuda.device_count() >= 4, reason="4 GPUs here")),
        pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),  # fmt: skip
    ],
)
def test_train_impossible_ranks_write_nothing(tmp_path, run_dir, ravdess_shards, args, message):
    assert_one_line_error(train_cli(tmp_path, run_dir, ravdess_shards, *args), message)


def test_shard_into_a_folder_of_another_dataset_or_version_writes_nothing(tmp_path, ravdess_src, ravdess_shards):
    options = read_manifest(ravdess_shards).options
    args = ["--size", str(options["size"]), "--fps", str(options["fps"]), "--max-seconds", str(options["max_seconds"]),
            "--shard-size", str(options["shard_size"]), "--workers", "1"]  # fmt: skip
    for name, edit, message in [
        ("meld", lambda d: d.update(dataset="meld"), "holds meld shards, not ravdess; use a new OUT folder or --overwrite"),
        ("v4", lambda d: d.update(format_version=4), "shard format version 4, this avdali reads 1, 2 or 3"),
    ]:
        out = edited_copy(ravdess_shards, tmp_path / name, edit)
        before = folder_state(out)
        result = runner.invoke(app, ["shard", "ravdess", str(ravdess_src), str(out), *args])
        assert_one_line_error(result, message)
        assert folder_state(out) == before


def test_run_training_checks_the_shards_for_every_entry_point(tmp_path, run_dir, ravdess_shards):
    """cv, demo and bench train call run_training, not the CLI: the manifest check is theirs too, before any write."""
    from avdali.errors import ConfigError
    from avdali.train.config_toml import load_config
    from avdali.train.run import run_training

    config = tmp_path / "tiny.toml"
    config.write_text(tiny_run_toml(ravdess_shards))
    cfg = load_config(config, ["data.crop=256", f"train.run_dir={str(run_dir)!r}"])
    before = folder_state(run_dir)
    with pytest.raises(ConfigError, match=r"^data\.crop 256 is larger than the 128x128 frames stored in "):
        run_training(cfg)
    assert folder_state(run_dir) == before
