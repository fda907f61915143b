"""Finding a split's shards and samples: manifest.json plus the DALI ``.idx`` beside each tar.

Both loaders use this, so they agree on which samples exist and on each sample's ``index`` (its position
in the chosen splits: splits in the order asked for, tars in manifest order, samples in tar order).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from avdali.errors import AvdaliError
from avdali.shardformat import MANIFEST_NAME
from avdali.shardformat.index import index_error, read_index, tar_index
from avdali.shardformat.manifest import Manifest, ShardEntry, read_manifest
from avdali.shardformat.members import SAMPLE_EXTS, UnsafeMember


@dataclass(frozen=True)
class ShardSpan:
    """Where one shard's samples sit: its files on disk, its first sample's index in the chosen splits and each
    sample's webm inside the tar. What the shard is (name, keys, size, hash) is its manifest ``entry``."""

    entry: ShardEntry
    """The shard as the manifest records it (its ``.idx`` and tar were checked against it)."""
    tar: str
    """Path of the ``.tar``."""
    idx: str
    """Path of its DALI index (``.idx``)."""
    first: int
    """Index (in the chosen splits) of the tar's first sample."""
    video_offsets: tuple[int, ...]
    """Byte offset of each sample's webm member data (what DALI reports in ``source_info``)."""
    video_sizes: tuple[int, ...]
    """Byte size of each sample's webm."""

    @property
    def keys(self) -> tuple[str, ...]:
        """Sample keys in tar order."""
        return tuple(self.entry.keys)

    @property
    def count(self) -> int:
        return self.entry.samples


@dataclass(frozen=True)
class ShardSet:
    """The shards of the chosen splits, in reading order."""

    root: Path
    """The shard folder."""
    splits: tuple[str, ...]
    """Chosen splits, in order."""
    files: tuple[ShardSpan, ...]
    """Their tars, in order."""
    frame_size: tuple[int, int] | None = None
    """(height, width) of the stored frames when the manifest's options say it."""

    @property
    def num_samples(self) -> int:
        return sum(f.count for f in self.files)


def _manifest(shards: str | Path) -> Manifest:
    manifest = read_manifest(Path(shards))
    if not manifest.complete:
        raise AvdaliError(f"{Path(shards) / MANIFEST_NAME}: packing is not complete; re-run `avdali shard` to finish it")
    return manifest


def list_splits(shards: str | Path) -> dict[str, int]:
    """Split name → number of samples, from ``manifest.json`` (AvdaliError if missing, incomplete or another version)."""
    return {name: split.samples for name, split in _manifest(shards).splits.items()}


def check_tar_matches_index(tar: Path, idx: Path, samples: int) -> None:
    """Read the tar's member headers (not its data) and require exactly the index the packer wrote: refuses links,
    absolute or ``..`` names and members the index hides (``shardformat.members.iter_members``), at ~512 bytes read per member."""
    try:
        actual = tar_index(tar, max_members=samples * len(SAMPLE_EXTS))
    except UnsafeMember as e:
        raise AvdaliError(f"{tar}: refused: {e}") from None
    except (tarfile.TarError, ValueError, OSError) as e:
        raise AvdaliError(f"{tar}: unreadable tar ({e}); check the folder with `avdali inspect`") from None
    if actual.encode() != idx.read_bytes():
        raise index_error(idx, f"does not match {tar.name} (offsets, sizes or names differ)")


def resolve(shards: str | Path, splits: Sequence[str]) -> ShardSet:
    """The tars of ``splits`` with their sample keys and offsets (AvdaliError naming missing splits or files).

    Cheap checks on every tar before any loader reads it: its size equals the manifest's (a truncated or replaced
    tar is named here rather than failing mid-epoch), its index is valid (``read_index``) and equals what the tar's
    member headers give (``check_tar_matches_index``). Flipped bytes inside member data need the sha256 that
    ``avdali inspect`` computes."""
    root = Path(shards)
    manifest = _manifest(root)
    path = root / MANIFEST_NAME
    available = ", ".join(manifest.splits) or "none"
    if not splits:
        raise AvdaliError(f"{path}: no split chosen; available: {available}")
    files: list[ShardSpan] = []
    first = 0
    for split in splits:
        if split not in manifest.splits:
            raise AvdaliError(f"{path}: no split {split!r}; available: {available}")
        for entry in (e for e in manifest.shards if e.split == split):
            tar, idx = root / entry.name, root / entry.index_name
            if not tar.is_file():
                raise AvdaliError(f"{tar}: shard listed in the manifest is missing")
            if not idx.is_file():
                raise AvdaliError(f"{idx}: index missing beside {entry.name} (the packer writes one per tar)")
            tar_size = tar.stat().st_size
            if tar_size != entry.bytes:
                raise AvdaliError(
                    f"{tar}: {tar_size} bytes, the manifest says {entry.bytes} (truncated or replaced); "
                    "check the folder with `avdali inspect` and re-pack"
                )
            keys, offsets, sizes = read_index(idx, expected_samples=entry.samples, tar_size=tar_size)
            if list(keys) != list(entry.keys):
                raise AvdaliError(f"{idx}: its samples differ from the manifest's keys for {entry.name}; re-pack or re-index")
            check_tar_matches_index(tar, idx, entry.samples)
            files.append(ShardSpan(entry, str(tar), str(idx), first, offsets, sizes))
            first += entry.samples
    if first == 0:
        raise AvdaliError(f"{path}: splits {', '.join(splits)} hold no samples")
    size = manifest.options.get("size")
    return ShardSet(root, tuple(splits), tuple(files), (size, size) if isinstance(size, int) else None)


def probe_frame_size(shardset: ShardSet) -> tuple[int, int]:
    """(height, width) of the stored video: from the manifest, else from the first sample's webm header."""
    if shardset.frame_size is not None:
        return shardset.frame_size
    import io

    import av

    first = shardset.files[0]
    with open(first.tar, "rb") as f:
        f.seek(first.video_offsets[0])
        data = f.read(first.video_sizes[0])
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, IndexError) as e:
        raise AvdaliError(f"{first.tar}: cannot read the video of sample {first.keys[0]} ({e})") from None
