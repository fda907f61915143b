"""MELD reader: join the ``{split}_sent_emo.csv`` rows to their ``dia{D}_utt{U}.mp4`` clips.

Accepted layouts, found without flags wherever SRC sits in them (``find_split_files``):

- the Kaggle mirror (zaber666/meld-dataset): ``MELD-RAW/MELD.Raw/train/train_sent_emo.csv`` +
  ``train/train_splits/``, ``dev_sent_emo.csv`` + ``dev/dev_splits_complete/``, ``test_sent_emo.csv`` +
  ``test/output_repeated_splits_test/``, with SRC the dataset folder, ``MELD-RAW`` or ``MELD.Raw``;
- the official release, the inner archives unpacked in place (``MELD.Raw/train_splits/``), into folders
  named after them (``MELD.Raw/train/train_splits/``, macOS) or beside ``MELD.Raw``; macOS unpacking also
  puts a split's CSV inside its clip folder.

A clip folder is found by its name (``CLIP_DIR_NAMES``) up to ``MAX_DEPTH`` levels below SRC; its CSV is
looked for inside it, beside it, one level further up, then anywhere the walk saw one. The CSVs come UTF-8
(with or without BOM) from the MELD repository and cp1252 inside the release archive; both are read.

A split with clips but no CSV, a CSV but no clips, or neither (while another split is there) is an
``AvdaliError`` naming what was found and where the rest was looked for: a split is never dropped
silently. ``splits`` packs a subset on purpose. Every row and clip that cannot become a sample is
reported in ``Scan.skipped`` with a one-line reason.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.labels import meld_unified_id
from avdali.sources.records import ClipRecord, Scan, Skipped, check_splits

SPLITS = ("train", "dev", "test")
"""MELD's splits, in the order they are scanned."""

CLIP_DIR_NAMES = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
"""Split → the name of its clip folder (what the release's inner archive unpacks to)."""

MAX_DEPTH = 6
"""How deep below SRC clip folders and CSVs are looked for: the Kaggle dataset folder holds them 4 levels down
(``MELD-RAW/MELD.Raw/train/train_splits``), and SRC may be a folder or two above it (``/kaggle/input``)."""

MAX_FOLDERS = 20_000
"""Folders the search visits at most, so a wrong SRC (a home folder) fails fast instead of walking a disk."""

_IGNORED_DIRS = ("__MACOSX",)
"""macOS zip leftovers: they mirror the real folder names but hold ``._*`` resource forks."""

COLUMNS = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
"""The columns every ``*_sent_emo.csv`` has (matched by name, so their order does not matter)."""

_INT_COLUMNS = ("Sr No.", "Dialogue_ID", "Utterance_ID", "Season", "Episode")
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")
_EXPECTED = (
    "expected the clip folders train_splits, dev_splits_complete, output_repeated_splits_test and "
    "{train,dev,test}_sent_emo.csv (MELD.Raw/ of the release unpacked, or the Kaggle mirror's MELD-RAW/MELD.Raw/)"
)


def csv_name(split: str) -> str:
    """File name of a split's label CSV, e.g. ``train_sent_emo.csv``."""
    return f"{split}_sent_emo.csv"


def clip_name(dialogue_id: int, utterance_id: int) -> str:
    """File name of the clip of a CSV row, e.g. ``dia3_utt1.mp4``."""
    return f"dia{dialogue_id}_utt{utterance_id}.mp4"


def clip_key(split: str, dialogue_id: int, utterance_id: int) -> str:
    """Sample key: the split is part of it because the same dialogue/utterance ids exist in every split."""
    return f"{split}_dia{dialogue_id}_utt{utterance_id}"


def read_sent_emo_csv(path: Path) -> tuple[list[dict[str, str]], list[Skipped]]:
    """Rows of a ``*_sent_emo.csv`` as dicts keyed by ``COLUMNS`` (with ``_line``: the row's first line),
    plus a Skipped for each row with the wrong number of fields.

    Tries UTF-8 strictly (a BOM is dropped), then cp1252. ``AvdaliError`` if the file is neither,
    or its header lacks a column of ``COLUMNS``.
    """
    text = decode_csv_bytes(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise AvdaliError(f"{path}: empty CSV; expected the header {','.join(COLUMNS)}")
    header = [h.strip() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise AvdaliError(f"{path}: CSV header lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    index = {c: header.index(c) for c in COLUMNS}

    rows: list[dict[str, str]] = []
    skipped: list[Skipped] = []
    line = reader.line_num + 1
    for fields in reader:
        start, line = line, reader.line_num + 1  # a quoted field may span lines: report where the row starts
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line (e.g. a trailing one)
        if len(fields) != len(header):
            skipped.append(Skipped(f"{path.name}:{start}", f"expected {len(header)} fields, got {len(fields)}"))
            continue
        row = {c: fields[i] for c, i in index.items()}
        row["_line"] = str(start)
        rows.append(row)
    return rows, skipped


def decode_csv_bytes(path: Path) -> str:
    """Text of a CSV file: UTF-8 (BOM dropped) if it decodes strictly, else cp1252 (the release's copies)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{data[e.start]:02x} at offset {e.start}"
        raise AvdaliError(f"{path}: not UTF-8 or cp1252 text ({bad})") from None


def parse_timestamp(value: str) -> float | None:
    """``"00:20:57,256"`` (H:MM:SS,mmm) → seconds; None when the field is not such a time."""
    m = _TIME.match(value.strip())
    if not m:
        return None
    h, mnt, s, ms = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


@dataclass
class MeldTree:
    """What the search under SRC found: clip folders and label CSVs per split, and packed archives."""

    clip_dirs: dict[str, list[Path]] = field(default_factory=dict)
    """Split → folders named like its clip folder, shallowest first."""
    csvs: dict[str, list[Path]] = field(default_factory=dict)
    """Split → ``{split}_sent_emo.csv`` files seen by the walk, shallowest first."""
    archives: list[Path] = field(default_factory=list)
    """``*.tar.gz`` / ``*.zip`` files seen (a hint when nothing is unpacked)."""
    folders: int = 0
    """Folders visited."""


def find_meld_tree(root: Path) -> MeldTree:
    """Walk at most ``MAX_DEPTH`` levels (and ``MAX_FOLDERS`` folders) below ``root``, in sorted order.

    Clip folders are not entered (they hold thousands of clips and nothing else the walk needs)."""
    tree = MeldTree({s: [] for s in SPLITS}, {s: [] for s in SPLITS})
    by_name = {name: split for split, name in CLIP_DIR_NAMES.items()}
    csv_split = {csv_name(split): split for split in SPLITS}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        tree.folders += 1
        depth = len(here.relative_to(root).parts)
        for name in sorted(filenames):
            if name in csv_split:
                tree.csvs[csv_split[name]].append(here / name)
            elif name.endswith((".tar.gz", ".zip")) and not name.startswith("."):
                tree.archives.append(here / name)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d in _IGNORED_DIRS:
                continue
            if d in by_name:
                tree.clip_dirs[by_name[d]].append(here / d)
                continue
            keep.append(d)
        dirnames[:] = keep if depth < MAX_DEPTH and tree.folders < MAX_FOLDERS else []
    if root.name in by_name:  # SRC is a clip folder itself
        tree.clip_dirs[by_name[root.name]].insert(0, root)
    for found in (*tree.clip_dirs.values(), *tree.csvs.values()):
        found.sort(key=lambda p: (len(p.parts), str(p)))
    return tree


def _csv_for(split: str, clip_dir: Path, root: Path, tree: MeldTree) -> Path | None:
    """The split's CSV: inside its clip folder (macOS), beside it (in place), one level up (Kaggle's dev/test
    CSVs beside ``dev/``), else the shallowest one the walk saw (archives unpacked beside ``MELD.Raw``)."""
    name = csv_name(split)
    for folder in (clip_dir, clip_dir.parent, clip_dir.parent.parent):
        if (folder / name).is_file() and (folder == root or root in folder.parents):
            return folder / name
    return tree.csvs[split][0] if tree.csvs[split] else None


def _shown(path: Path, root: Path) -> str:
    return str(path) if path == root else f"{root}/{path.relative_to(root).as_posix()}"


def find_split_files(root: Path, splits: tuple[str, ...]) -> tuple[dict[str, tuple[Path, Path]], MeldTree]:
    """Split → (label CSV, clip folder) for each of ``splits``; ``AvdaliError`` naming both paths when a split
    has one and not the other, or neither while another split is there."""
    tree = find_meld_tree(root)
    found: dict[str, tuple[Path, Path]] = {}
    problems: list[str] = []
    missing: list[str] = []
    for split in splits:
        clip_dirs = tree.clip_dirs[split]
        csv_path = _csv_for(split, clip_dirs[0], root, tree) if clip_dirs else (tree.csvs[split] or [None])[0]
        if clip_dirs and csv_path is not None:
            found[split] = (csv_path, clip_dirs[0])
        elif clip_dirs:
            d = clip_dirs[0]
            problems.append(
                f"split {split}: clips in {_shown(d, root)} but no {csv_name(split)} inside it, beside it "
                f"({_shown(d.parent, root)}) or one level up, nor anywhere within {MAX_DEPTH} levels below {root}"
            )
        elif csv_path is not None:
            archive = next((a for a in tree.archives if a.name.startswith(f"{split}.")), None)
            hint = f"; {_shown(archive, root)} is still packed: unpack it" if archive else ""
            problems.append(
                f"split {split}: labels in {_shown(csv_path, root)} but no clip folder {CLIP_DIR_NAMES[split]}/ "
                f"within {MAX_DEPTH} levels below {root}{hint}"
            )
        else:
            missing.append(split)
    if not found and not problems:
        archives = ", ".join(_shown(a, root) for a in tree.archives[:3])
        hint = f"; archives still packed: {archives} (unpack them, see README \"Real data\")" if archives else ""
        raise AvdaliError(
            f"{root}: no MELD split found (looked {MAX_DEPTH} levels down, {tree.folders} folders); {_EXPECTED}{hint}"
        )
    for split in missing:
        problems.append(
            f"split {split}: neither {CLIP_DIR_NAMES[split]}/ nor {csv_name(split)} within {MAX_DEPTH} levels below {root}"
        )
    if problems:
        others = [s for s in splits if s in found]
        subset = f"; to pack only {','.join(others)} on purpose, pass --splits {','.join(others)}" if others else ""
        raise AvdaliError("; ".join(problems) + subset)
    return found, tree


def scan_meld(root: Path, splits=None) -> Scan:
    """Records for every CSV row whose clip exists, under ``root``; records sorted by (split, key).

    ``splits`` (default all three) are the splits to read; each must have both its CSV and its clip folder.
    Raises ``AvdaliError`` when the root is missing, or a split lacks its CSV or its clips (``find_split_files``).
    """
    root = Path(root)
    if not root.exists():
        raise AvdaliError(f"{root}: MELD root not found")
    if not root.is_dir():
        raise AvdaliError(f"{root}: MELD root is not a folder")
    wanted = check_splits(splits, SPLITS, "MELD")
    found, _ = find_split_files(root, wanted)

    records: list[ClipRecord] = []
    skipped: list[Skipped] = []
    for split in wanted:
        csv_path, clip_dir = found[split]
        split_records, split_skipped = _scan_split(root, split, csv_path, clip_dir)
        records += split_records
        skipped += split_skipped
    records.sort(key=lambda r: (r.split, r.key))
    return Scan(records, skipped, splits=list(wanted))


def _scan_split(root: Path, split: str, csv_path: Path, clip_dir: Path) -> tuple[list[ClipRecord], list[Skipped]]:
    rows, skipped = read_sent_emo_csv(csv_path)
    clips = {
        p.name: p
        for p in clip_dir.iterdir()
        if p.is_file() and p.suffix.lower() == ".mp4" and not p.name.startswith(".")  # "._x.mp4": macOS forks
    }
    used: set[str] = set()
    records: list[ClipRecord] = []
    for row in rows:
        where = f"{csv_path.name}:{row['_line']}"
        try:
            ids = {c: _parse_int(row, c) for c in _INT_COLUMNS}
            label = meld_unified_id(row["Emotion"])
        except ValueError as e:
            skipped.append(Skipped(where, str(e)))
            continue
        dia, utt = ids["Dialogue_ID"], ids["Utterance_ID"]
        name = clip_name(dia, utt)
        if name in used:
            skipped.append(Skipped(where, f"duplicate row for {name}"))
            continue
        path = clips.get(name)
        if path is None:
            skipped.append(Skipped(where, f"no clip for row ({name} not in {clip_dir.relative_to(root).as_posix()})"))
            continue
        used.add(name)
        if path.stat().st_size == 0:
            skipped.append(Skipped(path.relative_to(root).as_posix(), "empty file"))
            continue
        native = row["Emotion"].strip().lower()
        meta = {
            "speaker": row["Speaker"].strip(),
            "utterance": row["Utterance"],
            "sentiment": row["Sentiment"].strip().lower(),
            "dialogue_id": dia,
            "utterance_id": utt,
            "season": ids["Season"],
            "episode": ids["Episode"],
            # times are kept as metadata only (the clips are already cut), so a bad one is None, not a skip
            "start_time": parse_timestamp(row["StartTime"]),
            "end_time": parse_timestamp(row["EndTime"]),
            "csv_row": ids["Sr No."],
        }
        records.append(
            ClipRecord(
                key=clip_key(split, dia, utt),
                dataset="meld",
                split=split,
                video_path=path,
                label=label,
                native_label=native,
                meta=meta,
            )
        )
    for name in sorted(set(clips) - used):
        skipped.append(Skipped(clips[name].relative_to(root).as_posix(), f"unlabeled clip (no row in {csv_path.name})"))
    return records, skipped


def _parse_int(row: dict[str, str], column: str) -> int:
    value = row[column].strip()
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{column} {row[column]!r} is not a non-negative integer")
    return int(value)
