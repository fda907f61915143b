"""MELD reader: join the ``{split}_sent_emo.csv`` rows to their ``dia{D}_utt{U}.mp4`` clips.

Accepted layouts, looked up under ``root/MELD.Raw/`` and under ``root/`` (CSVs and clip folders
independently, so CSVs beside a ``MELD.Raw`` folder work too):

- CSVs: ``{train,dev,test}_sent_emo.csv``;
- clip folders: ``train/train_splits``, ``dev/dev_splits_complete``, ``test/output_repeated_splits_test``
  (the inner archives unpacked into folders named after them), or the same folders directly.

The CSVs come UTF-8 (with or without BOM) from the MELD repository and cp1252 inside the release
archive; both are read. Every row and clip that cannot become a sample is reported in
``Scan.skipped`` with a one-line reason; a split with no CSV or no clip folder is skipped as a whole.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.labels import meld_unified_id
from avdali.sources.records import ClipRecord, Scan, Skipped

SPLITS = ("train", "dev", "test")
"""MELD's splits, in the order they are scanned."""

CLIP_DIRS = {
    "train": ("train/train_splits", "train_splits"),
    "dev": ("dev/dev_splits_complete", "dev_splits_complete"),
    "test": ("test/output_repeated_splits_test", "output_repeated_splits_test"),
}
"""Split → clip folder locations tried under each base folder, first match wins."""

BASES = ("MELD.Raw", ".")
"""Folders under the root that may hold the CSVs and clip folders: the release's ``MELD.Raw`` first."""

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
    "expected the MELD layout MELD.Raw/{train,dev,test}_sent_emo.csv with clip folders "
    "MELD.Raw/train/train_splits, MELD.Raw/dev/dev_splits_complete, MELD.Raw/test/output_repeated_splits_test "
    "(or the same without MELD.Raw/, or train_splits/ … directly under the root)"
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


def scan_meld(root: Path) -> Scan:
    """Records for every CSV row whose clip exists, under ``root``; records sorted by (split, key).

    Raises ``AvdaliError`` when the root is missing or no split has both its CSV and its clip folder.
    """
    root = Path(root)
    if not root.exists():
        raise AvdaliError(f"{root}: MELD root not found")
    if not root.is_dir():
        raise AvdaliError(f"{root}: MELD root is not a folder")

    records: list[ClipRecord] = []
    skipped: list[Skipped] = []
    usable_splits = 0
    for split in SPLITS:
        csv_path = _first_existing(root, [f"{base}/{csv_name(split)}" for base in BASES], want_dir=False)
        clip_dir = _first_existing(root, [f"{base}/{d}" for base in BASES for d in CLIP_DIRS[split]], want_dir=True)
        if csv_path is None:
            skipped.append(Skipped(csv_name(split), f"label CSV not found; split {split} skipped"))
            continue
        if clip_dir is None:
            hint = " (is the archive unpacked?)" if any((root / b / f"{split}.tar.gz").exists() for b in BASES) else ""
            tried = ", ".join(CLIP_DIRS[split])
            skipped.append(Skipped(split, f"clip folder not found ({tried}){hint}; split {split} skipped"))
            continue
        usable_splits += 1
        split_records, split_skipped = _scan_split(root, split, csv_path, clip_dir)
        records += split_records
        skipped += split_skipped

    if usable_splits == 0:
        raise AvdaliError(f"{root}: no MELD split with both its label CSV and its clip folder; {_EXPECTED}")
    records.sort(key=lambda r: (r.split, r.key))
    return Scan(records, skipped)


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


def _first_existing(root: Path, candidates: list[str], *, want_dir: bool) -> Path | None:
    for rel in candidates:
        path = root / rel
        if path.is_dir() if want_dir else path.is_file():
            return path
    return None
