"""A MELD look-alike tree driven by the real label CSVs: real rows, ids, speakers and timings,
synthetic clips.

Layout ``release`` (the default: ``MELD.Raw.tar.gz`` and its inner archives unpacked, each into a folder
named after it)::

    OUT/MELD.Raw/{train,dev,test}_sent_emo.csv        subset of the real rows, CRLF, in ``encoding``
    OUT/MELD.Raw/train/train_splits/dia{D}_utt{U}.mp4
    OUT/MELD.Raw/dev/dev_splits_complete/…
    OUT/MELD.Raw/test/output_repeated_splits_test/…

Layout ``kaggle`` (the zaber666/meld-dataset mirror): the same under ``OUT/MELD-RAW/MELD.Raw/``, except that
the train CSV lies in ``train/`` beside ``train_splits/``. The clips' bytes do not depend on the layout.

``faults=True`` imitates the release's known bad files (DATASETS.md) and records them in the
summary and in ``OUT/avdali_synth.json``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.labels import MELD_TO_UNIFIED
from avdali.synth.clip import ClipJob
from avdali.synth.identity import Identity, make_identity, seeded_rng
from avdali.synth.jobs import Fault, Progress, SynthSummary, check_size, check_workers, timed_render
from avdali.synth.voice import Speech

SPLITS = ("train", "dev", "test")
CLIP_DIRS = {
    "train": "train/train_splits",
    "dev": "dev/dev_splits_complete",
    "test": "test/output_repeated_splits_test",
}
"""Where each split's clips live under ``MELD.Raw`` (the inner archives' folder names)."""
CSV_NAME = "{split}_sent_emo.csv"
LAYOUTS = ("release", "kaggle")
"""``release``: the official archives unpacked; ``kaggle``: the Kaggle mirror's tree."""
MELD_ROOT = {"release": "MELD.Raw", "kaggle": "MELD-RAW/MELD.Raw"}
"""Layout → the folder under OUT that holds the CSVs and the split folders."""
CSV_DIR = {"release": {}, "kaggle": {"train": "train"}}
"""Layout → split → folder under the MELD root holding its CSV, when not the root itself."""
FPS = Fraction(24000, 1001)
MIN_SECONDS = 1.0
"""Shortest clip written: a handful of CSV rows last a few milliseconds (or zero)."""
ENCODINGS = ("utf-8", "cp1252")
EXTRA_CLIP = ("test", "final_videos_testdia101_utt0")
"""The real release's best-known clip without a CSV row."""
MAIN_CAST_FEMALE = {"Monica": True, "Rachel": True, "Phoebe": True, "Chandler": False, "Joey": False, "Ross": False}

# Which split each fault goes to first (as in the real release), then the fallbacks for tiny trees.
_FAULT_SPLITS = {
    "missing": ("dev", "train", "test"),
    "truncated": ("train", "dev", "test"),
    "empty": ("train", "test", "dev"),
    "no_audio": ("test", "dev", "train"),
}
_PARTIAL_SPLITS = {
    "no_audio": ("test", "dev", "train"),
    "no_video": ("train", "dev", "test"),
    "black_video": ("dev", "train", "test"),
    "black_no_audio": ("test", "train", "dev"),
}
"""``partial=True``: clips that lack a stream (what ``avdali shard --keep-partial`` packs), one of each kind."""
_TIME = re.compile(r"^(\d+):(\d{2}):(\d{2}),(\d+)$")


@dataclass(frozen=True)
class MeldRow:
    """One CSV row we keep."""

    split: str
    """``train``, ``dev`` or ``test``."""
    line: int
    """Row number in the real CSV (1 = first data row)."""
    fields: tuple[str, ...]
    """The row's fields exactly as in the real CSV."""
    emotion: str
    """MELD emotion string (``joy`` …)."""
    speaker: str
    """Speaker column."""
    clip: str
    """``dia{D}_utt{U}``."""
    seconds: float
    """EndTime - StartTime from the CSV."""


def parse_time(text: str, where: str) -> float:
    """``"0:20:57,256"`` → seconds (hours may be one digit; the fraction is decimal: ``,25`` = 0.25 s)."""
    m = _TIME.match(text.strip())
    if not m:
        raise AvdaliError(f"{where}: bad time {text!r}, expected H:MM:SS,mmm")
    h, mi, s, frac = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + float("0." + frac)


def read_rows(csv_path: Path, split: str) -> tuple[list[str], list[MeldRow]]:
    """Header and rows of a real MELD CSV (UTF-8, as in the official repository)."""
    if not csv_path.is_file():
        raise AvdaliError(f"{csv_path}: MELD label file not found (need {CSV_NAME.format(split=split)} in --csv-dir)")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise AvdaliError(f"{csv_path}: empty file")
    header = rows[0]
    need = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime")
    missing = [c for c in need if c not in header]
    if missing:
        raise AvdaliError(f"{csv_path}: missing column(s) {', '.join(missing)}")
    col = {c: header.index(c) for c in need}
    out = []
    for line, fields in enumerate(rows[1:], 1):
        where = f"{csv_path}:{line + 1}"
        if len(fields) != len(header):
            raise AvdaliError(f"{where}: {len(fields)} fields, header has {len(header)}")
        emotion = fields[col["Emotion"]].strip().lower()
        if emotion not in MELD_TO_UNIFIED:
            raise AvdaliError(f"{where}: unknown emotion {fields[col['Emotion']]!r}")
        seconds = parse_time(fields[col["EndTime"]], where) - parse_time(fields[col["StartTime"]], where)
        clip = f"dia{fields[col['Dialogue_ID']].strip()}_utt{fields[col['Utterance_ID']].strip()}"
        out.append(MeldRow(split, line, tuple(fields), emotion, fields[col["Speaker"]], clip, seconds))
    return header, out


def stratified_counts(counts: dict[str, int], limit: int) -> dict[str, int]:
    """How many rows of each emotion to keep: at least one of every emotion the split has (when the
    limit allows; else the most frequent ones), the rest in proportion to the split's own counts."""
    total = sum(counts.values())
    if limit >= total:
        return dict(counts)
    present = sorted((e for e in counts if counts[e] > 0), key=lambda e: (-counts[e], e))
    if limit <= len(present):
        return {e: 1 for e in present[:limit]}
    keep = {e: 1 for e in present}
    spare = limit - len(present)
    rest = {e: counts[e] - 1 for e in present}
    rest_total = sum(rest.values())
    shares = {e: spare * rest[e] / rest_total for e in present}
    for e in present:
        keep[e] += int(shares[e])
    # Largest remainders get the rows still unassigned.
    left = limit - sum(keep.values())
    for e in sorted(present, key=lambda e: (-(shares[e] - int(shares[e])), e))[:left]:
        keep[e] += 1
    return keep


def select_rows(rows: list[MeldRow], limit: int | None, *, seed: int) -> list[MeldRow]:
    """A stratified, seed-deterministic subset of ``limit`` rows, in CSV order (all rows when None)."""
    if limit is None:
        return list(rows)
    by_emotion: dict[str, list[MeldRow]] = {}
    for row in rows:
        by_emotion.setdefault(row.emotion, []).append(row)
    keep = stratified_counts({e: len(v) for e, v in by_emotion.items()}, limit)
    chosen = []
    for emotion, k in keep.items():
        pool = by_emotion[emotion]
        rng = seeded_rng(seed, "meld-rows", rows[0].split if rows else "", emotion)
        idx = rng.choice(len(pool), size=k, replace=False)
        chosen += [pool[i] for i in idx]
    return sorted(chosen, key=lambda r: r.line)


def csv_bytes(header: list[str], rows: list[MeldRow], encoding: str) -> bytes:
    """The CSV subset as the release writes it: CRLF, fields quoted only where needed (as the real files)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(r.fields for r in rows)
    return buf.getvalue().encode(encoding)


def speaker_identity(speaker: str, seed: int, cache: dict[str, Identity]) -> Identity:
    """One identity per speaker name; the six friends get their gender, others a seeded guess."""
    if speaker not in cache:
        name = speaker.strip() or "Unknown"
        female = MAIN_CAST_FEMALE.get(name)
        if female is None:
            female = bool(seeded_rng(seed, "meld-gender", name).integers(2))
        cache[speaker] = make_identity(f"meld:{name}", female=female, seed=seed)
    return cache[speaker]


def csv_path(out: Path, split: str, layout: str = "release") -> Path:
    """Where a layout puts a split's label CSV."""
    return Path(out) / MELD_ROOT[layout] / CSV_DIR[layout].get(split, "") / CSV_NAME.format(split=split)


def _clip_job(
    *, out: Path, layout: str, split: str, clip: str, emotion: str, speaker: str, seconds: float, max_seconds: float,
    size: tuple[int, int], seed: int, identities: dict[str, Identity], fault: str | None,
) -> ClipJob:  # fmt: skip
    duration = min(max(seconds, MIN_SECONDS), max_seconds)
    rng = seeded_rng(seed, "meld-timing", split, clip)
    start = rng.uniform(0.05, min(0.3, duration * 0.2))
    end = max(start + 0.5, duration - rng.uniform(0.05, min(0.3, duration * 0.2)))
    return ClipJob(
        name=f"{split}/{clip}",
        identity=speaker_identity(speaker, seed, identities),
        emotion=MELD_TO_UNIFIED[emotion],
        intensity=float(rng.uniform(0.65, 1.0)),
        duration=round(float(duration), 3),
        speech=Speech(start=float(start), end=float(min(end, duration))),
        fps=FPS,
        size=size,
        seed=(seed, "meld", split, clip),
        mp4_path=out / MELD_ROOT[layout] / CLIP_DIRS[split] / f"{clip}.mp4",
        fault=fault,
    )


def _assign_faults(selected: dict[str, list[MeldRow]], seed: int, kinds: dict | None = None) -> dict[tuple[str, str], str]:
    """(split, clip) → fault kind, one of each kind, on distinct rows, where the real release had it."""
    faults: dict[tuple[str, str], str] = {}
    for kind, splits in (kinds or _FAULT_SPLITS).items():
        for split in splits:
            free = [r for r in selected[split] if (split, r.clip) not in faults]
            if free:
                row = free[int(seeded_rng(seed, "meld-fault", kind).integers(len(free)))]
                faults[(split, row.clip)] = kind
                break
    return faults


def plan_meld(
    out: Path,
    *,
    csv_dir: Path,
    limit: int | None = 50,
    size: tuple[int, int] = (1280, 720),
    max_seconds: float = 6.0,
    seed: int = 0,
    faults: bool = False,
    layout: str = "release",
    partial: bool = False,
) -> tuple[dict[str, bytes], list[ClipJob], list[Fault]]:
    """Dry run: the CSV subsets (``{split: header+rows}`` as utf-8 bytes), the render jobs and the faults
    (``partial``: also the clips lacking a stream, ``_PARTIAL_SPLITS``)."""
    size = check_size(size)
    if layout not in LAYOUTS:
        raise AvdaliError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if limit is not None and limit < 1:
        raise AvdaliError(f"--limit must be ≥ 1, got {limit}")
    if max_seconds < MIN_SECONDS:
        raise AvdaliError(f"--max-seconds must be ≥ {MIN_SECONDS}, got {max_seconds}")
    csv_dir = Path(csv_dir)
    out = Path(out)
    headers, selected = {}, {}
    for split in SPLITS:
        header, rows = read_rows(csv_dir / CSV_NAME.format(split=split), split)
        headers[split], selected[split] = header, select_rows(rows, limit, seed=seed)
    kinds = {**(_FAULT_SPLITS if faults else {}), **(_PARTIAL_SPLITS if partial else {})}
    fault_of = _assign_faults(selected, seed, kinds) if kinds else {}

    identities: dict[str, Identity] = {}
    jobs, fault_list = [], []
    for split in SPLITS:
        for row in selected[split]:
            kind = fault_of.get((split, row.clip))
            job = _clip_job(
                out=out, layout=layout, split=split, clip=row.clip, emotion=row.emotion, speaker=row.speaker, seconds=row.seconds,
                max_seconds=max_seconds, size=size, seed=seed, identities=identities, fault=kind,
            )  # fmt: skip
            jobs.append(job)
            if kind:
                fault_list.append(Fault(split, row.clip, kind, job.mp4_path))
    if faults:
        split, clip = EXTRA_CLIP
        rng = seeded_rng(seed, "meld-extra")
        job = _clip_job(
            out=out, layout=layout, split=split, clip=clip, emotion=str(rng.choice(sorted(MELD_TO_UNIFIED))), speaker="Unknown",
            seconds=float(rng.uniform(2, 4)), max_seconds=max_seconds, size=size, seed=seed, identities=identities,
            fault=None,
        )  # fmt: skip
        jobs.append(job)
        fault_list.append(Fault(split, clip, "unlabelled", job.mp4_path))
    tables = {split: csv_bytes(headers[split], selected[split], "utf-8") for split in SPLITS}
    return tables, jobs, fault_list


def make_meld(
    out: Path,
    *,
    csv_dir: Path,
    limit: int | None = 50,
    size: tuple[int, int] = (1280, 720),
    max_seconds: float = 6.0,
    seed: int = 0,
    encoding: str = "utf-8",
    faults: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    layout: str = "release",
    partial: bool = False,
) -> SynthSummary:
    """Write a MELD-like tree under ``out``: ``limit`` stratified real rows per split (None: all), a
    clip per row lasting the row's EndTime-StartTime (at least 1 s, at most ``max_seconds``). ``partial`` adds one
    clip each with no audio stream, no video stream, all-black frames, and black frames without audio."""
    check_workers(workers)
    if encoding not in ENCODINGS:
        raise AvdaliError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    out = Path(out)
    tables, jobs, fault_list = plan_meld(
        out, csv_dir=csv_dir, limit=limit, size=size, max_seconds=max_seconds, seed=seed, faults=faults, layout=layout,
        partial=partial,
    )
    meld_root = out / MELD_ROOT[layout]
    meld_root.mkdir(parents=True, exist_ok=True)
    csv_files = []
    for split, data in tables.items():
        path = csv_path(out, split, layout)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.decode("utf-8").encode(encoding))
        csv_files.append(path)
    for split in SPLITS:
        (meld_root / CLIP_DIRS[split]).mkdir(parents=True, exist_ok=True)
    files, seconds = timed_render(jobs, workers=workers, progress=progress)
    record = {
        "dataset": "meld",
        "seed": seed,
        "limit": limit,
        "size": list(check_size(size)),
        "max_seconds": max_seconds,
        "encoding": encoding,
        **({"layout": layout} if layout != "release" else {}),  # the default tree's bytes stay as they were
        **({"partial": True} if partial else {}),
        "clips": len(jobs),
        "faults": [{"split": f.split, "clip": f.clip, "kind": f.kind, "path": str(f.path.relative_to(out))} for f in fault_list],
    }
    (out / "avdali_synth.json").write_text(json.dumps(record, indent=2) + "\n")
    return SynthSummary(root=out, dataset="meld", clips=len(jobs), files=csv_files + files, seconds=seconds, faults=fault_list)


MELD_CSV_RELATIVE = Path("shared/datasets/meld")
"""Where a checkout keeps the real MELD label CSVs, relative to a folder above it (the synth and demo default)."""


def find_meld_csv_dir(start_points: list[Path]) -> Path | None:
    """Walk up from each start point looking for ``shared/datasets/meld/train_sent_emo.csv``."""
    for start in start_points:
        for folder in [start, *start.parents]:
            candidate = folder / MELD_CSV_RELATIVE
            if (candidate / "train_sent_emo.csv").is_file():
                return candidate
    return None
