"""``avdali inspect``: a good folder passes; each kind of damage is found and names the shard."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.errors import AvdaliError
from avdali.packing.writer import dumps_json, write_shard
from avdali.shardformat.inspect import inspect_shards
from avdali.shardformat.manifest import read_manifest, write_manifest
from avdali.shardformat.members import decode_meta_i32, encode_meta_i32

runner = CliRunner()


@pytest.fixture
def shards(ravdess_shards, tmp_path) -> Path:
    """A private copy of the packed RAVDESS fixture, free to damage."""
    out = tmp_path / "shards"
    shutil.copytree(ravdess_shards, out)
    return out


def test_good_folder_passes_and_prints_the_label_table(shards):
    result = runner.invoke(app, ["inspect", str(shards), "--decode", "2"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(shards)
    assert "every shard matches the manifest" in result.output
    for split in manifest.splits:
        assert split in result.output
    report = inspect_shards(shards, decode_per_split=2)
    assert report.ok and report.decoded == 2 * len(manifest.splits)
    assert {k: sum(v.values()) for k, v in report.labels.items()} == {k: v.samples for k, v in manifest.splits.items()}


def _first(shards: Path):
    return read_manifest(shards).shards[0]


def test_flipped_byte_is_a_sha_mismatch(shards):
    shard = _first(shards)
    data = bytearray((shards / shard.name).read_bytes())
    data[-2000] ^= 0xFF  # inside the last member's data or padding: the tar still parses
    (shards / shard.name).write_bytes(bytes(data))
    report = inspect_shards(shards, decode_per_split=0)
    assert f"{shard.name}: sha256 differs from the manifest" in report.problems
    result = runner.invoke(app, ["inspect", str(shards), "--decode", "0"])
    assert result.exit_code == 1 and shard.name in result.output


def test_wrong_or_missing_index_and_missing_tar(shards):
    manifest = read_manifest(shards)
    a, b, c = manifest.shards[0], manifest.shards[1], manifest.shards[2]
    idx = (shards / a.index_name).read_text().replace(" 512 ", " 1024 ", 1)
    (shards / a.index_name).write_text(idx)
    (shards / b.index_name).unlink()
    (shards / c.name).unlink()
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert f"{a.index_name}: does not match {a.name} (offsets/sizes/names differ)" in problems
    assert f"{b.index_name}: missing" in problems
    assert f"{c.name}: missing" in problems


def test_incomplete_manifest_is_reported(shards):
    manifest = read_manifest(shards)
    manifest.complete = False
    write_manifest(shards, manifest)
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert len(problems) == 1 and "not complete" in problems[0] and "resume" in problems[0]


def test_frame_count_lie_is_found_by_decoding(shards):
    """A shard whose meta.i32/json claim one frame more than the webm holds: consistent on paper, so only the
    decode check can see it."""
    manifest = read_manifest(shards)
    entry = manifest.shards[0]
    with tarfile.open(shards / entry.name) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: dict[str, dict] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        samples.setdefault(key, {"__key__": key})[ext] = data
    first = samples[entry.keys[0]]
    nums = decode_meta_i32(first["meta.i32"])
    nums["frames"] += 1
    first["meta.i32"] = encode_meta_i32(nums)
    meta = json.loads(first["json"])
    meta["frames"] += 1
    first["json"] = dumps_json(meta)
    written = write_shard(shards, entry.name, [samples[k] for k in entry.keys])
    entry.sha256, entry.bytes = written.sha256, written.bytes
    write_manifest(shards, manifest)
    problems = inspect_shards(shards, decode_per_split=100).problems
    assert problems == [
        f"{entry.name}: {entry.keys[0]}: webm decodes to {nums['frames'] - 1} frames, meta.i32 says {nums['frames']}"
    ]


def test_label_disagreement_is_found(shards):
    manifest = read_manifest(shards)
    entry = manifest.shards[0]
    with tarfile.open(shards / entry.name) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: dict[str, dict] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        samples.setdefault(key, {"__key__": key})[ext] = data
    key = entry.keys[0]
    samples[key]["cls"] = str((int(samples[key]["cls"]) + 1) % 7).encode()
    written = write_shard(shards, entry.name, [samples[k] for k in entry.keys])
    entry.sha256, entry.bytes = written.sha256, written.bytes
    write_manifest(shards, manifest)
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert any(p.startswith(f"{entry.name}: {key}: cls") and "disagree" in p for p in problems)
    assert any(f"labels of split {entry.split} differ" in p for p in problems)


def test_truncated_tar_is_reported_not_crashed(shards):
    entry = _first(shards)
    data = (shards / entry.name).read_bytes()
    (shards / entry.name).write_bytes(data[: len(data) // 2])
    problems = inspect_shards(shards, decode_per_split=0).problems
    assert any(p.startswith(f"{entry.name}: unreadable tar") for p in problems)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["shards"][0].update(name="../../etc/passwd"), "is not a shard name"),
        (lambda d: d["shards"][0].update(samples=10**12), "keys does not list"),
        (lambda d: d["shards"][0].update(bytes=-1), "bytes is not a count"),
        (lambda d: d.update(format_version=99), "format version 99"),
        (lambda d: d.update(shards="all"), "shards is not a list"),
    ],
)
def test_crafted_manifest_is_a_one_line_error(shards, edit, message):
    path = shards / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(AvdaliError, match=message):
        read_manifest(shards)
    result = runner.invoke(app, ["inspect", str(shards)])
    assert result.exit_code == 1 and "manifest.json" in result.output and "Traceback" not in result.output


def test_not_a_shard_folder(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 1 and "no manifest" in result.output
