"""Shard writer, manifest and the resumable runner: unit tests with a fake transcode, then the shared
packed fixtures read back by webdataset, PyAV/soundfile and DALI's own reader and index script."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf

from avdali import labels
from avdali import shardformat as fmt
from avdali.errors import AvdaliError
from avdali.packing.run import PackFailed, pack, pack_scan, shuffled
from avdali.packing.writer import tar_bytes, write_shard
from avdali.shardformat.index import tar_index
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.members import decode_meta_i32, encode_meta_i32
from avdali.shardformat.options import PackOptions
from avdali.sources.records import ClipRecord, Scan, Skipped

EXTS = ["cls", "flac", "json", "meta.i32", "webm"]


# --- helpers ------------------------------------------------------------------------------------


class FakeClipError(Exception):
    """Named like transcode's ClipError: the runner records it as a skip with its message."""


FakeClipError.__name__ = "ClipError"


def fake_transcode(path: Path, options: PackOptions):
    """A deterministic stand-in for transcode_clip: bytes derived from the file name; 'bad' names fail."""
    if "bad" in path.name:
        raise FakeClipError("corrupt video: junk")
    digest = hashlib.sha256(path.name.encode()).digest()
    return SimpleNamespace(
        webm=digest * 8,
        flac=digest * 2,
        frames=len(path.name),
        fps=options.fps,
        audio_samples=100 + len(path.name),
        duration_s=1.25,
        face="detected" if len(path.name) % 2 else "centre",
        face_box=[1, 2, 30] if len(path.name) % 2 else None,
        source={"width": 320},
        detect_s=0.0,
    )


def fake_scan(src: Path, per_split: int = 5) -> Scan:
    records = []
    for split in ("fold1", "fold2"):
        for i in range(per_split):
            name = f"{split}-{i:02d}{'-bad' if i == 2 else ''}.mp4"
            records.append(
                ClipRecord(
                    key=f"{split}-{i:02d}",
                    dataset="ravdess",
                    split=split,
                    video_path=src / name,
                    label=i % 7,
                    native_label=labels.NATIVE_RAVDESS[i % 8],
                    meta={"actor": i + 1},
                )
            )
    return Scan(records, [Skipped("notes.txt", "not a RAVDESS name")])


def fake_pack(out: Path, progress=None, **opts) -> object:
    src = out.parent / "src"
    options = PackOptions(**{"shard_size": 2, "workers": 1, **opts})
    return pack_scan(fake_scan(src), "ravdess", src, out, options, progress, transcode=fake_transcode)


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def split_keys(manifest, split: str) -> list[str]:
    """A split's packed keys in stored order (shard by shard)."""
    return [k for s in manifest.shards if s.split == split for k in s.keys]


def read_tar(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


# --- writer ---------------------------------------------------------------------------------------


def _samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "__key__": f"k{i:02d}",
            "cls": b"3",
            "flac": rng.bytes(700 + 91 * i),
            "json": b"{}",
            "meta.i32": encode_meta_i32({"frames": 5, "label": 3, "native_label": 4, "audio_samples": 9}),
            "webm": rng.bytes(1500 + 333 * i),
        }
        for i in range(n)
    ]


def test_tar_is_deterministic_with_fixed_member_metadata():
    a, b = tar_bytes(_samples(3)), tar_bytes(_samples(3))
    assert a == b
    members = tarfile.open(fileobj=io.BytesIO(a)).getmembers()
    assert [m.name for m in members[:5]] == [f"k00.{e}" for e in EXTS]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_idx_equals_dali_index_creator(tmp_path):
    from wds2idx import IndexCreator

    shard = write_shard(tmp_path, "t-x-000000.tar", _samples(4))
    assert shard.samples == 4 and shard.keys == ["k00", "k01", "k02", "k03"]
    assert shard.sha256 == hashlib.sha256((tmp_path / shard.name).read_bytes()).hexdigest()
    IndexCreator(str(tmp_path / shard.name), str(tmp_path / "ref.idx"), verbose=False).create_index()
    assert (tmp_path / shard.index_name).read_bytes() == (tmp_path / "ref.idx").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_meta_i32_round_trip_and_length_check():
    values = {"frames": 60, "label": 6, "native_label": 7, "audio_samples": 64000}
    data = encode_meta_i32(values)
    assert np.frombuffer(data, "<i4").tolist() == [60, 6, 7, 64000, 3]  # streams: both real unless said
    assert decode_meta_i32(data) == {**values, "streams": 3}
    assert decode_meta_i32(encode_meta_i32({**values, "streams": 2}))["streams"] == 2
    # a format-1 vector (no streams) reads as both streams real
    assert decode_meta_i32(np.array([60, 6, 7, 64000], "<i4").tobytes()) == {**values, "streams": 3}
    with pytest.raises(ValueError):
        decode_meta_i32(data[:-1])
    with pytest.raises(ValueError, match="streams"):
        decode_meta_i32(np.array([60, 6, 7, 64000, 4], "<i4").tobytes())


# --- runner with a fake transcode ---------------------------------------------------------------


def test_plan_manifest_and_skips(tmp_path):
    result = fake_pack(tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.complete and manifest == result.manifest
    # 5 clips per split, shuffled with seed 0 (pinned here: the order is a function of the seed and the keys only, so
    # it is the same on every machine), in groups of 2 → 3 groups per split; clip 2 of each split failed, and in fold2
    # it is alone in the last group: that group writes no shard, its skip is still recorded
    assert [s.name for s in manifest.shards] == [f"ravdess-fold1-00000{i}.tar" for i in range(3)] + [
        f"ravdess-fold2-00000{i}.tar" for i in range(2)
    ]
    assert [s.keys for s in manifest.shards] == [
        ["fold1-01", "fold1-04"], ["fold1-03"], ["fold1-00"], ["fold2-03", "fold2-01"], ["fold2-00", "fold2-04"]
    ]
    assert manifest.shards[1].skipped == [{"key": "fold1-02", "source": "fold1-02-bad.mp4", "reason": "corrupt video: junk"}]
    assert {k: (v.samples, v.shards) for k, v in manifest.splits.items()} == {"fold1": (4, 3), "fold2": (4, 2)}
    assert manifest.skipped == [
        {"source": "fold1-02-bad.mp4", "reason": "corrupt video: junk"},
        {"source": "fold2-02-bad.mp4", "reason": "corrupt video: junk"},
        {"source": "notes.txt", "reason": "not a RAVDESS name"},
    ]
    expected_labels = dict.fromkeys(labels.UNIFIED, 0)
    for i in (0, 1, 3, 4):
        expected_labels[labels.UNIFIED[i]] += 2
    assert manifest.labels == expected_labels
    assert sum(manifest.faces.values()) == 8
    assert result.shards_written == 5 and result.clips_transcoded == 10
    assert manifest.options["shuffle_seed"] == 0  # recorded also at its default
    # sample contents
    members = {m.name: m for m in read_tar(tmp_path / "out" / manifest.shards[0].name)}
    with tarfile.open(tmp_path / "out" / manifest.shards[0].name) as tar:
        meta = json.loads(tar.extractfile(members["fold1-01.json"]).read())
        nums = decode_meta_i32(tar.extractfile(members["fold1-01.meta.i32"]).read())
        cls = tar.extractfile(members["fold1-01.cls"]).read()
    assert cls == b"1"
    assert meta["key"] == "fold1-01" and meta["split"] == "fold1" and meta["actor"] == 2
    assert meta["label_name"] == "happy" and meta["native_label"] == "calm" and meta["native_id"] == 1
    assert meta["source"] == "fold1-01.mp4"
    assert nums == {"frames": len("fold1-01.mp4"), "label": 1, "native_label": 1, "audio_samples": 112, "streams": 3}


def test_same_inputs_same_bytes(tmp_path):
    fake_pack(tmp_path / "a")
    fake_pack(tmp_path / "b")
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_shuffled_order_depends_on_the_seed_the_split_and_the_keys_only(tmp_path):
    fold1 = [r for r in fake_scan(tmp_path, per_split=20).records if r.split == "fold1"]
    order = [r.key for r in shuffled(fold1, 0, "fold1")]
    assert order == [r.key for r in shuffled(fold1[::-1], 0, "fold1")]  # not the scan order
    assert sorted(order) == [r.key for r in fold1] and order != sorted(order)
    for seed, split in ((1, "fold1"), (0, "fold2")):
        other = [r.key for r in shuffled(fold1, seed, split)]
        assert other != order and sorted(other) == sorted(order), (seed, split)


def test_another_seed_packs_the_same_clips_in_another_order(tmp_path):
    a = fake_pack(tmp_path / "a").manifest
    b = fake_pack(tmp_path / "b", shuffle_seed=7).manifest
    for split in ("fold1", "fold2"):
        assert split_keys(a, split) != split_keys(b, split)
        assert sorted(split_keys(a, split)) == sorted(split_keys(b, split))
    assert b.options["shuffle_seed"] == 7 and a.labels == b.labels and a.skipped == b.skipped


def ravdess_speech_stems(actor: int) -> list[str]:
    """Every speech trial of one actor as RAVDESS names it: 60 (neutral has one intensity, the 7 others two)."""
    return [
        f"01-01-{e:02d}-{i:02d}-{s:02d}-{r:02d}-{actor:02d}"
        for e in range(1, 9) for i in ((1,) if e == 1 else (1, 2)) for s in (1, 2) for r in (1, 2)
    ]  # fmt: skip


def test_every_shard_and_every_rank_gets_a_mix_of_emotions(tmp_path):
    """RAVDESS names start with the emotion: in file-name order each tar of a fold holds one emotion and a rank reading
    a third of the tars sees three; shuffled, every tar holds several and every third holds all eight, close to the
    fold's mix."""
    from avdali.sources import scan_ravdess

    src = tmp_path / "raw"
    for actor in (2, 5):  # both in fold1: 120 clips, 15 tars of 8
        for stem in ravdess_speech_stems(actor):
            path = src / f"Actor_{actor:02d}" / f"{stem}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    pack_scan(scan_ravdess(src), "ravdess", src, tmp_path / "out", PackOptions(shard_size=8, workers=1),
              transcode=fake_transcode)
    tars = [s.keys for s in read_manifest(tmp_path / "out").shards]
    keys = sorted(k for tar in tars for k in tar)
    in_name_order = [keys[i : i + 8] for i in range(0, len(keys), 8)]  # the plan before pack-time shuffling

    def mixed(tars: list[list[str]]) -> bool:
        emotions = [[key.split("-")[2] for key in tar] for tar in tars]
        thirds = [sum(emotions[i : i + 5], []) for i in range(0, 15, 5)]
        # a third holds 40 clips: 40 × 8/120 ≈ 2.7 neutral, 40 × 16/120 ≈ 5.3 of each other emotion
        close = all(1 <= third.count("01") <= 5 and all(2 <= third.count(f"{e:02d}") <= 9 for e in range(2, 9))
                    for third in thirds)
        return min(len(set(tar)) for tar in emotions) >= 4 and close

    assert len(tars) == 15 and sorted(keys) == sorted(ravdess_speech_stems(2) + ravdess_speech_stems(5))
    assert mixed(tars)
    assert not mixed(in_name_order)


class Stop(Exception):
    pass


def stop_after_shards(n: int):
    seen = []

    def progress(event):
        if event.kind == "shard" and not event.kept:
            seen.append(event.shard)
            if len(seen) == n:
                raise Stop

    return progress


def test_resume_keeps_finished_shards_and_ends_identical(tmp_path):
    fake_pack(tmp_path / "ref")
    out = tmp_path / "out"
    with pytest.raises(Stop):
        fake_pack(out, stop_after_shards(2))
    stopped = read_manifest(out)
    assert not stopped.complete and [s.name for s in stopped.shards] == ["ravdess-fold1-000000.tar", "ravdess-fold1-000001.tar"]
    (out / "ravdess-fold1-000002.tar.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    kept = {s.name: os.stat(out / s.name) for s in stopped.shards}
    events = []
    result = fake_pack(out, events.append)
    assert result.shards_kept == 2 and result.shards_written == 3 and result.clips_transcoded == 6
    for name, st in kept.items():
        now = os.stat(out / name)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert [e.shard for e in events if e.kind == "shard" and e.kept] == list(kept)
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")


def test_resume_redoes_a_damaged_shard_and_rebuilds_a_lost_index(tmp_path):
    out = tmp_path / "out"
    fake_pack(out)
    reference = folder_bytes(out)
    (out / "ravdess-fold2-000000.tar").write_bytes(b"damaged")
    (out / "ravdess-fold1-000000.idx").unlink()
    result = fake_pack(out)
    assert result.shards_kept == 4 and result.shards_written == 1
    assert folder_bytes(out) == reference


def test_other_options_refuse_to_resume_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    fake_pack(out)
    with pytest.raises(AvdaliError, match=r"other options \(fps 15.0 → 10.0\).*--overwrite"):
        fake_pack(out, fps=10.0)
    with pytest.raises(AvdaliError, match=r"other options \(shuffle_seed 0 → 1\).*--overwrite"):
        fake_pack(out, shuffle_seed=1)
    src = out.parent / "src"
    pack_scan(fake_scan(src), "ravdess", src, out, PackOptions(shard_size=5, workers=1), overwrite=True, transcode=fake_transcode)
    manifest = read_manifest(out)
    assert [s.name for s in manifest.shards] == ["ravdess-fold1-000000.tar", "ravdess-fold2-000000.tar"]
    # the old plan's files are gone; only the new plan's shards, their indexes and the manifest remain
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [n for s in manifest.shards for n in (s.name, s.index_name)]
    )


def test_corrupt_manifest_is_a_one_line_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(AvdaliError, match=r"manifest.json: not valid JSON.*--overwrite"):
        fake_pack(out)


def test_nothing_packable_and_strict_fail_after_writing_the_manifest(tmp_path):
    src = tmp_path / "src"
    only_bad = Scan([r for r in fake_scan(src).records if "bad" in r.video_path.name], [])
    with pytest.raises(PackFailed, match="no clip could be packed"):
        pack_scan(only_bad, "ravdess", src, tmp_path / "o1", PackOptions(workers=1), transcode=fake_transcode)
    assert read_manifest(tmp_path / "o1").complete
    with pytest.raises(PackFailed, match=r"3 sources skipped under --strict"):
        fake_pack(tmp_path / "o2", strict=True)


# --- real packs: the shared fixtures ------------------------------------------------------------


def decode_frames(webm: bytes) -> int:
    with av.open(io.BytesIO(webm)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9"
        return sum(1 for _ in container.decode(stream))


@pytest.mark.parametrize("fixture", ["ravdess_shards", "meld_shards"])
def test_webdataset_reads_every_sample(fixture, request):
    import webdataset as wds

    out = request.getfixturevalue(fixture)
    manifest = read_manifest(out)
    assert manifest.complete and manifest.samples > 0
    urls = [str(p) for p in manifest.shard_paths(out)]
    seen = []
    totals: dict[str, list[int]] = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        nums = decode_meta_i32(sample["meta.i32"])
        shard_total = totals.setdefault(Path(sample["__url__"]).name, [0, 0])
        shard_total[0] += nums["frames"]
        shard_total[1] += nums["audio_samples"]
        assert int(sample["cls"]) == meta["label"] == nums["label"]
        assert decode_frames(sample["webm"]) == nums["frames"] == meta["frames"] > 0
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="int16")
        assert rate == fmt.AUDIO_RATE and audio.ndim == 1 and len(audio) == nums["audio_samples"]
        assert meta["dataset"] == manifest.dataset and meta["key"] == sample["__key__"]
        seen.append(sample["__key__"])
    assert seen == [k for s in manifest.shards for k in s.keys]
    # the per-shard totals a decoded-frame cache is sized by are the sums of the samples' meta.i32
    assert {s.name: [s.frames, s.audio_samples] for s in manifest.shards} == totals
    # every source the reader found is either packed or listed as skipped
    split_totals = {k: v.samples for k, v in manifest.splits.items()}
    assert sum(split_totals.values()) == len(seen)


def test_ravdess_fixture_plan(ravdess_src, ravdess_shards):
    from avdali.sources import scan_ravdess

    scan = scan_ravdess(ravdess_src)
    manifest = read_manifest(ravdess_shards)
    packed = {k for s in manifest.shards for k in s.keys}
    skipped_sources = {s["source"] for s in manifest.skipped}
    for record in scan.records:
        assert record.key in packed or record.video_path.relative_to(ravdess_src).as_posix() in skipped_sources
    assert set(manifest.splits) == {"fold1", "fold2", "fold3", "fold4", "fold5"}
    for shard in manifest.shards:
        assert 1 <= shard.samples <= 4
    # each split's clips are stored in the order the recorded seed gives them
    assert manifest.options["shuffle_seed"] == 0
    for split in manifest.splits:
        planned = shuffled([r for r in scan.records if r.split == split], 0, split)
        assert split_keys(manifest, split) == [r.key for r in planned if r.key in packed]


@pytest.mark.parametrize("fixture", ["ravdess_shards", "meld_shards"])
def test_fixture_indexes_equal_index_creator(fixture, request, tmp_path):
    from wds2idx import IndexCreator

    out = request.getfixturevalue(fixture)
    for shard in read_manifest(out).shards:
        ref = tmp_path / "ref.idx"
        IndexCreator(str(out / shard.name), str(ref), verbose=False).create_index()
        assert (out / shard.index_name).read_bytes() == ref.read_bytes(), shard.name
        assert tar_index(out / shard.name).encode() == ref.read_bytes()


def test_dali_reader_with_our_indexes(ravdess_shards):
    from nvidia.dali import fn, pipeline_def, types

    manifest = read_manifest(ravdess_shards)
    paths = [str(p) for p in manifest.shard_paths(ravdess_shards)]
    index_paths = [str(ravdess_shards / s.index_name) for s in manifest.shards]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        video, audio, cls, nums = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=["webm", "flac", "cls", "meta.i32"],
            dtypes=[types.UINT8, types.UINT8, types.UINT8, types.INT32],
            missing_component_behavior="error",
            random_shuffle=False,
            name="reader",
        )
        frames = fn.decoders.video(video, device="cpu")
        return frames, cls, nums

    p = pipe()
    p.build()
    expected = [(int(labels_), frames) for s in manifest.shards for labels_, frames in _labels_frames(ravdess_shards / s.name)]
    got = []
    while len(got) < len(expected):
        frames, cls, nums = p.run()
        for i in range(len(cls)):
            label = int(bytes(np.array(cls[i])).decode())
            meta = np.array(nums[i])
            video = np.array(frames[i])
            assert video.shape[1:] == (128, 128, 3) and video.shape[0] == meta[0]
            assert meta[1] == label
            got.append((label, int(meta[0])))
    assert got[: len(expected)] == expected


def _labels_frames(tar_path: Path) -> list[tuple[int, int]]:
    with tarfile.open(tar_path) as tar:
        names = [m.name for m in tar.getmembers()]
        keys = sorted({n.split(".", 1)[0] for n in names}, key=lambda k: names.index(f"{k}.cls"))
        return [
            (int(tar.extractfile(f"{k}.cls").read()), decode_meta_i32(tar.extractfile(f"{k}.meta.i32").read())["frames"])
            for k in keys
        ]


@pytest.mark.slow
def test_real_pack_resumes_to_the_same_bytes(ravdess_src, ravdess_shards, tmp_path):
    """Stopped after the first shard and re-run: byte-identical to the fixture's uninterrupted pack
    (which also proves two real packs give the same bytes)."""
    out = tmp_path / "out"
    options = PackOptions(**read_manifest(ravdess_shards).options)
    with pytest.raises(Stop):
        pack("ravdess", ravdess_src, out, options, stop_after_shards(1))
    first = read_manifest(out).shards[0].name
    st = os.stat(out / first)
    result = pack("ravdess", ravdess_src, out, options)
    assert result.shards_kept == 1
    assert (os.stat(out / first).st_ino, os.stat(out / first).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert folder_bytes(out) == folder_bytes(ravdess_shards)


@pytest.mark.slow
def test_real_pack_twice_gives_the_same_sha256_for_every_file(ravdess_src, ravdess_shards, tmp_path):
    """A second, uninterrupted pack of the fixture's sources with its options: every tar, idx and manifest.json."""
    out = tmp_path / "again"
    pack("ravdess", ravdess_src, out, PackOptions(**read_manifest(ravdess_shards).options))

    def sha256s(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    assert {name.rsplit(".", 1)[1] for name in sha256s(out)} == {"tar", "idx", "json"}
    assert sha256s(out) == sha256s(ravdess_shards)


# --- older formats ------------------------------------------------------------------------------


def test_format2_folder_is_still_read_by_resolve_the_loaders_and_inspect(ravdess_shards_v2):
    """A folder packed before pack-time shuffling (format 2: clips in file-name order, no shuffle_seed)."""
    from typer.testing import CliRunner

    from avdali.cli.app import app
    from avdali.data.build import build_loader
    from avdali.data.config import DataConfig
    from avdali.data.shards import resolve
    from avdali.shardformat.inspect import inspect_shards

    out = ravdess_shards_v2
    manifest = read_manifest(out)
    assert manifest.format_version == 2 and "shuffle_seed" not in manifest.options
    assert all(s.keys == sorted(s.keys) for s in manifest.shards) and len(manifest.shards) == len(manifest.splits)
    shardset = resolve(out, ["fold1", "fold2"])
    assert [k for f in shardset.files for k in f.keys] == split_keys(manifest, "fold1") + split_keys(manifest, "fold2")
    cfg = DataConfig(shards=str(out), loader="torch", batch_size=2, frames=2, crop=32, n_mels=16, num_threads=1)
    batches = list(build_loader(cfg, ["fold1"], train=False))
    assert sum(int(b.valid.sum()) for b in batches) == manifest.splits["fold1"].samples
    report = inspect_shards(out, decode_per_split=1)
    assert report.ok, report.problems
    result = CliRunner().invoke(app, ["inspect", str(out), "--decode", "0"])
    assert result.exit_code == 0, result.output
    assert "format 2: each split's clips in file-name order" in " ".join(result.output.split())


@pytest.mark.parametrize("seed", [-1, True, "3", 2**63])
def test_a_manifest_seed_must_be_one_the_packer_writes(seed, tmp_path):
    out = tmp_path / "out"
    fake_pack(out)
    d = json.loads((out / "manifest.json").read_text())
    d["options"]["shuffle_seed"] = seed
    (out / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(AvdaliError, match="options are not ones `avdali shard` writes \\(--seed must be an integer"):
        read_manifest(out)


# --- bad inputs, packed for real --------------------------------------------------------------------


def write_mp4(path: Path, *, video: bool = True, audio: bool = True, seconds: float = 0.6) -> Path:
    """A tiny H.264/AAC mp4 (160x128, 30 fps) like the datasets' files, or one without a stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"}) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 160, 128, "yuv420p"
        aus = out.add_stream("aac", rate=48_000, layout="mono") if audio else None
        if vs is not None:
            for i in range(round(seconds * 30)):
                img = np.full((128, 160, 3), (i * 9) % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if aus is not None:
            total = round(seconds * 48_000)
            tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(total) / 48_000)).astype(np.float32)[None]
            for start in range(0, total, 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono")
                frame.sample_rate = 48_000
                frame.pts = start
                out.mux(aus.encode(frame))
            out.mux(aus.encode(None))
    return path


def make_bad_ravdess(root: Path, with_good: bool = True) -> dict[str, str]:
    """An Actor_01 folder with one good clip and one of every kind of bad file; returns source → expected
    reason fragment."""
    actor = root / "Actor_01"
    good = actor / "01-01-01-01-01-01-01.mp4"
    write_mp4(good)
    expected = {}
    (actor / "01-01-02-01-01-01-01.mp4").write_bytes(b"")
    expected["Actor_01/01-01-02-01-01-01-01.mp4"] = "empty"
    data = good.read_bytes()
    (actor / "01-01-03-01-01-01-01.mp4").write_bytes(data[: len(data) // 3])
    expected["Actor_01/01-01-03-01-01-01-01.mp4"] = ""
    (actor / "01-01-04-01-01-01-01.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    expected["Actor_01/01-01-04-01-01-01-01.mp4"] = ""
    write_mp4(actor / "01-01-05-01-01-01-01.mp4", audio=False)
    expected["Actor_01/01-01-05-01-01-01-01.mp4"] = "no audio"
    write_mp4(actor / "01-01-06-01-01-01-01.mp4", video=False)
    expected["Actor_01/01-01-06-01-01-01-01.mp4"] = "no video"
    (actor / "interview-take2.mp4").write_bytes(data)  # no RAVDESS name: no label
    expected["Actor_01/interview-take2.mp4"] = ""
    if not with_good:
        good.unlink()
    return expected


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    src = tmp_path / "raw"
    expected = make_bad_ravdess(src)
    result = pack("ravdess", src, tmp_path / "out", PackOptions(shard_size=3, workers=2))
    manifest = read_manifest(tmp_path / "out")
    assert [k for s in manifest.shards for k in s.keys] == ["01-01-01-01-01-01-01"]
    reasons = {s["source"]: s["reason"] for s in manifest.skipped}
    assert set(reasons) == set(expected)
    for source, fragment in expected.items():
        assert fragment in reasons[source] and reasons[source], source
    assert result.clips_transcoded == 5  # the empty and the unnamed file never reach transcode
    with pytest.raises(PackFailed, match="under --strict"):
        pack("ravdess", src, tmp_path / "strict", PackOptions(shard_size=3, workers=1, strict=True))


def test_missing_src_is_an_avdali_error(tmp_path):
    with pytest.raises(AvdaliError, match="not found"):
        pack("ravdess", tmp_path / "nope", tmp_path / "out", PackOptions(workers=1))
    with pytest.raises(AvdaliError, match="unknown dataset"):
        pack("voxceleb", tmp_path, tmp_path / "out", PackOptions(workers=1))


def test_out_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(AvdaliError, match="not a folder"):
        fake_pack(tmp_path / "out")


def test_meld_known_bad_files_are_all_recorded(tmp_path, meld_csv_dir):
    """The release's bad files (missing, truncated, empty, no audio, unlabeled): none is packed, each is
    listed in the manifest with a reason, and every reader skip is carried over."""
    from avdali.sources import scan_meld
    from avdali.synth.meld import make_meld

    src = tmp_path / "raw"
    summary = make_meld(src, csv_dir=meld_csv_dir, limit=3, size=(256, 144), max_seconds=1.5, faults=True, seed=3)  # 3: two train faults leave one good clip
    assert {f.kind for f in summary.faults} >= {"missing", "truncated", "empty", "no_audio", "unlabelled"}
    pack("meld", src, tmp_path / "out", PackOptions(shard_size=2, workers=2))
    manifest = read_manifest(tmp_path / "out")
    packed = {k for s in manifest.shards for k in s.keys}
    skipped_text = [f"{s['source']} {s['reason']}" for s in manifest.skipped]
    for fault in summary.faults:
        assert not any(k.endswith(fault.clip) for k in packed), fault
        assert sum(fault.clip in t for t in skipped_text) == 1, (fault, skipped_text)
    scan = scan_meld(src)
    assert {(s.source, s.reason) for s in scan.skipped} <= {(s["source"], s["reason"]) for s in manifest.skipped}
    assert len(packed) + len(manifest.skipped) == len(scan.records) + len(scan.skipped)
