"""Dataset readers: walk a raw tree (and its label files) into clip records; no torch here.

``scan(dataset, root)`` is the one entry point the packer needs; ``scan_ravdess`` and ``scan_meld``
are the readers themselves.
"""

from __future__ import annotations

from pathlib import Path

from avdali.errors import AvdaliError
from avdali.sources.meld import scan_meld
from avdali.sources.ravdess import scan_ravdess
from avdali.sources.records import ClipRecord, Scan, Skipped

DATASETS = ("ravdess", "meld")
"""Names of the datasets a reader exists for."""

__all__ = ["DATASETS", "ClipRecord", "Scan", "Skipped", "scan", "scan_meld", "scan_ravdess"]


def scan(dataset: str, root: Path, include_song: bool = False, splits=None) -> Scan:
    """Scan a raw ``dataset`` tree at ``root`` (``include_song`` applies to RAVDESS only); ``splits`` (None: all)
    picks MELD splits (``train``, ``dev``, ``test``) or RAVDESS folds (``fold1`` … ``fold5``)."""
    if dataset == "ravdess":
        return scan_ravdess(Path(root), include_song=include_song, splits=splits)
    if dataset == "meld":
        return scan_meld(Path(root), splits=splits)
    raise AvdaliError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
