"""Finding a split's shards and samples: manifest.json plus the DALI ``.idx`` beside each tar.

Both loaders use this, so they agree on which samples exist and on each sample's ``index`` (its position
in the chosen splits: splits in the order asked for, tars in manifest order, samples in tar order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from avdali.errors import AvdaliError
from avdali.packing.format import MANIFEST_NAME, VIDEO_EXT
from avdali.packing.manifest import Manifest, read_manifest


@dataclass(frozen=True)
class ShardFile:
    """One tar of a split and where its samples sit in the chosen splits."""

    tar: str
    """Path of the ``.tar``."""
    idx: str
    """Path of its DALI index (``.idx``)."""
    first: int
    """Index (in the chosen splits) of the tar's first sample."""
    keys: tuple[str, ...]
    """Sample keys in tar order."""
    video_offsets: tuple[int, ...]
    """Byte offset of each sample's webm member data (what DALI reports in ``source_info``)."""
    video_sizes: tuple[int, ...]
    """Byte size of each sample's webm."""

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class ShardSet:
    """The shards of the chosen splits, in reading order."""

    root: Path
    """The shard folder."""
    splits: tuple[str, ...]
    """Chosen splits, in order."""
    files: tuple[ShardFile, ...]
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


def read_index(idx_path: Path) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Keys, webm offsets and webm sizes of the samples listed in a DALI ``.idx`` (format ``v1.2 N`` + one line per sample)."""
    try:
        lines = idx_path.read_text().splitlines()
    except OSError as e:
        raise AvdaliError(f"{idx_path}: cannot read the shard index ({e.strerror})") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v1."):
        raise AvdaliError(f"{idx_path}: not a DALI webdataset index (first line {lines[0] if lines else ''!r})")
    keys, offsets, sizes = [], [], []
    for line in lines[1 : 1 + int(header[1])]:
        parts = line.split()
        # v1.2: groups of (ext, offset, size, name)
        groups = {parts[i]: parts[i : i + 4] for i in range(0, len(parts) - 3, 4)}
        if VIDEO_EXT not in groups:
            raise AvdaliError(f"{idx_path}: a sample has no {VIDEO_EXT} component: {line[:80]!r}")
        ext, offset, size, name = groups[VIDEO_EXT]
        keys.append(name[: -len(ext) - 1])
        offsets.append(int(offset))
        sizes.append(int(size))
    if len(keys) != int(header[1]):
        raise AvdaliError(f"{idx_path}: header says {header[1]} samples, found {len(keys)}")
    return tuple(keys), tuple(offsets), tuple(sizes)


def resolve(shards: str | Path, splits: Sequence[str]) -> ShardSet:
    """The tars of ``splits`` with their sample keys and offsets (AvdaliError naming missing splits or files)."""
    root = Path(shards)
    manifest = _manifest(root)
    path = root / MANIFEST_NAME
    available = ", ".join(manifest.splits) or "none"
    if not splits:
        raise AvdaliError(f"{path}: no split chosen; available: {available}")
    files: list[ShardFile] = []
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
            keys, offsets, sizes = read_index(idx)
            if list(keys) != list(entry.keys):
                raise AvdaliError(f"{idx}: its samples differ from the manifest's keys for {entry.name}; re-pack or re-index")
            files.append(ShardFile(str(tar), str(idx), first, keys, offsets, sizes))
            first += len(keys)
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
