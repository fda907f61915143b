"""Shared fixtures: tiny synthetic raw trees and the shards packed from them, built once per session
in a temp folder. Sizes are chosen for a 2-core CPU machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MELD_CSV_DIR = Path(os.environ.get("AVDALI_MELD_CSV_DIR") or next(
    (p / "shared" / "datasets" / "meld" for p in REPO.parents if (p / "shared" / "datasets" / "meld" / "train_sent_emo.csv").exists()),
    REPO.parent / "shared" / "datasets" / "meld",
))
"""The real MELD label CSVs: AVDALI_MELD_CSV_DIR, else shared/ beside the clone (CI) or further up (a worktree)."""

# One actor from each of the 5 folds (DATASETS.md), so every fold has shards.
TINY_ACTORS = (2, 3, 10, 8, 1)


@pytest.fixture(scope="session")
def meld_csv_dir() -> Path:
    if not (MELD_CSV_DIR / "train_sent_emo.csv").exists():
        pytest.skip(f"real MELD CSVs not found at {MELD_CSV_DIR}")
    return MELD_CSV_DIR


@pytest.fixture(scope="session")
def ravdess_src(tmp_path_factory) -> Path:
    """A RAVDESS-like raw tree: 5 actors (one per fold), 4 speech trials each, small frames."""
    from avdali.synth.ravdess import make_ravdess

    root = tmp_path_factory.mktemp("ravdess_raw")
    make_ravdess(root, actors=TINY_ACTORS, size=(256, 144), trials_per_actor=4, seed=0)
    return root


@pytest.fixture(scope="session")
def meld_src(tmp_path_factory, meld_csv_dir) -> Path:
    """A MELD-like raw tree driven by the real CSVs: a stratified handful of rows per split."""
    from avdali.synth.meld import make_meld

    root = tmp_path_factory.mktemp("meld_raw")
    make_meld(root, csv_dir=meld_csv_dir, limit=6, size=(256, 144), max_seconds=3.0, seed=0)
    return root


def _pack(dataset: str, src: Path, out: Path, **options) -> Path:
    from avdali.packing.run import pack
    from avdali.shardformat.options import PackOptions

    pack(dataset, src, out, PackOptions(size=128, fps=15, max_seconds=4.0, shard_size=4, workers=2, **options))
    return out


@pytest.fixture(scope="session")
def ravdess_shards(tmp_path_factory, ravdess_src) -> Path:
    """Shards packed from ``ravdess_src`` (shard size 4, 128x128 at 15 fps)."""
    return _pack("ravdess", ravdess_src, tmp_path_factory.mktemp("ravdess_shards"))


@pytest.fixture(scope="session")
def meld_shards(tmp_path_factory, meld_src) -> Path:
    """Shards packed from ``meld_src``."""
    return _pack("meld", meld_src, tmp_path_factory.mktemp("meld_shards"))


@pytest.fixture(scope="session")
def meld_partial_src(tmp_path_factory, meld_csv_dir) -> Path:
    """A small MELD-like tree with one clip each lacking audio, lacking video, with black video, and with black video
    and no audio (``make_meld(partial=True)``)."""
    from avdali.synth.meld import make_meld

    root = tmp_path_factory.mktemp("meld_partial_raw")
    make_meld(root, csv_dir=meld_csv_dir, limit=4, size=(256, 144), max_seconds=2.5, seed=0, partial=True)
    return root


@pytest.fixture(scope="session")
def meld_partial_shards(tmp_path_factory, meld_partial_src) -> Path:
    """``meld_partial_src`` packed with ``--keep-partial``."""
    return _pack("meld", meld_partial_src, tmp_path_factory.mktemp("meld_partial_shards"), keep_partial=True)


def tiny_run_toml(
    shards,
    *,
    loader: str = "torch",
    batch_size: int = 2,
    data_extra: str = "",
    freeze_backbone: bool = True,
    train: str = 'device = "cpu"\nepochs = 1\nlog_every = 1',
) -> str:
    """A run config small enough for a few CPU steps on the fixture shards (2 frames of 32², a 16-wide model)."""
    return f"""
[data]
shards = "{shards}"
loader = "{loader}"
batch_size = {batch_size}
frames = 2
crop = 32
n_mels = 16
num_threads = 1
{data_extra}
[model]
audio_dim = 16
audio_conv_channels = [8]
audio_heads = 2
audio_layers = 1
audio_ff_dim = 16
video_dim = 16
fusion_heads = 2
fusion_ff_dim = 16
freeze_backbone = {str(freeze_backbone).lower()}
[train]
{train}
"""


def _as_older_format(src: Path, out: Path, version: int, rewrite) -> Path:
    """``src``'s shards as an older avdali wrote them: each tar's samples passed through ``rewrite`` (samples →
    samples), tars re-hashed in the manifest, ``format_version`` set and what format 3 added left out: ``shuffle_seed``
    and the per-shard ``frames`` / ``audio_samples`` totals."""
    from avdali.packing.writer import write_shard
    from avdali.shardformat.manifest import read_manifest, write_manifest
    from avdali.shardformat.members import read_members

    manifest = read_manifest(src)
    for entry in manifest.shards:
        samples: list[dict] = []
        for key, ext, data in read_members(src / entry.name):
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = data
        shard = write_shard(out, entry.name, rewrite(samples))
        entry.keys, entry.sha256, entry.bytes = shard.keys, shard.sha256, shard.bytes
        entry.frames = entry.audio_samples = None  # per-shard totals came with format 3
    manifest.format_version = version
    del manifest.options["shuffle_seed"]
    write_manifest(out, manifest)
    return out


@pytest.fixture(scope="session")
def ravdess_shards_v1(tmp_path_factory, ravdess_shards) -> Path:
    """``ravdess_shards`` rewritten as format 1 (before ``--keep-partial``): 16-byte ``meta.i32`` without
    ``streams``, ``format_version`` 1, no ``shuffle_seed``. Readers must take it as all streams real. The tars keep
    their sample order, so only the format tells a resume that they are not the shards it would write."""
    from avdali import shardformat as fmt
    from avdali.shardformat.members import decode_meta_i32

    def without_streams(samples: list[dict]) -> list[dict]:
        for sample in samples:
            assert decode_meta_i32(sample["meta.i32"])["streams"] == fmt.STREAMS_ALL
            sample["meta.i32"] = sample["meta.i32"][: 4 * len(fmt.META_FIELDS_V1)]
        return samples

    return _as_older_format(ravdess_shards, tmp_path_factory.mktemp("ravdess_shards_v1"), 1, without_streams)


@pytest.fixture(scope="session")
def ravdess_shards_v2(tmp_path_factory, ravdess_shards) -> Path:
    """``ravdess_shards`` as format 2 wrote it (before pack-time shuffling): each tar's samples in file-name order,
    ``format_version`` 2, no ``shuffle_seed`` in the options (the fixture has one shard per fold, so this is exactly
    the old plan)."""

    def in_name_order(samples: list[dict]) -> list[dict]:
        return sorted(samples, key=lambda sample: sample["__key__"])

    return _as_older_format(ravdess_shards, tmp_path_factory.mktemp("ravdess_shards_v2"), 2, in_name_order)


def graph_ops(*outputs) -> list[tuple[str, str]]:
    """(schema name, device) of every operator upstream of traced ``outputs`` (DALI's private graph objects)."""
    seen, stack = {}, list(outputs)
    while stack:
        op = stack.pop().source
        if op is None or op.id in seen:
            continue
        seen[op.id] = (getattr(op._op, "schema_name", None) or type(op._op).__name__, op._op.device)
        stack += list(op.inputs)
    return list(seen.values())
