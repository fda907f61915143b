"""``avdali shard --keep-partial``: clips lacking a stream are packed with a placeholder and marked (meta.i32, json,
manifest); the default still skips them; format-1 shards still read; the predict transcode can keep them too."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from avdali import shardformat as fmt
from avdali.cli.app import app
from avdali.errors import AvdaliError
from avdali.packing.run import pack
from avdali.packing.writer import write_shard
from avdali.shardformat.inspect import inspect_shards
from avdali.shardformat.manifest import read_manifest, write_manifest
from avdali.shardformat.members import decode_meta_i32, read_members
from avdali.shardformat.options import PackOptions
from avdali.shardformat.probe import count_webm_frames

runner = CliRunner()

EXPECTED_STREAMS = {"no_audio": fmt.STREAM_VIDEO, "no_video": fmt.STREAM_AUDIO, "black_video": fmt.STREAM_AUDIO}
"""Synth fault kind → the ``streams`` its sample must carry under --keep-partial."""


def faults_of(src: Path) -> dict[str, str]:
    """Sample key → fault kind, from the synth tree's record."""
    record = json.loads((src / "avdali_synth.json").read_text())
    return {f"{f['split']}_{f['clip']}": f["kind"] for f in record["faults"]}


def samples_of(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.glob("*.tar")):
        for key, ext, data in read_members(tar):
            samples.setdefault(key, {})[ext] = data
    return samples


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_keep_partial_packs_marked_placeholders(meld_partial_src, meld_partial_shards):
    faults = faults_of(meld_partial_src)
    assert sorted(faults.values()) == ["black_no_audio", "black_video", "no_audio", "no_video"]
    manifest = read_manifest(meld_partial_shards)
    assert manifest.format_version == fmt.FORMAT_VERSION == 3
    assert manifest.options["keep_partial"] is True
    assert manifest.partial == {"no_audio": 1, "no_video": 2}
    by_kind = {kind: key for key, kind in faults.items()}
    assert manifest.partial_keys == {"no_audio": [by_kind["no_audio"]],
                                     "no_video": sorted([by_kind["no_video"], by_kind["black_video"]])}
    reasons = {p["key"]: p["reason"] for s in manifest.shards for p in s.partial}
    assert reasons == {by_kind["no_audio"]: "no audio stream", by_kind["no_video"]: "no video stream",
                       by_kind["black_video"]: "black video"}
    # neither stream usable: still skipped, with both reasons
    (skip,) = manifest.skipped
    assert skip["source"].endswith(by_kind["black_no_audio"].split("_", 1)[1] + ".mp4")
    assert skip["reason"] == "neither stream is usable (black video, no audio stream)"
    assert manifest.faces.get("none") == 2

    samples = samples_of(meld_partial_shards)
    assert len(samples) == manifest.samples == 11
    for key, parts in samples.items():
        nums = decode_meta_i32(parts["meta.i32"])
        meta = json.loads(parts["json"])
        expected = EXPECTED_STREAMS.get(faults.get(key), fmt.STREAMS_ALL)
        assert nums["streams"] == expected, key
        if expected == fmt.STREAMS_ALL:
            assert "streams" not in meta and "missing" not in meta  # a whole clip's json is as it always was
            continue
        assert meta["streams"] == {"audio": bool(expected & 1), "video": bool(expected & 2)}
        wav, rate = sf.read(io.BytesIO(parts["flac"]), dtype="int16")
        assert rate == fmt.AUDIO_RATE and len(wav) == nums["audio_samples"]
        assert count_webm_frames(parts["webm"]) == nums["frames"] == meta["frames"]
        if expected == fmt.STREAM_VIDEO:  # silent placeholder as long as the stored picture
            assert not wav.any() and meta["missing"] == {"audio": "no audio stream"}
            assert len(wav) == round(nums["frames"] * fmt.AUDIO_RATE / meta["fps"])
        else:  # black placeholder at the pack fps, covering the real audio
            assert wav.any() and meta["face"] == "none" and meta["fps"] == 15.0
            assert nums["frames"] == int(np.ceil(len(wav) * 15 / fmt.AUDIO_RATE - 1e-3))
    report = inspect_shards(meld_partial_shards, decode_per_split=10)
    assert report.ok, report.problems


def test_default_still_skips_partial_clips(meld_partial_src, meld_partial_shards, tmp_path):
    faults = faults_of(meld_partial_src)
    out = tmp_path / "default"
    pack("meld", meld_partial_src, out, PackOptions(size=128, fps=15, max_seconds=4.0, shard_size=4, workers=2))
    manifest = read_manifest(out)
    assert "keep_partial" not in manifest.options and manifest.partial == {}
    text = (out / fmt.MANIFEST_NAME).read_text()
    assert '"partial"' not in text  # a default run's manifest has no partial fields at all
    reasons = sorted(s["reason"] for s in manifest.skipped)
    assert reasons == ["no audio stream", "no audio stream", "no video stream"]
    samples = samples_of(out)
    # the black clip has both streams: by default it is packed as before (black is only looked for under the flag)
    black = next(k for k, kind in faults.items() if kind == "black_video")
    assert decode_meta_i32(samples[black]["meta.i32"])["streams"] == fmt.STREAMS_ALL
    assert all(decode_meta_i32(p["meta.i32"])["streams"] == fmt.STREAMS_ALL for p in samples.values())
    # whole clips are the same bytes with and without the flag
    partial = samples_of(meld_partial_shards)
    for key, parts in samples.items():
        if key != black:
            assert parts == partial[key], key


def test_resume_with_keep_partial_ends_identical_and_refuses_other_option(meld_partial_src, meld_partial_shards, tmp_path):
    out = tmp_path / "out"
    options = PackOptions(**read_manifest(meld_partial_shards).options)
    assert options.keep_partial

    class Stop(Exception):
        pass

    def stop_after_first(event):
        if event.kind == "shard" and not event.kept:
            raise Stop

    with pytest.raises(Stop):
        pack("meld", meld_partial_src, out, options, stop_after_first)
    first = read_manifest(out).shards[0].name
    st = os.stat(out / first)
    with pytest.raises(AvdaliError, match=r"other options \(keep_partial True → False\)"):
        pack("meld", meld_partial_src, out, PackOptions(**{**options.__dict__, "keep_partial": False}))
    result = pack("meld", meld_partial_src, out, options)
    assert result.shards_kept == 1
    assert (os.stat(out / first).st_ino, os.stat(out / first).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert folder_bytes(out) == folder_bytes(meld_partial_shards)


def test_inspect_shows_partial_clips(meld_partial_shards):
    result = runner.invoke(app, ["inspect", str(meld_partial_shards), "--decode", "0"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(meld_partial_shards)
    assert "partial (--keep-partial): 1 without audio, 2 without usable video" in result.output
    for kind, keys in manifest.partial_keys.items():
        assert f"{kind}: {', '.join(keys)}" in result.output
    assert "placeholder picture 2" in result.output


def test_inspect_finds_streams_that_disagree(meld_partial_shards, tmp_path):
    """A partial sample whose meta.i32 says "whole" (a writer bug, a hand edit) is a finding."""
    out = tmp_path / "edited"
    out.mkdir()
    manifest = read_manifest(meld_partial_shards)
    entry = next(s for s in manifest.shards if s.partial)
    for p in meld_partial_shards.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    samples = _samples(meld_partial_shards / entry.name)
    key = entry.partial[0]["key"]
    sample = next(s for s in samples if s["__key__"] == key)
    nums = np.frombuffer(sample["meta.i32"], "<i4").copy()
    nums[4] = fmt.STREAMS_ALL
    sample["meta.i32"] = nums.tobytes()
    _rewrite(out, manifest, entry.name, samples)
    report = inspect_shards(out, decode_per_split=0)
    assert any(f"{key}: real streams disagree: meta.i32 3" in p for p in report.problems), report.problems


def _samples(tar: Path) -> list[dict]:
    samples: list[dict] = []
    for key, ext, data in read_members(tar):
        if not samples or samples[-1]["__key__"] != key:
            samples.append({"__key__": key})
        samples[-1][ext] = data
    return samples


def _rewrite(out: Path, manifest, name: str, samples: list[dict]) -> None:
    """Write ``samples`` as shard ``name`` of ``out`` and update its manifest entry (sha, size)."""
    shard = write_shard(out, name, samples)
    for entry in manifest.shards:
        if entry.name == name:
            entry.sha256, entry.bytes = shard.sha256, shard.bytes
    write_manifest(out, manifest)


def test_format1_shards_still_read(ravdess_shards_v1):
    out = ravdess_shards_v1
    manifest = read_manifest(out)
    assert manifest.format_version == 1 and manifest.partial == {}
    with tarfile.open(out / manifest.shards[0].name) as tar:
        meta = next(m for m in tar.getmembers() if m.name.endswith(".meta.i32"))
        assert meta.size == 16
    report = inspect_shards(out, decode_per_split=1)
    assert report.ok, report.problems


def test_transcode_for_predict_keeps_a_partial_clip_when_asked(meld_partial_src):
    from avdali.data.config import DataConfig
    from avdali.infer.clip_batch import clip_batch
    from avdali.infer.predict import transcode_input

    record = json.loads((meld_partial_src / "avdali_synth.json").read_text())
    path = {f["kind"]: meld_partial_src / f["path"] for f in record["faults"]}
    options = PackOptions(keep_partial=True)  # as a --keep-partial manifest would give: predict decides itself
    with pytest.raises(AvdaliError, match="not a readable video \\(no video stream\\)"):
        transcode_input(path["no_video"], options)
    with pytest.raises(AvdaliError, match="no audio stream"):
        transcode_input(path["no_audio"], options)
    with pytest.raises(AvdaliError, match="no usable audio or video"):
        transcode_input(path["black_no_audio"], options, keep_partial=True)
    cfg = DataConfig(frames=2, crop=32, n_mels=16)
    for kind, audio, video in [("no_video", True, False), ("black_video", True, False), ("no_audio", False, True)]:
        clip = transcode_input(path[kind], PackOptions(), keep_partial=True)
        assert (clip.audio_present, clip.video_present) == (audio, video), kind
        assert set(clip.missing) == {"audio", "video"} - {n for n, real in (("audio", audio), ("video", video)) if real}
        batch = clip_batch(clip.webm, clip.flac, clip.frames, cfg, source=kind,
                           audio_present=clip.audio_present, video_present=clip.video_present)
        assert (batch.audio_present.tolist(), batch.video_present.tolist()) == ([audio], [video])
    whole = transcode_input(path["black_video"], PackOptions())  # default: a black clip is a whole clip
    assert (whole.audio_present, whole.video_present, whole.missing) == (True, True, {})


def test_ravdess_synth_partial_clips_pack_with_keep_partial(tmp_path):
    """``make_ravdess(partial=True)``: four 01- clips lack a stream; every other file keeps its default bytes."""
    from avdali.synth.ravdess import PARTIAL_KINDS, make_ravdess

    kw = dict(actors=(1, 2, 3, 8), trials_per_actor=2, size=(192, 144), seed=0, layout="kaggle")
    summary = make_ravdess(tmp_path / "partial", partial=True, **kw)
    make_ravdess(tmp_path / "plain", **kw)
    assert [f.kind for f in summary.faults] == list(PARTIAL_KINDS)
    broken = {f.path.relative_to(tmp_path / "partial") for f in summary.faults}
    plain = {p.relative_to(tmp_path / "plain"): p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file()}
    made = {p.relative_to(tmp_path / "partial"): p.read_bytes() for p in (tmp_path / "partial").rglob("*") if p.is_file()}
    no_video = next(f for f in summary.faults if f.kind == "no_video").path.relative_to(tmp_path / "partial")
    twin = no_video.with_name("02" + no_video.name[2:])
    assert set(plain) - set(made) == {twin}  # a clip without a picture has no video-only twin
    twins = {p.with_name("02" + p.name[2:]) for p in broken}
    for path, data in made.items():
        if path not in broken and path not in twins:
            assert data == plain[path], path
    out = tmp_path / "shards"
    pack("ravdess", tmp_path / "partial", out, PackOptions(max_seconds=4.0, shard_size=4, workers=1, keep_partial=True))
    manifest = read_manifest(out)
    assert manifest.partial == {"no_audio": 1, "no_video": 2} and len(manifest.skipped) == 1
    assert manifest.samples == 7


def test_shard_cli_keep_partial_summary(meld_partial_src, meld_partial_shards, tmp_path):
    out = tmp_path / "cli"
    result = runner.invoke(app, ["shard", "meld", str(meld_partial_src), str(out), "--size", "128", "--fps", "15",
                                 "--max-seconds", "4", "--shard-size", "4", "--workers", "2", "--keep-partial"])
    assert result.exit_code == 0, result.output
    assert "partial (--keep-partial): 1 without audio, 2 without usable video" in result.output
    assert "neither stream is usable" in result.output
    assert folder_bytes(out) == folder_bytes(meld_partial_shards)  # the CLI flag is the option the fixture used


def test_a_video_track_that_fails_to_decode_keeps_the_audio(meld_partial_src, monkeypatch):
    """Under --keep-partial a corrupt video track (FFmpeg fails mid-stream) is "no usable video"; the audio is read
    in a second pass. By default the clip stays a skip with the same reason as before."""
    from avdali.packing import transcode as tc

    record = json.loads((meld_partial_src / "avdali_synth.json").read_text())
    faulty = {f["path"] for f in record["faults"]}
    path = next(p for p in sorted(meld_partial_src.rglob("*.mp4")) if str(p.relative_to(meld_partial_src)) not in faulty)
    real = tc._decode_source

    def broken_video(container, video, audio, *args):
        if video is not None:
            raise tc.ClipError("corrupt video: Invalid data found when processing input")
        return real(container, video, audio, *args)

    monkeypatch.setattr(tc, "_decode_source", broken_video)
    with pytest.raises(tc.ClipError, match="^corrupt video: Invalid data"):
        tc.transcode_clip(path, PackOptions())
    clip = tc.transcode_clip(path, PackOptions(keep_partial=True))
    assert (clip.audio_present, clip.video_present) == (True, False)
    assert clip.missing == {"video": "corrupt video: Invalid data found when processing input"}
    wav, _ = sf.read(io.BytesIO(clip.flac), dtype="int16")
    assert wav.any() and clip.frames == count_webm_frames(clip.webm) >= 1


@pytest.mark.parametrize("version", [1, 2])
def test_packing_into_an_older_format_folder_redoes_every_shard(version, ravdess_src, ravdess_shards, request, tmp_path):
    """Re-running ``avdali shard`` on a folder packed by an older avdali (format 1; format 2, whose manifest has no
    shuffle_seed: read as the default, so the options match) must not keep its shards (one folder, two formats): it
    re-packs them all and ends as a fresh pack would."""
    older = request.getfixturevalue(f"ravdess_shards_v{version}")
    out = tmp_path / f"v{version}"
    out.mkdir()
    for p in older.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    notes = []
    result = pack("ravdess", ravdess_src, out, PackOptions(**read_manifest(out).options),
                  lambda e: notes.append(e.text) if e.kind == "note" else None)
    assert result.shards_kept == 0
    assert any(f"shard format {version}, this avdali writes 3: re-packing every shard" in n for n in notes)
    assert folder_bytes(out) == folder_bytes(ravdess_shards)
