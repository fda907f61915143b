"""What a dataset reader hands the packer: one record per clip, plus what it had to skip.

No torch here (ARCHITECTURE.md): sources only walk raw trees and label files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avdali.errors import AvdaliError


@dataclass(frozen=True)
class ClipRecord:
    """One source clip to pack, with everything known about it before decoding."""

    key: str
    """Sample key inside the shards: unique per dataset, no dots or slashes (e.g. ``01-01-03-01-01-01-05``, ``dia3_utt1``)."""
    dataset: str
    """``ravdess`` or ``meld``."""
    split: str
    """Shard split: ``fold1`` … ``fold5`` (RAVDESS actor folds) or ``train`` / ``dev`` / ``test`` (MELD)."""
    video_path: Path
    """The audio-video source file (H.264 + AAC mp4 in the real datasets)."""
    label: int
    """Unified 7-class id (avdali.labels.UNIFIED)."""
    native_label: str
    """The dataset's own emotion name (RAVDESS ``calm``, MELD ``joy`` …)."""
    meta: dict = field(default_factory=dict, compare=False)
    """Dataset-specific metadata that goes into the sample's json (actor, intensity, utterance …)."""


@dataclass(frozen=True)
class Skipped:
    """A source the reader could not turn into a sample, and why (one line)."""

    source: str
    """Path relative to the dataset root, or a CSV row reference like ``train_sent_emo.csv:123``."""
    reason: str


@dataclass
class Scan:
    """Result of walking a raw dataset tree."""

    records: list[ClipRecord]
    skipped: list[Skipped]
    splits: list[str] = field(default_factory=list)
    """Every split the reader looked at and found (or was asked for), also those left with no record, so the
    packer reports an empty split instead of leaving it out; the records' splits are always included."""


def check_splits(splits, valid: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    """``splits`` (None: all of ``valid``) as a tuple in ``valid``'s order; ``AvdaliError`` on unknown names."""
    if splits is None:
        return valid
    asked = [s.strip() for s in splits if s.strip()]
    unknown = [s for s in asked if s not in valid]
    if unknown or not asked:
        raise AvdaliError(f"--splits: unknown {dataset} split {', '.join(unknown) or '(none given)'}; expected some of {','.join(valid)}")
    return tuple(s for s in valid if s in asked)
