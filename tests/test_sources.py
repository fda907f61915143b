"""Dataset readers: RAVDESS name parsing, filtering, folds and layouts; MELD CSV reading and the
row↔clip join (on real CSV rows); every skip kind and layout error. Trees are built by hand in tmp_path."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from avdali.errors import AvdaliError
from avdali.labels import UNIFIED
from avdali.sources import scan
from avdali.sources.meld import COLUMNS as MELD_COLUMNS, parse_timestamp, read_sent_emo_csv, scan_meld
from avdali.sources.ravdess import ACTOR_FOLDS, actor_fold, parse_ravdess_name, scan_ravdess


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(result) -> dict[str, str]:
    return {s.source: s.reason for s in result.skipped}


# ---------------------------------------------------------------- RAVDESS: names and folds


def test_parse_valid_name():
    n = parse_ravdess_name("01-02-06-02-01-02-17.mp4")
    assert (n.modality, n.vocal_channel, n.emotion, n.intensity, n.statement, n.repetition, n.actor) == (
        1, 2, 6, 2, 1, 2, 17,
    )
    assert n.ext == ".mp4" and n.emotion_name == "fearful"
    assert parse_ravdess_name("03-01-02-01-02-01-24.wav").emotion_name == "calm"
    assert parse_ravdess_name("01-01-01-01-01-01-01.MP4").ext == ".mp4"


@pytest.mark.parametrize(
    "name, reason",
    [
        ("01-01-03-01-01-01.mp4", "seven two-digit fields"),
        ("01-01-03-01-01-01-05-01.mp4", "seven two-digit fields"),
        ("01-01-003-01-01-01-05.mp4", "seven two-digit fields"),
        ("01-01-3-01-01-01-05.mp4", "seven two-digit fields"),
        ("01_01_03_01_01_01_05.mp4", "seven two-digit fields"),
        ("01-01-03-01-01-01-05", "seven two-digit fields"),
        ("notes.txt", "seven two-digit fields"),
        ("04-01-03-01-01-01-05.mp4", "modality 04"),
        ("00-01-03-01-01-01-05.mp4", "modality 00"),
        ("01-03-03-01-01-01-05.mp4", "vocal channel 03"),
        ("01-01-09-01-01-01-05.mp4", "emotion 09"),
        ("01-01-00-01-01-01-05.mp4", "emotion 00"),
        ("01-01-03-03-01-01-05.mp4", "intensity 03"),
        ("01-01-03-01-03-01-05.mp4", "statement 03"),
        ("01-01-03-01-01-03-05.mp4", "repetition 03"),
        ("01-01-03-01-01-01-25.mp4", "actor 25"),
        ("01-01-03-01-01-01-00.mp4", "actor 00"),
        ("01-01-01-02-01-01-05.mp4", "neutral (emotion 01) has no strong"),
        ("01-02-07-01-01-01-05.mp4", "song (vocal channel 02) has no emotion 07"),
        ("01-02-08-01-01-01-05.mp4", "song (vocal channel 02) has no emotion 08"),
        ("01-01-03-01-01-01-05.wav", "modality 01 files are .mp4"),
        ("03-01-03-01-01-01-05.mp4", "modality 03 files are .wav"),
        ("01-01-03-01-01-01-05.avi", "modality 01 files are .mp4"),
    ],
)
def test_parse_invalid_names(name, reason):
    with pytest.raises(ValueError, match=None) as e:
        parse_ravdess_name(name)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


# Written out from DATASETS.md (Luna-Jiménez et al.), independently of ACTOR_FOLDS.
FOLD_OF_ACTOR = {
    1: 5, 2: 1, 3: 2, 4: 5, 5: 1, 6: 2, 7: 2, 8: 4, 9: 5, 10: 3, 11: 3, 12: 3,
    13: 2, 14: 1, 15: 1, 16: 1, 17: 4, 18: 2, 19: 3, 20: 3, 21: 4, 22: 5, 23: 4, 24: 4,
}


def test_actor_fold_all_24_actors():
    assert {a: actor_fold(a) for a in range(1, 25)} == FOLD_OF_ACTOR
    assert sorted(a for actors in ACTOR_FOLDS.values() for a in actors) == list(range(1, 25))
    for bad in (0, 25):
        with pytest.raises(ValueError, match="not a RAVDESS actor"):
            actor_fold(bad)


# ---------------------------------------------------------------- RAVDESS: trees


def _speech_trials(actor: int) -> list[str]:
    """A few stems of one actor: neutral, calm, happy strong, surprised."""
    return [f"01-01-{e}-{i}-01-01-{actor:02d}" for e, i in (("01", "01"), ("02", "01"), ("03", "02"), ("08", "01"))]


def _real_layout(root: Path, actors=(1, 2)) -> None:
    """The release unpacked: video zips → Actor_XX (01- and 02- mp4s), audio zip → its own folder."""
    for a in actors:
        for stem in _speech_trials(a):
            touch(root / f"Actor_{a:02d}" / f"{stem}.mp4")
            touch(root / f"Actor_{a:02d}" / f"02{stem[2:]}.mp4")
            touch(root / "Audio_Speech_Actors_01-24" / f"Actor_{a:02d}" / f"03{stem[2:]}.wav")


def test_real_layout_takes_only_av_speech_mp4(tmp_path):
    _real_layout(tmp_path)
    result = scan_ravdess(tmp_path)
    assert result.skipped == []  # 02-/03- files are not candidates, so not skipped either
    # fold1 (actor 2) sorts before fold5 (actor 1)
    assert [r.key for r in result.records] == sorted(_speech_trials(2)) + sorted(_speech_trials(1))
    assert all(r.video_path.name.startswith("01-01-") and r.video_path.suffix == ".mp4" for r in result.records)
    assert {r.split for r in result.records} == {"fold5", "fold1"}  # actor 1 → fold5, actor 2 → fold1


def test_record_fields_and_meta(tmp_path):
    _real_layout(tmp_path, actors=(7,))
    by_key = {r.key: r for r in scan_ravdess(tmp_path).records}
    calm = by_key["01-01-02-01-01-01-07"]
    assert calm.dataset == "ravdess" and calm.split == "fold2"
    assert calm.label == UNIFIED.index("neutral") and calm.native_label == "calm"
    assert calm.video_path == tmp_path / "Actor_07" / "01-01-02-01-01-01-07.mp4"
    assert calm.meta == {
        "actor": 7,
        "gender": "male",
        "vocal_channel": "speech",
        "intensity": "normal",
        "statement": "Kids are talking by the door",
        "repetition": 1,
        "native_label": "calm",
        "native_id": 1,
        "fold": 2,
    }
    happy = by_key["01-01-03-02-01-01-07"]
    assert happy.label == UNIFIED.index("happy") and happy.meta["intensity"] == "strong"
    surprised = by_key["01-01-08-01-01-01-07"]
    assert surprised.label == UNIFIED.index("surprised") and surprised.meta["native_id"] == 7


def test_flat_layout_with_wavs_beside(tmp_path):
    for stem in _speech_trials(4):
        touch(tmp_path / "Actor_04" / f"{stem}.mp4")
        touch(tmp_path / "Actor_04" / f"03{stem[2:]}.wav")
        touch(tmp_path / "Actor_04" / f"02{stem[2:]}.mp4")
    touch(tmp_path / "Actor_04" / ".DS_Store")  # hidden files are not dataset files
    result = scan_ravdess(tmp_path)
    assert [r.key for r in result.records] == sorted(_speech_trials(4))
    assert result.skipped == []
    assert {r.meta["gender"] for r in result.records} == {"female"}


def test_root_one_or_two_levels_up(tmp_path):
    for a in (3, 5):
        for stem in _speech_trials(a):
            touch(tmp_path / "RAVDESS" / f"Video_Speech_Actor_{a:02d}" / f"Actor_{a:02d}" / f"{stem}.mp4")
    result = scan_ravdess(tmp_path)
    assert len(result.records) == 8 and result.skipped == []


def test_actor_folder_six_levels_down_is_found_seven_is_not(tmp_path):
    touch(tmp_path / "deep" / "a" / "b" / "c" / "d" / "e" / "Actor_01" / "01-01-01-01-01-01-01.mp4")
    assert [r.key for r in scan_ravdess(tmp_path / "deep").records] == ["01-01-01-01-01-01-01"]
    with pytest.raises(AvdaliError, match=r"no Actor_XX folders found \(looked 6 levels down, 7 folders\)"):
        scan_ravdess(tmp_path)


def test_song_only_when_asked_and_actor_18_has_none(tmp_path):
    song = "01-02-05-02-02-01-{a:02d}"
    for a in (17, 18):
        for stem in _speech_trials(a):
            touch(tmp_path / f"Actor_{a:02d}" / f"{stem}.mp4")
    touch(tmp_path / "Actor_17" / f"{song.format(a=17)}.mp4")
    touch(tmp_path / "Actor_17" / f"02-02-05-02-02-01-17.mp4")

    speech = scan_ravdess(tmp_path)
    assert all(r.meta["vocal_channel"] == "speech" for r in speech.records)
    assert len(speech.records) == 8 and speech.skipped == []

    with_song = scan_ravdess(tmp_path, include_song=True)
    songs = [r for r in with_song.records if r.meta["vocal_channel"] == "song"]
    assert [r.key for r in songs] == [song.format(a=17)]
    assert songs[0].label == UNIFIED.index("angry") and songs[0].split == "fold4"
    actor18 = [r for r in with_song.records if r.meta["actor"] == 18]
    assert len(actor18) == 4 and {r.split for r in actor18} == {"fold2"}


def test_skip_kinds(tmp_path):
    good = "01-01-03-01-01-01-06"
    touch(tmp_path / "Actor_06" / f"{good}.mp4")
    touch(tmp_path / "Actor_06" / "01-01-03-01-01-02-06.mp4", b"")  # zero bytes
    touch(tmp_path / "Actor_06" / "01-01-03-01-01-01-08.mp4")  # actor 08 in Actor_06
    touch(tmp_path / "Actor_06" / "01-01-09-01-01-01-06.mp4")  # emotion 09
    touch(tmp_path / "Actor_06" / "readme.txt")
    touch(tmp_path / "Actor_06" / "03-01-03-01-01-01-06.mp4")  # audio-only with the wrong extension
    touch(tmp_path / "copy" / "Actor_06" / f"{good}.mp4")  # a second copy of the tree
    result = scan_ravdess(tmp_path)
    assert [r.key for r in result.records] == [good]
    assert result.records[0].video_path == tmp_path / "Actor_06" / f"{good}.mp4"
    got = reasons(result)
    assert got == {
        "Actor_06/01-01-03-01-01-02-06.mp4": "empty file",
        "Actor_06/01-01-03-01-01-01-08.mp4": "actor 08 in the name but the folder is Actor_06",
        "Actor_06/01-01-09-01-01-01-06.mp4": "emotion 09 is not in 01-08",
        "Actor_06/readme.txt": got["Actor_06/readme.txt"],
        "Actor_06/03-01-03-01-01-01-06.mp4": "modality 03 files are .wav, not .mp4",
        f"copy/Actor_06/{good}.mp4": f"duplicate of Actor_06/{good}.mp4",
    }
    assert "MM-VV-EE-II-SS-RR-AA" in got["Actor_06/readme.txt"]


def test_keys_unique_and_sorted_by_split_then_key(tmp_path):
    _real_layout(tmp_path, actors=(1, 2, 10, 8, 3))
    records = scan_ravdess(tmp_path).records
    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys) and all("." not in k and "/" not in k for k in keys)
    assert [(r.split, r.key) for r in records] == sorted((r.split, r.key) for r in records)
    assert [r.split for r in records][::4] == ["fold1", "fold2", "fold3", "fold4", "fold5"]


def test_ravdess_layout_errors(tmp_path):
    with pytest.raises(AvdaliError, match="RAVDESS root not found"):
        scan_ravdess(tmp_path / "nope")
    touch(tmp_path / "file")
    with pytest.raises(AvdaliError, match="not a folder"):
        scan_ravdess(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AvdaliError, match=r"no Actor_XX folders found \(looked 6 levels down, 1 folders\); expected the RAVDESS layout Actor_01/01-01-01-01-01-01-01\.mp4"):
        scan_ravdess(tmp_path / "empty")

    audio_only = tmp_path / "audio_only"
    touch(audio_only / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-03-01-01-01-01.wav")
    touch(audio_only / "Actor_02" / "02-01-03-01-01-01-02.mp4")
    with pytest.raises(AvdaliError, match="no 01-\\*.mp4 audio-video files"):
        scan_ravdess(audio_only)

    with pytest.raises(AvdaliError, match="is one actor's folder"):
        scan_ravdess(audio_only / "Actor_02")

    song_only = tmp_path / "song_only"
    touch(song_only / "Actor_01" / "01-02-03-01-01-01-01.mp4")
    with pytest.raises(AvdaliError, match="only song clips"):
        scan_ravdess(song_only)
    assert len(scan_ravdess(song_only, include_song=True).records) == 1


# ---------------------------------------------------------------- MELD


def _raw_lines(csv_dir: Path, split: str) -> list[str]:
    """Physical lines of a real CSV (no real row spans two lines)."""
    return (csv_dir / f"{split}_sent_emo.csv").read_bytes().decode("utf-8").split("\r\n")


def _pick(lines: list[str], sr_nos: list[int]) -> list[str]:
    return [lines[0]] + [ln for ln in lines[1:] if ln.split(",", 1)[0] in {str(n) for n in sr_nos}]


def _write_csv(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\r\n".join(lines + [""]).encode(encoding))


def _edit(line: str, **values: str) -> str:
    """A real CSV line with some columns replaced, re-quoted by the csv module."""
    fields = next(csv.reader([line]))
    for column, value in values.items():
        fields[MELD_COLUMNS.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _reference_rows(csv_dir: Path, split: str) -> list[dict[str, str]]:
    """The real rows, read straight with csv.DictReader (the reference for the reader).
    Sr No. is not unique in train (57 numbers repeat), so rows are a list."""
    with open(csv_dir / f"{split}_sent_emo.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _by_sr_no(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    by_sr = {row["Sr No."]: row for row in rows}
    assert len(by_sr) == len(rows), "Sr No. repeats in this split"
    return by_sr


def test_full_real_csvs_parse(meld_csv_dir):
    for split, count in (("train", 9989), ("dev", 1109), ("test", 2610)):
        rows, skipped = read_sent_emo_csv(meld_csv_dir / f"{split}_sent_emo.csv")
        assert len(rows) == count and skipped == []
        reference = _reference_rows(meld_csv_dir, split)
        assert [r["Utterance"] for r in rows] == [r["Utterance"] for r in reference]
        assert [(r["Dialogue_ID"], r["Utterance_ID"], r["Emotion"]) for r in rows] == [
            (r["Dialogue_ID"], r["Utterance_ID"], r["Emotion"]) for r in reference
        ]


def test_full_real_csvs_scan_without_clips(tmp_path, meld_csv_dir):
    for split, clip_dir in (("train", "train_splits"), ("dev", "dev_splits_complete"), ("test", "output_repeated_splits_test")):
        _write_csv(tmp_path / f"{split}_sent_emo.csv", _raw_lines(meld_csv_dir, split)[:-1])
        (tmp_path / clip_dir).mkdir()
    result = scan_meld(tmp_path)
    assert result.records == []
    no_clip = [s for s in result.skipped if s.reason.startswith("no clip for row")]
    assert len(no_clip) == len(result.skipped) == 9989 + 1109 + 2610  # every row parsed; ids and emotions valid


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
def test_join_real_rows_in_every_encoding(tmp_path, meld_csv_dir, encoding):
    # dev rows 1 (commas, ’), 2, 39 (comma, ’, —); test row 2 (quoted commas, ‘ ’)
    dev_lines, test_lines = _pick(_raw_lines(meld_csv_dir, "dev"), [1, 2, 39]), _pick(_raw_lines(meld_csv_dir, "test"), [2])
    base = tmp_path / "MELD.Raw"
    _write_csv(base / "dev_sent_emo.csv", dev_lines, encoding)
    _write_csv(base / "test_sent_emo.csv", test_lines, encoding)
    dev_ref, test_ref = _by_sr_no(_reference_rows(meld_csv_dir, "dev")), _by_sr_no(_reference_rows(meld_csv_dir, "test"))
    for row in [dev_ref["1"], dev_ref["2"], dev_ref["39"]]:
        touch(base / "dev" / "dev_splits_complete" / f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4")
    touch(base / "test" / "output_repeated_splits_test" / "dia0_utt1.mp4")

    result = scan_meld(tmp_path, splits=["dev", "test"])
    assert result.skipped == [] and result.splits == ["dev", "test"]
    assert [r.split for r in result.records] == ["dev"] * 3 + ["test"]
    by_row = {(r.split, str(r.meta["csv_row"])): r for r in result.records}
    for (split, sr), rec in by_row.items():
        ref = (dev_ref if split == "dev" else test_ref)[sr]
        assert rec.meta["utterance"] == ref["Utterance"]
        assert rec.meta["speaker"] == ref["Speaker"]
        assert rec.native_label == ref["Emotion"]
        assert rec.key == f"{split}_dia{ref['Dialogue_ID']}_utt{ref['Utterance_ID']}"

    first = by_row[("dev", "1")]
    assert first.meta["utterance"] == "Oh my God, he’s lost it. He’s totally lost it."
    assert first.key == "dev_dia0_utt0" and first.dataset == "meld"
    assert first.label == UNIFIED.index("sad") and first.native_label == "sadness"
    assert first.video_path == base / "dev" / "dev_splits_complete" / "dia0_utt0.mp4"
    assert first.meta == {
        "speaker": "Phoebe",
        "utterance": "Oh my God, he’s lost it. He’s totally lost it.",
        "sentiment": "negative",
        "dialogue_id": 0,
        "utterance_id": 0,
        "season": 4,
        "episode": 7,
        "start_time": pytest.approx(20 * 60 + 57.256),
        "end_time": pytest.approx(21 * 60 + 0.049),
        "csv_row": 1,
    }
    assert "—" in by_row[("dev", "39")].meta["utterance"]
    assert "‘Where’s number 27?!’" in by_row[("test", "2")].meta["utterance"]


def test_same_ids_in_every_split_give_unique_keys(tmp_path, meld_csv_dir):
    for split, clip_dir in (("train", "train/train_splits"), ("dev", "dev/dev_splits_complete"), ("test", "test/output_repeated_splits_test")):
        _write_csv(tmp_path / f"{split}_sent_emo.csv", _pick(_raw_lines(meld_csv_dir, split), [1]))
        touch(tmp_path / clip_dir / "dia0_utt0.mp4")
    result = scan_meld(tmp_path)
    assert [r.key for r in result.records] == ["dev_dia0_utt0", "test_dia0_utt0", "train_dia0_utt0"]
    assert result.skipped == []


def test_csvs_at_root_with_clips_in_meld_raw(tmp_path, meld_csv_dir):
    _write_csv(tmp_path / "train_sent_emo.csv", _pick(_raw_lines(meld_csv_dir, "train"), [1, 2]))
    touch(tmp_path / "MELD.Raw" / "train_splits" / "dia0_utt0.mp4")
    touch(tmp_path / "MELD.Raw" / "train_splits" / "dia0_utt1.mp4")
    result = scan_meld(tmp_path, splits=["train"])
    assert [r.key for r in result.records] == ["train_dia0_utt0", "train_dia0_utt1"]
    assert result.skipped == []


def test_meld_skip_kinds(tmp_path, meld_csv_dir):
    lines = _pick(_raw_lines(meld_csv_dir, "dev"), [1, 2, 3, 4])
    header, r1, r2, r3, r4 = lines
    bad_emotion = _edit(r2, Emotion="bored")
    bad_id = _edit(r3, Dialogue_ID="x")
    short = r4.rsplit(",", 2)[0]  # drops the quoted EndTime "00:…,…" (its comma makes it two pieces)
    duplicate = _edit(r1, **{"Sr No.": "999"})
    _write_csv(tmp_path / "dev_sent_emo.csv", [header, r1, bad_emotion, bad_id, short, duplicate])
    # a row whose clip is missing, on a split that otherwise works
    test_lines = _pick(_raw_lines(meld_csv_dir, "test"), [1, 2])
    _write_csv(tmp_path / "test_sent_emo.csv", test_lines)
    clips = tmp_path / "dev_splits_complete"
    touch(clips / "dia0_utt0.mp4")
    touch(clips / "dia66_utt9.mp4")  # real extra clip with no annotation
    touch(clips / "notes.txt")  # not a clip: ignored
    touch(clips / "._dia0_utt0.mp4")  # macOS resource fork: ignored
    test_clips = tmp_path / "output_repeated_splits_test"
    touch(test_clips / "dia0_utt0.mp4", b"")
    touch(test_clips / "final_videos_testdia101_utt0.mp4")

    result = scan_meld(tmp_path, splits=["test", "dev"])
    assert [r.key for r in result.records] == ["dev_dia0_utt0"]
    got = reasons(result)
    assert got["dev_sent_emo.csv:3"].startswith("unknown MELD emotion 'bored'")
    assert got["dev_sent_emo.csv:4"] == "Dialogue_ID 'x' is not a non-negative integer"
    assert got["dev_sent_emo.csv:5"] == "expected 11 fields, got 10"
    assert got["dev_sent_emo.csv:6"] == "duplicate row for dia0_utt0.mp4"
    assert got["dev_splits_complete/dia66_utt9.mp4"] == "unlabeled clip (no row in dev_sent_emo.csv)"
    assert got["output_repeated_splits_test/dia0_utt0.mp4"] == "empty file"
    assert got["test_sent_emo.csv:3"] == "no clip for row (dia0_utt1.mp4 not in output_repeated_splits_test)"
    assert got["output_repeated_splits_test/final_videos_testdia101_utt0.mp4"].startswith("unlabeled clip")
    assert len(got) == len(result.skipped) == 8
    assert all("\n" not in s.reason for s in result.skipped)


def test_labels_without_clips_and_clips_without_labels_are_errors_naming_both(tmp_path, meld_csv_dir):
    base = tmp_path / "MELD.Raw"
    for split in ("train", "dev"):
        _write_csv(base / f"{split}_sent_emo.csv", _pick(_raw_lines(meld_csv_dir, split), [1]))
    touch(base / "train.tar.gz")
    touch(base / "dev" / "dev_splits_complete" / "dia0_utt0.mp4")
    touch(base / "test" / "output_repeated_splits_test" / "dia0_utt0.mp4")
    with pytest.raises(AvdaliError) as e:
        scan_meld(tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert f"split train: labels in {base}/train_sent_emo.csv but no clip folder train_splits/" in message
    assert f"{base}/train.tar.gz is still packed: unpack it" in message
    assert (
        f"split test: clips in {base}/test/output_repeated_splits_test but no test_sent_emo.csv inside it, "
        f"beside it ({base}/test) or one level up"
    ) in message
    assert message.endswith("to pack only dev on purpose, pass --splits dev")
    # asking for the split that is whole packs it; the others are not even looked at
    assert [r.key for r in scan_meld(tmp_path, splits=["dev"]).records] == ["dev_dia0_utt0"]
    with pytest.raises(AvdaliError, match="split test: clips in"):
        scan_meld(tmp_path, splits=["dev", "test"])
    with pytest.raises(AvdaliError, match=r"--splits: unknown MELD split val; expected some of train,dev,test"):
        scan_meld(tmp_path, splits=["dev", "val"])


def test_meld_layout_errors(tmp_path, meld_csv_dir):
    with pytest.raises(AvdaliError, match="MELD root not found"):
        scan_meld(tmp_path / "nope")
    with pytest.raises(AvdaliError, match=r"no MELD split found \(looked 6 levels down, 1 folders\); expected the clip folders train_splits"):
        scan_meld(tmp_path)

    bad_header = tmp_path / "bad_header"
    _write_csv(bad_header / "dev_sent_emo.csv", ["Sr No.,Utterance,Speaker", "1,hi,Ross"])
    (bad_header / "dev_splits_complete").mkdir()
    with pytest.raises(AvdaliError, match=r"dev_sent_emo\.csv: CSV header lacks column\(s\) Emotion"):
        scan_meld(bad_header, splits=["dev"])

    undecodable = tmp_path / "undecodable"
    lines = _pick(_raw_lines(meld_csv_dir, "dev"), [1])
    (undecodable / "dev_splits_complete").mkdir(parents=True)
    (undecodable / "dev_sent_emo.csv").write_bytes("\r\n".join(lines).encode("utf-8") + b"\x81\r\n")
    with pytest.raises(AvdaliError, match="not UTF-8 or cp1252"):
        scan_meld(undecodable, splits=["dev"])


def test_parse_timestamp():
    assert parse_timestamp("00:20:57,256") == pytest.approx(1257.256)
    assert parse_timestamp("0:37:01,439") == pytest.approx(2221.439)
    assert parse_timestamp("1:02:03.5") == pytest.approx(3723.5)
    assert parse_timestamp("soon") is None


def test_scan_dispatch(tmp_path):
    touch(tmp_path / "Actor_01" / "01-01-01-01-01-01-01.mp4")
    assert [r.key for r in scan("ravdess", tmp_path).records] == ["01-01-01-01-01-01-01"]
    with pytest.raises(AvdaliError, match="unknown dataset 'iemocap'"):
        scan("iemocap", tmp_path)


# ---------------------------------------------------------------- the synthetic trees of the other fixtures


def test_scans_the_synthetic_fixture_trees(ravdess_src, meld_src):
    ravdess = scan_ravdess(ravdess_src)
    assert ravdess.skipped == []
    assert len({r.meta["actor"] for r in ravdess.records}) == 5  # one actor per fold
    assert {r.split for r in ravdess.records} == {f"fold{k}" for k in range(1, 6)}
    assert all(r.video_path.name.startswith("01-01-") for r in ravdess.records)

    meld = scan_meld(meld_src)
    assert meld.skipped == []
    expected = set()
    for split in ("train", "dev", "test"):
        rows, skipped = read_sent_emo_csv(meld_src / "MELD.Raw" / f"{split}_sent_emo.csv")
        assert skipped == [] and rows
        expected |= {f"{split}_dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}" for r in rows}
    assert {r.key for r in meld.records} == expected


# ---------------------------------------------------------------- the layouts users download (cheap trees)


def _zenodo_per_zip(root: Path, actors=(1, 2)) -> set[str]:
    """Each zip unpacked into a folder named after it: what Zenodo's "extract here" and the Kaggle mirror
    orvile/ravdess-dataset hold. Returns the audio-video speech stems (the samples)."""
    stems = set()
    for a in actors:
        for stem in _speech_trials(a):
            touch(root / f"Video_Speech_Actor_{a:02d}" / f"Actor_{a:02d}" / f"{stem}.mp4")
            touch(root / f"Video_Speech_Actor_{a:02d}" / f"Actor_{a:02d}" / f"02{stem[2:]}.mp4")
            touch(root / "Audio_Speech_Actors_01-24" / f"Actor_{a:02d}" / f"03{stem[2:]}.wav")
            stems.add(stem)
        song = f"01-02-03-01-01-01-{a:02d}"
        touch(root / f"Video_Song_Actor_{a:02d}" / f"Actor_{a:02d}" / f"{song}.mp4")
        touch(root / "Audio_Song_Actors_01-24" / f"Actor_{a:02d}" / f"03{song[2:]}.wav")
    return stems


def _all_in_one(root: Path) -> set[str]:
    _real_layout(root)
    return {s for a in (1, 2) for s in _speech_trials(a)}


@pytest.mark.parametrize(
    "layout, mount",
    [
        ("all_in_one", "."),
        ("per_zip", "."),  # Zenodo one folder per zip == the Kaggle mirror's tree
        ("per_zip", "RAVDESS dataset"),  # mirror adrivg/ravdess-emotional-speech-video
        ("per_zip", "kaggle/input/datasets/orvile/ravdess-dataset"),  # newer Kaggle mount, SRC=kaggle/input below
        ("per_zip", "kaggle/input/ravdess-dataset"),  # the seed's Kaggle mount
    ],
)
def test_ravdess_layouts_find_every_av_speech_clip(tmp_path, layout, mount):
    dataset = tmp_path / mount
    stems = (_all_in_one if layout == "all_in_one" else _zenodo_per_zip)(dataset)
    touch(dataset / "__MACOSX" / "Actor_01" / "._01-01-01-01-01-01-01.mp4")  # zip leftovers: not a copy of the tree
    src = tmp_path / "kaggle" / "input" if mount.startswith("kaggle/") else tmp_path
    result = scan_ravdess(src)
    assert {r.key for r in result.records} == stems and len(result.records) == len(stems)
    assert result.skipped == []
    assert result.splits == ["fold1", "fold5"]
    if layout == "per_zip":
        songs = {r.key for r in scan_ravdess(src, include_song=True).records} - stems
        assert songs == {"01-02-03-01-01-01-01", "01-02-03-01-01-01-02"}


def test_ravdess_splits_picks_folds_and_zips_still_packed_are_named(tmp_path):
    _zenodo_per_zip(tmp_path / "data", actors=(1, 2, 3))  # folds 5, 1, 2
    picked = scan_ravdess(tmp_path / "data", splits=["fold2", "fold4"])
    assert {r.split for r in picked.records} == {"fold2"} and picked.skipped == []
    assert picked.splits == ["fold2", "fold4"]  # asked for: the packer reports fold4 as empty
    with pytest.raises(AvdaliError, match="--splits: unknown RAVDESS split train; expected some of fold1,fold2,fold3,fold4,fold5"):
        scan_ravdess(tmp_path / "data", splits=["train"])

    packed = tmp_path / "zips"
    touch(packed / "Video_Speech_Actor_01.zip")
    touch(packed / "Audio_Speech_Actors_01-24.zip")
    with pytest.raises(AvdaliError) as e:
        scan_ravdess(packed)
    assert str(e.value) == (
        f"{packed}: no Actor_XX folders found (looked 6 levels down, 1 folders); expected the RAVDESS layout "
        "Actor_01/01-01-01-01-01-01-01.mp4 … Actor_24/… (the Video_Speech_Actor_XX.zip files unpacked, or the Kaggle "
        "mirror's Video_Speech_Actor_XX/Actor_XX/); zip files still packed: Audio_Speech_Actors_01-24.zip, "
        'Video_Speech_Actor_01.zip (unzip them, see README "Real data")'
    )


MELD_CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def _meld_split(csv_path: Path, clip_dir: Path, meld_csv_dir: Path, split: str, rows: int = 3) -> set[str]:
    """The first ``rows`` real rows of a split as its CSV, a placeholder clip per row; returns their keys."""
    lines = _raw_lines(meld_csv_dir, split)[: rows + 1]
    _write_csv(csv_path, lines)
    keys = set()
    for fields in csv.reader(lines[1:]):
        dia, utt = fields[MELD_COLUMNS.index("Dialogue_ID")], fields[MELD_COLUMNS.index("Utterance_ID")]
        touch(clip_dir / f"dia{dia}_utt{utt}.mp4")
        keys.add(f"{split}_dia{dia}_utt{utt}")
    clip_dir.mkdir(parents=True, exist_ok=True)
    return keys


def _meld_kaggle(root: Path, csv_dir: Path) -> set[str]:
    """zaber666/meld-dataset: MELD-RAW/MELD.Raw/, train's CSV inside train/, dev's and test's beside their folders."""
    base = root / "MELD-RAW" / "MELD.Raw"
    keys = _meld_split(base / "train" / "train_sent_emo.csv", base / "train" / "train_splits", csv_dir, "train")
    for split in ("dev", "test"):
        keys |= _meld_split(base / f"{split}_sent_emo.csv", base / split / MELD_CLIP_DIRS[split], csv_dir, split)
    touch(root / "__MACOSX" / "MELD-RAW" / "MELD.Raw" / "train" / "train_splits" / "._dia0_utt0.mp4")
    return keys


def _meld_in_place(root: Path, csv_dir: Path) -> set[str]:
    """Release: MELD.Raw.tar.gz unpacked, the inner archives unpacked in place (their folders in MELD.Raw/)."""
    base = root / "MELD.Raw"
    keys = set()
    for split in ("train", "dev", "test"):
        touch(base / f"{split}.tar.gz")
        keys |= _meld_split(base / f"{split}_sent_emo.csv", base / MELD_CLIP_DIRS[split], csv_dir, split)
    return keys


def _meld_beside(root: Path, csv_dir: Path) -> set[str]:
    """Release: the inner archives unpacked beside MELD.Raw/ (which keeps the CSVs)."""
    keys = set()
    for split in ("train", "dev", "test"):
        touch(root / "MELD.Raw" / f"{split}.tar.gz")
        keys |= _meld_split(root / "MELD.Raw" / f"{split}_sent_emo.csv", root / MELD_CLIP_DIRS[split], csv_dir, split)
    return keys


def _meld_macos(root: Path, csv_dir: Path) -> set[str]:
    """Release unpacked on macOS: each archive into a folder named after it, the CSV inside the clip folder."""
    base = root / "MELD.Raw"
    keys = set()
    for split in ("train", "dev", "test"):
        clips = base / split / MELD_CLIP_DIRS[split]
        keys |= _meld_split(clips / f"{split}_sent_emo.csv", clips, csv_dir, split)
    return keys


@pytest.mark.parametrize(
    "layout, src",
    [
        (_meld_kaggle, "."),  # the dataset folder (/kaggle/input/meld-dataset)
        (_meld_kaggle, "MELD-RAW"),
        (_meld_kaggle, "MELD-RAW/MELD.Raw"),  # the seed notebook's root
        (_meld_kaggle, "../.."),  # /kaggle/input itself, the dataset two levels down
        (_meld_in_place, "."),
        (_meld_in_place, "MELD.Raw"),
        (_meld_beside, "."),
        (_meld_macos, "."),
        (_meld_macos, "MELD.Raw"),
    ],
)
def test_meld_layouts_find_every_split(tmp_path, meld_csv_dir, layout, src):
    dataset = tmp_path / "input" / "meld-dataset" if src == "../.." else tmp_path
    keys = layout(dataset, meld_csv_dir)
    result = scan_meld(tmp_path if src == "../.." else tmp_path / src)
    assert {r.key for r in result.records} == keys and len(keys) == 9
    assert result.skipped == [] and result.splits == ["train", "dev", "test"]
