"""Options of ``avdali shard``: everything that changes the bytes of a shard is here (and in the manifest)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from avdali.errors import AvdaliError


@dataclass(frozen=True)
class PackOptions:
    size: int = 128
    """Side of the square face crop stored in the webm, in pixels (NVDEC needs ≥ 128)."""
    fps: float = 15.0
    """Frame rate of the stored video; source frames are dropped evenly to reach it."""
    max_seconds: float = 10.0
    """Longer clips are cut to their first ``max_seconds`` (MELD has minutes-long outliers)."""
    shard_size: int = 64
    """Source clips per shard (a shard holds fewer when some of its clips are skipped)."""
    workers: int = 0
    """Parallel processes; 0 means all cores."""
    include_song: bool = False
    """RAVDESS: also pack the song recordings (vocal channel 02)."""
    strict: bool = False
    """Fail (non-zero exit) on any skipped source instead of only when nothing could be packed."""

    def __post_init__(self):
        if self.size < 128:
            raise AvdaliError(f"--size must be ≥ 128 (NVDEC's minimum frame size), got {self.size}")
        if self.size % 2:
            raise AvdaliError(f"--size must be even (VP9 stores 4:2:0 chroma at half size), got {self.size}")
        if not 1 <= self.fps <= 60:
            raise AvdaliError(f"--fps must be between 1 and 60, got {self.fps}")
        if self.max_seconds <= 0:
            raise AvdaliError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if self.shard_size < 1:
            raise AvdaliError(f"--shard-size must be ≥ 1, got {self.shard_size}")
        if self.workers < 0:
            raise AvdaliError(f"--workers must be ≥ 0, got {self.workers}")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def content_options(self) -> dict:
        """The options that decide shard bytes (not workers/strict): a resumed run must match these."""
        d = asdict(self)
        for k in ("workers", "strict"):
            d.pop(k)
        return d
