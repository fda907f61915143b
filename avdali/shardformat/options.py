"""Options of ``avdali shard``: everything that changes the bytes of a shard is here (and in the manifest)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from avdali.errors import AvdaliError


MAX_SIZE = 4096
"""Largest stored frame side: NVDEC's VP9 limit is 8192, but no face crop needs more than this."""
MAX_FPS = 60.0
"""Highest stored frame rate."""
MAX_KEYINT = 1000
"""Longest keyframe interval ``--keyint`` accepts, in frames."""
MAX_SECONDS = 3600.0
"""Longest clip a shard may hold; also bounds the frame and audio counts a reader accepts from a sample."""
MAX_SEED = 2**63 - 1
"""Largest ``--seed``: any JSON reader of the manifest holds it as a 64-bit integer."""


def _int_in(value, low: int, high: int) -> bool:
    """An int in ``[low, high]``, and not a bool: a manifest's JSON may hold ``true`` where a number belongs."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class PackOptions:
    """How ``avdali shard`` packs (the content options are recorded in the manifest)."""

    size: int = 128
    """Side of the square face crop stored in the webm, in pixels (NVDEC needs ≥ 128)."""
    fps: float = 15.0
    """Frame rate of the stored video; source frames are dropped evenly to reach it."""
    max_seconds: float = 10.0
    """Longer clips are cut to their first ``max_seconds`` (MELD has minutes-long outliers)."""
    shard_size: int = 64
    """Source clips per shard (a shard holds fewer when some of its clips are skipped)."""
    shuffle_seed: int = 0
    """Seed of the order of each split's clips in its shards (``--seed``): readers read tars in stored order, so a
    rank that reads a range of tars must find every label there, not a run of file names sorted by emotion.
    Always recorded in the manifest (a manifest without it is an older format, read as 0)."""
    keyint: int = 0
    """Longest keyframe interval of the stored VP9, in stored frames (a keyframe at least every N frames); 0 = the
    packer's default (150: one keyframe per clip at 10 s × 15 fps). A shorter interval makes larger files. DALI 2.4's
    NVDEC decoder cannot use it: it builds no frame index, so it never seeks to a keyframe and decodes every frame
    from frame 0 to the last one asked for. Recorded in the manifest when not 0 (a manifest without it was packed
    with the default)."""
    workers: int = 0
    """Parallel processes; 0 means all cores."""
    include_song: bool = False
    """RAVDESS: also pack the song recordings (vocal channel 02)."""
    strict: bool = False
    """Fail (non-zero exit) on any skipped source instead of only when nothing could be packed."""
    keep_partial: bool = False
    """Pack a clip with no audio stream, or with no usable video (``transcode.py``: no video stream, a video stream
    that fails to decode or yields no frame, or every frame black), with a placeholder for the missing stream,
    marked in ``meta.i32``/json/manifest. Off: such clips are skipped and recorded, as before the option existed.
    Recorded in the manifest when on."""
    splits: tuple[str, ...] | None = None
    """Pack only these splits (MELD ``train``/``dev``/``test``, RAVDESS ``fold1``…``fold5``); None packs all."""

    def __post_init__(self):
        if self.splits is not None:
            if not isinstance(self.splits, (list, tuple)) or not all(isinstance(s, str) for s in self.splits):
                raise AvdaliError(f"--splits must be a list of split names, got {self.splits!r}")
            # a tuple (hashable, and the same value whether it came from the CLI or a manifest's JSON list)
            object.__setattr__(self, "splits", tuple(self.splits))
        if self.size > MAX_SIZE:
            raise AvdaliError(f"--size must be ≤ {MAX_SIZE}, got {self.size}")
        if self.size < 128:
            raise AvdaliError(f"--size must be ≥ 128 (NVDEC's minimum frame size), got {self.size}")
        if self.size % 2:
            raise AvdaliError(f"--size must be even (VP9 stores 4:2:0 chroma at half size), got {self.size}")
        if not 1 <= self.fps <= MAX_FPS:
            raise AvdaliError(f"--fps must be between 1 and {MAX_FPS:g}, got {self.fps}")
        if not 0 < self.max_seconds <= MAX_SECONDS:
            raise AvdaliError(f"--max-seconds must be > 0 and ≤ {MAX_SECONDS}, got {self.max_seconds}")
        if not _int_in(self.keyint, 0, MAX_KEYINT):
            raise AvdaliError(f"--keyint must be an integer between 0 (default) and {MAX_KEYINT}, got {self.keyint!r}")
        if not _int_in(self.shuffle_seed, 0, MAX_SEED):
            raise AvdaliError(f"--seed must be an integer between 0 and {MAX_SEED}, got {self.shuffle_seed!r}")
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
        if d["keyint"] == 0:
            d.pop("keyint")  # the default: manifests (and resumes of shards) from before --keyint existed stay equal
        if not d["keep_partial"]:
            d.pop("keep_partial")  # likewise: a default run records the options it always did
        if d["splits"] is not None:
            d["splits"] = list(d["splits"])  # what the manifest's JSON reads back, so a resume compares equal
        return d
