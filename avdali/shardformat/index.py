"""The DALI index beside every tar: ``wds2idx``'s format, written from the tar's member headers and read back checked.

``v1.2 <samples>`` then one line per sample: ``ext offset size name`` per member. DALI's webdataset reader needs it;
the loaders also take each sample's webm offset and size from it.
"""

from __future__ import annotations

from pathlib import Path

from avdali import shardformat as fmt
from avdali.errors import AvdaliError
from avdali.shardformat.members import check_member_name, iter_members, split_member_name

INDEX_VERSION = "v1.2"
"""First token of a DALI webdataset index (what ``wds2idx.IndexCreator`` writes)."""

MAX_INDEX_BYTES = 64 << 20
"""An index lists ~5 short lines per sample; anything larger is not one of ours."""


def tar_index(tar_path: Path, max_members: int | None = None) -> str:
    """The DALI index of a tar, byte for byte what ``wds2idx.IndexCreator`` writes, read with ``tarfile``
    (no external ``tar``): ``v1.2 <samples>`` then per sample ``ext offset size name`` per member.
    Members are checked first (``iter_members``: ``UnsafeMember`` for links, paths, sizes past the end)."""
    samples: list[list[str]] = []
    last_base = None
    for _, member in iter_members(tar_path, max_members):
        base, ext = split_member_name(member.name)
        entry = f"{ext} {member.offset_data} {member.size} {member.name}"
        if base != last_base:
            samples.append([entry])
            last_base = base
        else:
            samples[-1].append(entry)
    if not samples:
        raise ValueError(f"{tar_path}: no samples in tar")
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples)


def index_error(idx_path: Path, what: str) -> AvdaliError:
    return AvdaliError(f"{idx_path}: {what}; re-index with `avdali shard` (resume) or check the folder with `avdali inspect`")


def read_index(
    idx_path: Path, expected_samples: int | None = None, tar_size: int | None = None
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Keys, webm offsets and webm sizes of the samples listed in a DALI ``.idx`` (format ``v1.2 N`` + one line per sample).

    Every number is checked before use, so a crafted index cannot make a reader seek or allocate past the tar:
    the file is at most ``MAX_INDEX_BYTES``, the declared count must equal ``expected_samples`` (the manifest's)
    before any line is parsed, and every member's ``offset + size`` must lie inside ``tar_size`` bytes; member names
    must be ``{key}.{ext}`` in the tar's root (no paths, no ``..``)."""
    idx_path = Path(idx_path)
    try:
        size = idx_path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise index_error(idx_path, f"{size} bytes is larger than any shard index")
        lines = idx_path.read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise AvdaliError(f"{idx_path}: cannot read the shard index ({e.strerror})") from None
    except UnicodeDecodeError:
        raise AvdaliError(f"{idx_path}: not a DALI webdataset index (not text)") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v1.") or not header[1].isdigit():
        raise AvdaliError(f"{idx_path}: not a DALI webdataset index (first line {lines[0][:80] if lines else ''!r})")
    declared = int(header[1])
    if expected_samples is not None and declared != expected_samples:
        raise index_error(idx_path, f"declares {declared} samples, the manifest lists {expected_samples}")
    if declared != len(lines) - 1:
        raise index_error(idx_path, f"header says {declared} samples, found {len(lines) - 1} lines")
    keys, offsets, sizes = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        # v1.2: groups of (ext, offset, size, name)
        if not parts or len(parts) % 4:
            raise index_error(idx_path, f"line {number} is not groups of 'ext offset size name'")
        groups = {}
        for i in range(0, len(parts), 4):
            ext, offset, size_text, name = parts[i : i + 4]
            if not (offset.isdigit() and size_text.isdigit()):
                raise index_error(idx_path, f"line {number}: offset {offset[:20]!r} / size {size_text[:20]!r} are not counts")
            start, length = int(offset), int(size_text)
            if tar_size is not None and start + length > tar_size:
                raise index_error(idx_path, f"line {number}: {name[:80]!r} at {start}+{length} lies past the end of the {tar_size}-byte tar")
            why = check_member_name(name)
            if why or name != f"{split_member_name(name)[0]}.{ext}":
                raise index_error(idx_path, f"line {number}: member name {name[:80]!r} {why or 'does not end in its ext'}")
            groups[ext] = (split_member_name(name)[0], start, length)
        bases = {base for base, _, _ in groups.values()}
        if len(bases) != 1:
            raise index_error(idx_path, f"line {number} mixes samples {sorted(bases)[:3]}")
        if fmt.VIDEO_EXT not in groups:
            raise index_error(idx_path, f"line {number}: a sample has no {fmt.VIDEO_EXT} component")
        key, start, length = groups[fmt.VIDEO_EXT]
        keys.append(key)
        offsets.append(start)
        sizes.append(length)
    return tuple(keys), tuple(offsets), tuple(sizes)
