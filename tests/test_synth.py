"""Synthetic raw trees: real layouts and names, real MELD rows, determinism, faults, and a signal that
follows the emotion in both streams. Trees are tiny (64-256 px frames, a handful of clips)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from avdali.cli.app import app
from avdali.errors import AvdaliError
from avdali.labels import RAVDESS_EMOTIONS
from avdali.synth.meld import (
    CLIP_DIRS,
    EXTRA_CLIP,
    make_meld,
    parse_time,
    plan_meld,
    read_rows,
    select_rows,
    stratified_counts,
)
from avdali.synth.ravdess import make_ravdess, plan_ravdess, plan_trials

SMALL = (128, 72)


def parse_stem(stem: str) -> tuple[int, ...]:
    fields = stem.split("-")
    assert len(fields) == 7 and all(len(f) == 2 and f.isdigit() for f in fields), stem
    return tuple(int(f) for f in fields)


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        info = {
            "video": (video.codec_context.name, video.width, video.height, video.average_rate, video.frames),
            "audio": None,
        }
        if c.streams.audio:
            a = c.streams.audio[0]
            info["audio"] = (a.codec_context.name, a.rate, a.channels)
    return info


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- RAVDESS plan (names only, nothing encoded)


def test_full_plan_has_60_speech_trials_per_actor_with_real_emotion_counts():
    trials = plan_trials(actors=24)
    assert len(trials) == 24 * 60
    stems = [t.stem(1) for t in trials]
    assert len(set(stems)) == len(stems)
    for actor in range(1, 25):
        own = [parse_stem(t.stem(1)) for t in trials if t.actor == actor]
        assert Counter(f[2] for f in own) == {1: 4, **{e: 8 for e in range(2, 9)}}
        assert {f[3] for f in own if f[2] == 1} == {1}, "neutral has no strong intensity"
        assert {(f[3], f[4], f[5]) for f in own if f[2] == 5} == {(i, s, r) for i in (1, 2) for s in (1, 2) for r in (1, 2)}
        assert all(f[0] == 1 and f[1] == 1 and f[6] == actor for f in own)


def test_song_plan_skips_actor_18_and_has_six_emotions():
    trials = [t for t in plan_trials(actors=24, song=True) if t.vocal == 2]
    per_actor = Counter(t.actor for t in trials)
    assert 18 not in per_actor
    assert set(per_actor.values()) == {44} and len(per_actor) == 23
    assert {t.emotion for t in trials} == {1, 2, 3, 4, 5, 6}


def test_small_plan_is_stratified_and_rotated_so_every_emotion_appears():
    trials = plan_trials(actors=(2, 3, 10, 8, 1), trials_per_actor=4)
    assert Counter(t.actor for t in trials) == {a: 4 for a in (1, 2, 3, 8, 10)}
    assert {t.emotion for t in trials} == set(range(1, 9))
    for actor in (1, 2, 3, 8, 10):
        assert len({t.emotion for t in trials if t.actor == actor}) == 4, "k ≤ 8 trials of one actor: all different emotions"
    assert plan_trials(actors=(1, 2), trials_per_actor=60) == plan_trials(actors=(1, 2))


def test_plan_paths_real_and_flat_layouts(tmp_path):
    for flat in (False, True):
        jobs = plan_ravdess(tmp_path, actors=(3,), trials_per_actor=2, song=True, flat=flat)
        for job in jobs:
            assert job.mp4_path.parent == tmp_path / "Actor_03"
            assert job.video_only_path.name == "02" + job.mp4_path.name[2:]
            vocal = job.mp4_path.name[3:5]
            if flat:
                assert job.wav_path.parent == tmp_path / "Actor_03"
            else:
                audio = "Audio_Speech_Actors_01-24" if vocal == "01" else "Audio_Song_Actors_01-24"
                assert job.wav_path.parent == tmp_path / audio / "Actor_03"
            assert job.wav_path.name == "03" + job.mp4_path.name[2:-4] + ".wav"
            assert 2.94 <= job.duration <= 5.27 and 0.5 <= job.speech.start <= 1.0 < job.speech.end <= job.duration
            assert job.emotion == RAVDESS_EMOTIONS[job.mp4_path.name[6:8]]


def test_plan_paths_kaggle_layout_mirror_the_real_names(tmp_path):
    jobs = plan_ravdess(tmp_path, actors=(3,), trials_per_actor=2, song=True, layout="kaggle")
    paths = {p.relative_to(tmp_path).as_posix() for j in jobs for p in (j.mp4_path, j.video_only_path, j.wav_path)}
    release = plan_ravdess(tmp_path, actors=(3,), trials_per_actor=2, song=True)
    assert [(j.name, j.duration, j.seed) for j in jobs] == [(j.name, j.duration, j.seed) for j in release]
    folders = {p.rsplit("/", 1)[0] for p in paths}
    assert folders == {
        "Video_Speech_Actor_03/Actor_03", "Video_Song_Actor_03/Actor_03",
        "Audio_Speech_Actors_01-24/Actor_03", "Audio_Song_Actors_01-24/Actor_03",
    }
    assert all(p.split("/")[-1][3:5] == ("01" if "Speech" in p else "02") for p in paths)
    with pytest.raises(AvdaliError, match="--flat is a variant of --layout release"):
        plan_ravdess(tmp_path, layout="kaggle", flat=True)
    with pytest.raises(AvdaliError, match="--layout must be one of release, kaggle, got 'zenodo'"):
        plan_ravdess(tmp_path, layout="zenodo")


def test_durations_over_the_full_plan_look_like_ravdess(tmp_path):
    durations = np.array([j.duration for j in plan_ravdess(tmp_path, actors=24)])
    assert durations.min() >= 2.94 and durations.max() <= 5.27
    assert 3.5 <= durations.mean() <= 3.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"actors": 25}, "--actors"),
        ({"actors": (0, 3)}, "--actors"),
        ({"trials_per_actor": 0}, "--trials"),
        ({"size": (129, 72)}, "--size"),
        ({"size": (32, 32)}, "--size"),
    ],
)
def test_bad_ravdess_options_raise_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(AvdaliError, match=message):
        plan_ravdess(tmp_path, **kwargs)


# ---------------------------------------------------------------- RAVDESS files


def test_ravdess_tree_formats(tmp_path):
    summary = make_ravdess(tmp_path, actors=(1, 18), size=SMALL, trials_per_actor=1, song=True, seed=3)
    assert summary.clips == 3  # actor 1: speech + song, actor 18: speech only
    mp4s = sorted(tmp_path.glob("Actor_*/*.mp4"))
    wavs = sorted(tmp_path.glob("Audio_*_Actors_01-24/Actor_*/*.wav"))
    assert len(mp4s) == 6 and len(wavs) == 3
    assert not (tmp_path / "Audio_Song_Actors_01-24" / "Actor_18").exists()
    assert set(summary.files) == set(mp4s) | set(wavs)
    for mp4 in mp4s:
        fields = parse_stem(mp4.stem)
        info = probe(mp4)
        codec, width, height, rate, frames = info["video"]
        assert (codec, width, height, rate) == ("h264", *SMALL, Fraction(30))
        if fields[0] == 1:
            assert info["audio"] == ("aac", 48_000, 2)
            twin = probe(mp4.with_name("02" + mp4.name[2:]))
            assert twin["audio"] is None, "video-only twins have no audio stream"
            assert twin["video"] == info["video"]
        else:
            assert fields[0] == 2
    for wav in wavs:
        meta = sf.info(str(wav))
        assert (meta.samplerate, meta.subtype, meta.format) == (48_000, "PCM_16", "WAV")
        assert 2.94 <= meta.duration <= 5.27
        mp4 = next(tmp_path.glob(f"Actor_*/01{wav.stem[2:]}.mp4"))
        assert abs(probe(mp4)["video"][4] / 30 - meta.duration) <= 1 / 30


def test_layout_moves_files_but_not_their_bytes(tmp_path, meld_csv_dir):
    kwargs = dict(actors=(2,), size=(64, 64), trials_per_actor=1, seed=5)
    release = tree_bytes(make_ravdess(tmp_path / "r", **kwargs).root)
    kaggle = tree_bytes(make_ravdess(tmp_path / "k", layout="kaggle", **kwargs).root)
    assert sorted(release.values()) == sorted(kaggle.values()) and len(kaggle) == 3
    assert {k.replace("Video_Speech_Actor_02/", "") for k in kaggle} == set(release)

    kwargs = dict(csv_dir=meld_csv_dir, limit=1, size=(64, 64), max_seconds=1.0, seed=5)
    release = tree_bytes(make_meld(tmp_path / "mr", **kwargs).root)
    kaggle = tree_bytes(make_meld(tmp_path / "mk", layout="kaggle", **kwargs).root)
    assert release.pop("avdali_synth.json") != kaggle.pop("avdali_synth.json")  # it records the layout
    moved = {k.replace("MELD-RAW/", "").replace("train/train_sent_emo.csv", "train_sent_emo.csv"): v for k, v in kaggle.items()}
    assert moved == release and len(moved) == 6
    assert "MELD-RAW/MELD.Raw/train/train_sent_emo.csv" in kaggle and "MELD-RAW/MELD.Raw/dev_sent_emo.csv" in kaggle


def test_ravdess_is_deterministic_and_seed_dependent(tmp_path):
    kwargs = dict(actors=(2,), size=SMALL, trials_per_actor=2, flat=True)
    first = tree_bytes(make_ravdess(tmp_path / "a", seed=7, **kwargs).root)
    second = tree_bytes(make_ravdess(tmp_path / "b", seed=7, workers=2, **kwargs).root)
    other = tree_bytes(make_ravdess(tmp_path / "c", seed=8, **kwargs).root)
    assert len(first) == 6 and all(n.startswith("Actor_02/") for n in first)
    assert first == second
    assert first.keys() == other.keys() and all(first[k] != other[k] for k in first)


# ---------------------------------------------------------------- MELD


def test_parse_time_accepts_one_digit_hours_and_short_fractions():
    assert parse_time("00:20:57,256", "x") == pytest.approx(20 * 60 + 57.256)
    assert parse_time("1:02:03,5", "x") == pytest.approx(3723.5)
    with pytest.raises(AvdaliError, match="f.csv:3"):
        parse_time("20:57.256", "f.csv:3")


def test_stratified_counts():
    counts = {"neutral": 470, "joy": 163, "anger": 153, "surprise": 150, "sadness": 111, "fear": 40, "disgust": 22}
    keep = stratified_counts(counts, 50)
    assert sum(keep.values()) == 50 and set(keep) == set(counts) and min(keep.values()) >= 1
    assert keep["neutral"] == max(keep.values()) and keep["neutral"] > 15
    assert stratified_counts(counts, 3) == {"neutral": 1, "joy": 1, "anger": 1}
    assert stratified_counts({"joy": 2, "fear": 1}, 10) == {"joy": 2, "fear": 1}


def test_row_selection_is_stratified_and_seeded(meld_csv_dir):
    _, rows = read_rows(meld_csv_dir / "test_sent_emo.csv", "test")
    chosen = select_rows(rows, 20, seed=0)
    assert len(chosen) == 20 and {r.emotion for r in chosen} == {r.emotion for r in rows}
    assert [r.line for r in chosen] == sorted(r.line for r in chosen)
    assert select_rows(rows, 20, seed=0) == chosen and select_rows(rows, 20, seed=1) != chosen


def _real_lines(meld_csv_dir: Path, split: str) -> list[bytes]:
    return (meld_csv_dir / f"{split}_sent_emo.csv").read_bytes().split(b"\r\n")


def test_meld_csv_subset_is_real_rows_in_both_encodings(tmp_path, meld_csv_dir):
    tables, jobs, faults = plan_meld(tmp_path, csv_dir=meld_csv_dir, limit=30, size=SMALL, seed=0)
    assert not faults and len(jobs) == 90
    for split, data in tables.items():
        real = _real_lines(meld_csv_dir, split)
        lines = data.split(b"\r\n")
        assert lines[0] == real[0] and lines[-1] == b"" and b"\n" not in data.replace(b"\r\n", b"")
        positions = [real.index(line) for line in lines[1:-1]]
        assert len(positions) == 30 and positions == sorted(positions), "rows are the real rows, in CSV order"
        assert any(b'"0' in line for line in lines[1:-1]), "times stay quoted"
    # cp1252 on disk reads back to the same rows as the utf-8 original.
    make_meld(tmp_path / "cp", csv_dir=meld_csv_dir, limit=1, size=(64, 64), max_seconds=1.0, encoding="cp1252")
    raw = (tmp_path / "cp" / "MELD.Raw" / "train_sent_emo.csv").read_bytes()
    make_meld(tmp_path / "u8", csv_dir=meld_csv_dir, limit=1, size=(64, 64), max_seconds=1.0, encoding="utf-8")
    raw8 = (tmp_path / "u8" / "MELD.Raw" / "train_sent_emo.csv").read_bytes()
    rows = list(csv.reader(io.StringIO(raw.decode("cp1252"), newline="")))
    assert rows == list(csv.reader(io.StringIO(raw8.decode("utf-8"), newline="")))
    wide = plan_meld(tmp_path, csv_dir=meld_csv_dir, limit=400, size=SMALL)[0]["train"]
    text = wide.decode("utf-8")
    assert any(ord(c) > 127 for c in text) and text.encode("cp1252").decode("cp1252") == text


def test_meld_tree_clips_durations_and_faults(tmp_path, meld_csv_dir):
    summary = make_meld(tmp_path, csv_dir=meld_csv_dir, limit=4, size=SMALL, max_seconds=2.5, seed=0, faults=True)
    kinds = {f.kind: f for f in summary.faults}
    assert set(kinds) == {"missing", "empty", "truncated", "no_audio", "unlabelled"}
    record = json.loads((tmp_path / "avdali_synth.json").read_text())
    assert {(f["split"], f["clip"], f["kind"]) for f in record["faults"]} == {(f.split, f.clip, f.kind) for f in summary.faults}

    assert not kinds["missing"].path.exists()
    assert kinds["empty"].path.stat().st_size == 0
    with pytest.raises(av.error.FFmpegError):
        probe(kinds["truncated"].path)
    assert probe(kinds["no_audio"].path)["audio"] is None
    extra = kinds["unlabelled"]
    assert (extra.split, extra.clip) == EXTRA_CLIP and extra.path.exists()

    faulty = {(f.split, f.clip) for f in summary.faults}
    checked = 0
    for split in ("train", "dev", "test"):
        csv_path = tmp_path / "MELD.Raw" / f"{split}_sent_emo.csv"
        _, rows = read_rows(csv_path, split)
        assert len(rows) == 4
        clip_names = {p.stem for p in (tmp_path / "MELD.Raw" / CLIP_DIRS[split]).glob("*.mp4")}
        assert {r.clip for r in rows} - clip_names <= {c for s, c in faulty if s == split}
        for row in rows:
            if (split, row.clip) in faulty:
                continue
            info = probe(tmp_path / "MELD.Raw" / CLIP_DIRS[split] / f"{row.clip}.mp4")
            codec, width, height, rate, frames = info["video"]
            assert (codec, width, height, rate) == ("h264", *SMALL, Fraction(24000, 1001))
            assert info["audio"] == ("aac", 48_000, 2)
            expected = min(max(row.seconds, 1.0), 2.5)
            assert abs(frames / float(rate) - expected) <= 1 / float(rate), (split, row.clip, row.seconds)
            checked += 1
    assert checked >= 6


def test_meld_options_are_checked(tmp_path, meld_csv_dir):
    with pytest.raises(AvdaliError, match="--encoding"):
        make_meld(tmp_path, csv_dir=meld_csv_dir, encoding="latin-9")
    with pytest.raises(AvdaliError, match="train_sent_emo.csv"):
        make_meld(tmp_path, csv_dir=tmp_path)
    with pytest.raises(AvdaliError, match="--max-seconds"):
        plan_meld(tmp_path, csv_dir=meld_csv_dir, max_seconds=0.5)


# ---------------------------------------------------------------- the learnable signal


def _median_pitch(wav: Path) -> float:
    """Median f0 (Hz) of the loud frames, by autocorrelation."""
    x, rate = sf.read(str(wav))
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    lo, hi = int(rate / 400), int(rate / 70)
    windows = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    energy = (windows**2).mean(1)
    pitches = []
    for w in windows[energy > 0.3 * energy.max()]:
        w = w - w.mean()
        ac = np.correlate(w, w, "full")[frame - 1 :]
        pitches.append(rate / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(pitches))


def _face_colour_and_detection(mp4: Path, cascade) -> tuple[np.ndarray, float]:
    """Mean BGR of the detected face's centre over the clip, and the fraction of frames with a face."""
    colours, hits, n = [], 0, 0
    with av.open(str(mp4)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 6:
                continue
            bgr = frame.to_ndarray(format="bgr24")
            faces = cascade.detectMultiScale(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 1.1, 4, minSize=(24, 24))
            n += 1
            if len(faces):
                hits += 1
                x, y, w, h = max(faces, key=lambda b: b[2] * b[3])
                colours.append(bgr[y + h // 3 : y + 2 * h // 3, x + w // 4 : x + 3 * w // 4].reshape(-1, 3).mean(0))
    return np.mean(colours, 0), hits / n


def test_emotion_signal_in_face_and_voice(tmp_path):
    """Strong-intensity trials of two actors: the Haar cascade finds the drawn face, the skin tint and the
    voice pitch move with the emotion in the designed directions for each actor."""
    all_jobs = plan_ravdess(tmp_path, actors=(5, 6), size=(256, 144), seed=0)
    wanted = {"happy", "sad", "angry", "fearful", "surprised", "calm"}
    jobs = [j for j in all_jobs if j.emotion in wanted and j.intensity == 1.0 and j.name[12:17] == "01-01"]
    assert len(jobs) == 12  # 6 emotions, strong, statement 1, repetition 1, two actors
    from avdali.synth.jobs import render_all

    render_all(jobs, workers=2)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    for actor in ("Actor_05", "Actor_06"):
        colour, pitch = {}, {}
        for job in (j for j in jobs if j.identity.name == actor):
            colour[job.emotion], rate = _face_colour_and_detection(job.mp4_path, cascade)
            assert rate >= 0.9, f"{job.mp4_path.name}: face found in {rate:.0%} of frames"
            pitch[job.emotion] = _median_pitch(job.wav_path)
        red_minus_blue = {e: c[2] - c[0] for e, c in colour.items()}
        assert red_minus_blue["angry"] > red_minus_blue["sad"] + 40
        assert red_minus_blue["happy"] > red_minus_blue["calm"] + 40
        semitones = {e: 12 * np.log2(p / pitch["sad"]) for e, p in pitch.items()}
        assert semitones["surprised"] > 6 and semitones["fearful"] > 5 and semitones["happy"] > 4, semitones
        assert semitones["calm"] > 0.5, "sad is the lowest voice"


# ---------------------------------------------------------------- CLI


def test_cli_ravdess_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", "ravdess", str(tmp_path / "r"), "--actors", "4", "--trials", "1", "--size", "64x64"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "r").rglob("*.mp4"))) == 8 and len(list((tmp_path / "r").rglob("*.wav"))) == 4
    bad = runner.invoke(app, ["synth", "ravdess", str(tmp_path / "x"), "--size", "64by64"])
    assert bad.exit_code == 1 and "--size" in bad.output and not (tmp_path / "x").exists()
    bad = runner.invoke(app, ["synth", "meld", str(tmp_path / "m"), "--csv-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "train_sent_emo.csv" in bad.output


def test_cli_meld_finds_the_shared_csvs(tmp_path, meld_csv_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["synth", "meld", "out", "--limit", "1", "--size", "64x64", "--max-seconds", "1", "--encoding", "cp1252"]
    )
    if "no shared/datasets/meld" in result.output:
        pytest.skip("shared/datasets/meld not above the package in this checkout")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "MELD.Raw").rglob("*.mp4"))) == 3
