"""Tar members of a shard: their names, the ``meta.i32`` vector, and reading them safely.

Shard members are ``{key}.{ext}`` in the tar's root, regular files only. Readers refuse anything else before a name
or size is used (``check_member_name``, ``iter_members``), so a crafted tar cannot write outside a folder, follow a
link or make a reader seek past the file.
"""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path
from typing import Iterator, Mapping

from avdali import shardformat as fmt

SAMPLE_EXTS = (fmt.LABEL_EXT, fmt.AUDIO_EXT, fmt.META_EXT, fmt.NUMS_EXT, fmt.VIDEO_EXT)
"""Components every sample must have, in tar order."""


def encode_meta_i32(values: Mapping[str, int]) -> bytes:
    """Little-endian int32 vector in ``META_FIELDS`` order; ``streams`` defaults to both streams real."""
    values = {"streams": fmt.STREAMS_ALL, **values}
    return struct.pack(f"<{len(fmt.META_FIELDS)}i", *(int(values[name]) for name in fmt.META_FIELDS))


def decode_meta_i32(data: bytes) -> dict[str, int]:
    """Inverse of ``encode_meta_i32``, also for a format-1 vector (no ``streams``: both real). ``ValueError`` when
    the length is neither, or ``streams`` has bits other than audio/video."""
    if len(data) == 4 * len(fmt.META_FIELDS_V1):
        return {**dict(zip(fmt.META_FIELDS_V1, struct.unpack(f"<{len(fmt.META_FIELDS_V1)}i", data))), "streams": fmt.STREAMS_ALL}
    expected = 4 * len(fmt.META_FIELDS)
    if len(data) != expected:
        raise ValueError(f"meta.i32 has {len(data)} bytes, expected {expected} (or {4 * len(fmt.META_FIELDS_V1)}, format 1)")
    values = dict(zip(fmt.META_FIELDS, struct.unpack(f"<{len(fmt.META_FIELDS)}i", data)))
    if not 0 <= values["streams"] <= fmt.STREAMS_ALL:
        raise ValueError(f"meta.i32 streams is {values['streams']}, not a bitmask of audio (1) and video (2)")
    return values


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.meta.i32`` → (``dir/key``, ``meta.i32``): the extension starts at the first dot of the base name,
    as webdataset and ``wds2idx`` split it."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


class UnsafeMember(ValueError):
    """A tar member avdali never writes and refuses to read: a link or device, an absolute path, a path with
    folders or ``..``, a hidden or control-character name."""


def check_member_name(name: str) -> str | None:
    """Why ``name`` cannot be a member of one of our flat shards (``None`` when it is fine): shard members are
    ``{key}.{ext}`` in the tar's root, so any ``/`` or ``\\`` (absolute paths, folders, ``..``), a leading dot,
    or a control character is refused before the name is used anywhere."""
    if not name or len(name) > 255:
        return "is empty or longer than 255 characters"
    if "/" in name or "\\" in name:
        return "has a path (absolute, folders or '..'); shard members sit in the tar's root"
    if name.startswith("."):
        return "starts with a dot"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a control character"
    return None


def iter_members(tar_path: Path, max_members: int | None = None) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """(open tar, member) for every member of ``tar_path``, in order, after checking it: a regular file with a safe
    flat name (``check_member_name``) whose data lies inside the file. ``UnsafeMember`` for the first that is not
    or when there are more than ``max_members`` (a crafted tar cannot make a reader collect unbounded lists);
    ``ValueError`` for data past the end (a truncated tar)."""
    size = Path(tar_path).stat().st_size
    with tarfile.open(tar_path, "r:") as tar:
        for n, member in enumerate(tar, start=1):
            if not member.isreg():
                kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "a folder" if member.isdir() else "not a regular file"
                raise UnsafeMember(f"member {member.name!r} is {kind}; shards hold regular files only")
            why = check_member_name(member.name)
            if why:
                raise UnsafeMember(f"member name {member.name!r} {why}")
            if member.offset_data + member.size > size:
                raise ValueError(f"truncated: member {member.name} claims {member.size} bytes past the end of the file")
            if max_members is not None and n > max_members:
                raise UnsafeMember(f"more than {max_members} members")
            yield tar, member
            tar.members = []  # TarFile keeps every member it has read; a reader needs only the current one


def read_members(tar_path: Path, max_members: int | None = None) -> list[tuple[str, str, bytes]]:
    """(key, ext, data) of every member, each checked first (``iter_members``)."""
    members = []
    for tar, member in iter_members(tar_path, max_members):
        data = tar.extractfile(member).read()
        key, ext = split_member_name(member.name)
        members.append((key, ext, data))
    return members
