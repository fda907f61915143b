"""Shard discovery for the loaders: manifest splits, idx parsing, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from avdali.data.shards import list_splits, probe_frame_size, resolve
from avdali.errors import AvdaliError
from avdali.shardformat.index import read_index
from avdali.shardformat.manifest import read_manifest


def test_list_splits_matches_manifest(ravdess_shards):
    splits = list_splits(ravdess_shards)
    manifest = read_manifest(ravdess_shards)
    assert splits == {name: s.samples for name, s in manifest.splits.items()}
    assert set(splits) == {f"fold{i}" for i in range(1, 6)}


def test_resolve_orders_samples_and_reads_offsets(ravdess_shards):
    shardset = resolve(ravdess_shards, ["fold2", "fold1"])
    manifest = read_manifest(ravdess_shards)
    expected = [k for split in ("fold2", "fold1") for e in manifest.shards if e.split == split for k in e.keys]
    assert [k for f in shardset.files for k in f.keys] == expected
    assert shardset.num_samples == len(expected)
    assert [f.first for f in shardset.files] == [sum(g.count for g in shardset.files[:i]) for i in range(len(shardset.files))]
    # the webm offsets point at the webm bytes: a tar member's data starts on a 512-byte block
    for f in shardset.files:
        with open(f.tar, "rb") as fh:
            fh.seek(f.video_offsets[0])
            assert fh.read(4) == b"\x1a\x45\xdf\xa3"  # EBML magic of a WebM file
    assert probe_frame_size(shardset) == (128, 128)


def test_missing_split_and_manifest_errors(ravdess_shards, tmp_path):
    with pytest.raises(AvdaliError, match="no split 'fold9'.*fold1"):
        resolve(ravdess_shards, ["fold9"])
    with pytest.raises(AvdaliError, match="no manifest"):
        list_splits(tmp_path)


def test_missing_index_is_named(ravdess_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ravdess_shards, copy)
    idx = sorted(copy.glob("*fold1*.idx"))[0]
    idx.unlink()
    with pytest.raises(AvdaliError, match=f"{idx.name}: index missing"):
        resolve(copy, ["fold1"])


def test_incomplete_manifest_is_refused(ravdess_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ravdess_shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AvdaliError, match="not complete"):
        resolve(copy, ["fold1"])


def test_read_index_rejects_garbage(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_text("hello\n")
    with pytest.raises(AvdaliError, match="x.idx: not a DALI webdataset index"):
        read_index(bad)
