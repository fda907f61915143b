"""RAVDESS reader: walk a raw tree of ``Actor_XX`` folders and turn the full audio-video clips into records.

Only ``01-…`` (full audio-video) ``.mp4`` files are samples: ``02-…`` mp4s are video-only (no
sound) and ``03-…`` wavs are audio-only, so neither is ever a candidate (DATASETS.md; training on
``02-…`` files as AV samples is a known bug of public notebooks). Any other file inside an
``Actor_XX`` folder whose name is not a valid RAVDESS name is skipped with a one-line reason.

Accepted layouts (``Actor_XX`` folders are searched up to ``MAX_DEPTH`` levels below the root):

- the Zenodo zips unpacked into one folder: ``root/Actor_XX/*.mp4`` plus
  ``root/Audio_Speech_Actors_01-24/Actor_XX/*.wav``, or the wavs beside the mp4s;
- one folder per zip, which is also the Kaggle mirror (orvile/ravdess-dataset):
  ``root/Video_Speech_Actor_XX/Actor_XX/``, ``Video_Song_Actor_XX/Actor_XX/``,
  ``Audio_Speech_Actors_01-24/Actor_XX/``, ``Audio_Song_Actors_01-24/Actor_XX/``;
- any of these mounted deeper: ``root/RAVDESS dataset/Video_Speech_Actor_XX/…``,
  ``/kaggle/input`` → ``datasets/orvile/ravdess-dataset/Video_Speech_Actor_XX/…``.

A file found twice (two copies of the tree under the root) is skipped the second time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from avdali.errors import AvdaliError
from avdali.labels import RAVDESS_EMOTIONS, native_ravdess_id, ravdess_unified_id
from avdali.sources.records import ClipRecord, Scan, Skipped, check_splits

ACTOR_FOLDS: dict[int, tuple[int, ...]] = {
    1: (2, 5, 14, 15, 16),
    2: (3, 6, 7, 13, 18),
    3: (10, 11, 12, 19, 20),
    4: (8, 17, 21, 23, 24),
    5: (1, 4, 9, 22),
}
"""Speaker-independent 5-fold protocol (Luna-Jiménez et al. 2021/2022): fold → its actors."""

STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
"""Statement code SS → the sentence spoken or sung."""

MAX_DEPTH = 6
"""How deep below the root ``Actor_XX`` folders are looked for (root/a/b/c/d/e/Actor_XX at most): deep
enough for ``datasets/orvile/ravdess-dataset/Video_Speech_Actor_XX/Actor_XX`` below ``/kaggle/input``."""

MAX_FOLDERS = 20_000
"""Folders the search visits at most, so a wrong root (a home folder) fails fast instead of walking a disk."""

SPLITS = tuple(f"fold{k}" for k in ACTOR_FOLDS)
"""RAVDESS' splits: the actor folds."""

_IGNORED_DIRS = ("__MACOSX",)
"""macOS zip leftovers: they mirror the real folder names but hold ``._*`` resource forks."""

AV_MODALITY = 1
SPEECH, SONG = 1, 2
_MODALITY_EXT = {1: ".mp4", 2: ".mp4", 3: ".wav"}
_SONG_EMOTIONS = range(1, 7)  # the song recordings have no disgust (07) or surprised (08)
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})(\.[A-Za-z0-9]+)$")
_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")
_EXPECTED = (
    "expected the RAVDESS layout Actor_01/01-01-01-01-01-01-01.mp4 … Actor_24/… "
    "(the Video_Speech_Actor_XX.zip files unpacked, or the Kaggle mirror's Video_Speech_Actor_XX/Actor_XX/)"
)


@dataclass(frozen=True)
class RavdessName:
    """The seven fields of a RAVDESS file name ``MM-VV-EE-II-SS-RR-AA.ext``, as integers."""

    modality: int
    """MM: 1 full audio-video, 2 video-only, 3 audio-only."""
    vocal_channel: int
    """VV: 1 speech, 2 song."""
    emotion: int
    """EE: 1 neutral … 8 surprised (``avdali.labels.RAVDESS_EMOTIONS``)."""
    intensity: int
    """II: 1 normal, 2 strong (neutral has no strong)."""
    statement: int
    """SS: 1 "Kids are talking by the door", 2 "Dogs are sitting by the door"."""
    repetition: int
    """RR: 1 or 2."""
    actor: int
    """AA: 1 … 24; odd actors are male, even female."""
    ext: str
    """The extension in lower case, with its dot (``.mp4`` or ``.wav``)."""

    @property
    def emotion_name(self) -> str:
        """RAVDESS emotion name (``calm``, ``happy`` …)."""
        return RAVDESS_EMOTIONS[f"{self.emotion:02d}"]


def actor_fold(actor: int) -> int:
    """Fold (1-5) that holds ``actor`` (1-24) in the 5-fold actor protocol; ``ValueError`` otherwise."""
    for fold, actors in ACTOR_FOLDS.items():
        if actor in actors:
            return fold
    raise ValueError(f"actor {actor} is not a RAVDESS actor (1-24)")


def parse_ravdess_name(name: str) -> RavdessName:
    """Parse and validate a file name strictly; ``ValueError`` with a one-line reason if it is not valid."""
    m = _NAME.match(name)
    if not m:
        raise ValueError("not a RAVDESS file name MM-VV-EE-II-SS-RR-AA.ext (seven two-digit fields)")
    mm, vv, ee, ii, ss, rr, aa = (int(g) for g in m.groups()[:7])
    ext = m.group(8).lower()
    checks = (
        (mm in (1, 2, 3), f"modality {mm:02d} is not 01 (audio-video), 02 (video-only) or 03 (audio-only)"),
        (vv in (SPEECH, SONG), f"vocal channel {vv:02d} is not 01 (speech) or 02 (song)"),
        (1 <= ee <= 8, f"emotion {ee:02d} is not in 01-08"),
        (ii in (1, 2), f"intensity {ii:02d} is not 01 (normal) or 02 (strong)"),
        (ss in STATEMENTS, f"statement {ss:02d} is not 01 or 02"),
        (rr in (1, 2), f"repetition {rr:02d} is not 01 or 02"),
        (1 <= aa <= 24, f"actor {aa:02d} is not in 01-24"),
        (not (ee == 1 and ii == 2), "neutral (emotion 01) has no strong intensity (02)"),
        (not (vv == SONG and ee not in _SONG_EMOTIONS), f"song (vocal channel 02) has no emotion {ee:02d}"),
    )
    for ok, reason in checks:
        if not ok:
            raise ValueError(reason)
    if ext != _MODALITY_EXT[mm]:
        raise ValueError(f"modality {mm:02d} files are {_MODALITY_EXT[mm]}, not {ext}")
    return RavdessName(mm, vv, ee, ii, ss, rr, aa, ext)


def scan_ravdess(root: Path, *, include_song: bool = False, splits=None) -> Scan:
    """Records for every full audio-video speech clip (and song clip with ``include_song``) under ``root``.

    Split is ``fold{k}`` from ``ACTOR_FOLDS``; records are sorted by (split, key). ``splits`` keeps only those
    folds (they are then planned even when no actor of theirs is there, so the packer reports them empty).
    Raises ``AvdaliError`` when the root is missing or holds no ``Actor_XX`` folder with audio-video mp4s.
    """
    wanted = check_splits(splits, SPLITS, "RAVDESS") if splits is not None else None
    root = Path(root)
    if not root.exists():
        raise AvdaliError(f"{root}: RAVDESS root not found")
    if not root.is_dir():
        raise AvdaliError(f"{root}: RAVDESS root is not a folder")

    actor_dirs, folders, archives = _find_actor_dirs(root)
    if not actor_dirs:
        if _ACTOR_DIR.match(root.name):
            raise AvdaliError(f"{root}: is one actor's folder; pass the folder that holds all Actor_XX folders")
        shown = ", ".join(a.relative_to(root).as_posix() for a in archives[:3])
        hint = f"; zip files still packed: {shown}{' …' if len(archives) > 3 else ''} (unzip them, see README \"Real data\")" if archives else ""
        raise AvdaliError(
            f"{root}: no Actor_XX folders found (looked {MAX_DEPTH} levels down, {folders} folders); {_EXPECTED}{hint}"
        )

    records: list[ClipRecord] = []
    skipped: list[Skipped] = []
    first_seen: dict[str, Path] = {}
    av_candidates = 0
    songs_left_out = 0
    for actor_dir in actor_dirs:
        folder_actor = int(_ACTOR_DIR.match(actor_dir.name).group(1))
        if wanted is not None and 1 <= folder_actor <= 24 and f"fold{actor_fold(folder_actor)}" not in wanted:
            continue  # a fold left out on purpose: neither a record nor a skip
        for path in sorted(p for p in actor_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            source = path.relative_to(root).as_posix()
            try:
                name = parse_ravdess_name(path.name)
            except ValueError as e:
                skipped.append(Skipped(source, str(e)))
                continue
            if name.actor != folder_actor:
                reason = f"actor {name.actor:02d} in the name but the folder is {actor_dir.name}"
                skipped.append(Skipped(source, reason))
                continue
            if name.modality != AV_MODALITY:
                continue  # video-only or audio-only: never an audio-video sample
            av_candidates += 1
            if name.vocal_channel == SONG and not include_song:
                songs_left_out += 1
                continue
            key = path.name[: -len(path.suffix)]
            if key in first_seen:
                skipped.append(Skipped(source, f"duplicate of {first_seen[key].relative_to(root).as_posix()}"))
                continue
            if path.stat().st_size == 0:
                skipped.append(Skipped(source, "empty file"))
                continue
            first_seen[key] = path
            records.append(_record(key, path, name))

    if av_candidates == 0:
        raise AvdaliError(
            f"{root}: {len(actor_dirs)} Actor_XX folder(s) but no 01-*.mp4 audio-video files "
            f"(02-* video-only and 03-* audio-only files are not audio-video samples); {_EXPECTED}"
        )
    if av_candidates == songs_left_out:
        raise AvdaliError(
            f"{root}: only song clips (01-02-*.mp4) found; pass include_song (--include-song) to use them"
        )
    records.sort(key=lambda r: (r.split, r.key))
    return Scan(records, skipped, splits=sorted(set(wanted or ()) | {r.split for r in records}))


def _record(key: str, path: Path, name: RavdessName) -> ClipRecord:
    emotion = name.emotion_name
    fold = actor_fold(name.actor)
    meta = {
        "actor": name.actor,
        "gender": "male" if name.actor % 2 else "female",
        "vocal_channel": "speech" if name.vocal_channel == SPEECH else "song",
        "intensity": "normal" if name.intensity == 1 else "strong",
        "statement": STATEMENTS[name.statement],
        "repetition": name.repetition,
        "native_label": emotion,
        "native_id": native_ravdess_id(emotion),
        "fold": fold,
    }
    return ClipRecord(
        key=key,
        dataset="ravdess",
        split=f"fold{fold}",
        video_path=path,
        label=ravdess_unified_id(emotion),
        native_label=emotion,
        meta=meta,
    )


def _find_actor_dirs(root: Path) -> tuple[list[Path], int, list[Path]]:
    """``Actor_XX`` folders at most ``MAX_DEPTH`` levels below root, in sorted walk order; the number of
    folders visited; the zip files seen (archives not unpacked yet)."""
    found: list[Path] = []
    archives: list[Path] = []
    folders = 0
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        folders += 1
        depth = len(here.relative_to(root).parts)
        dirnames.sort()
        archives += [here / f for f in sorted(filenames) if f.lower().endswith(".zip") and not f.startswith(".")]
        if _ACTOR_DIR.match(here.name) and depth > 0:
            found.append(here)
            dirnames.clear()  # clips lie directly in Actor_XX; nothing to look for below
        elif depth >= MAX_DEPTH or folders >= MAX_FOLDERS:
            dirnames.clear()
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS]
    return found, folders, archives
