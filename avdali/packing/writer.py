"""Deterministic shard files: one sample's tar members, the tar itself and DALI's ``.idx`` beside it.

Determinism comes from three places (MEDIA.md): the webm muxer in bit-exact mode (transcode.py),
FLAC from soundfile, and tar members with fixed metadata, which webdataset's ``TarWriter`` gives
with ``mtime=0``, empty user/group names and the USTAR format (uid/gid default to 0).

Every file is written under ``<name>.tmp`` and renamed with ``os.replace``, so a killed run leaves
either the previous file or the finished one, never half of one.

No torch here (ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from avdali import labels
from avdali.errors import AvdaliError
from avdali.packing import format as fmt
from avdali.sources.records import ClipRecord

TMP_SUFFIX = ".tmp"
"""Suffix of files being written; a resumed run deletes any left behind."""

INDEX_VERSION = "v1.2"
"""First token of a DALI webdataset index (what ``wds2idx.IndexCreator`` writes)."""


@dataclass(frozen=True)
class ShardFile:
    """A finished tar + idx pair on disk."""

    name: str
    """Tar file name (``ravdess-fold1-000000.tar``)."""
    index_name: str
    """DALI index file name beside the tar (``ravdess-fold1-000000.idx``)."""
    samples: int
    """Number of samples in the tar."""
    keys: tuple[str, ...]
    """Sample keys in tar order."""
    sha256: str
    """Hex SHA-256 of the tar bytes (resume and ``avdali inspect`` check it)."""
    bytes: int
    """Size of the tar in bytes."""


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (OpenCV boxes, PyAV rates) are not JSON types; their Python value is.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_json(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def native_id(record: ClipRecord) -> int:
    """The native label id stored in ``meta.i32``: RAVDESS' 8-class id; MELD's native space is the unified one."""
    if record.dataset == "ravdess":
        return labels.native_ravdess_id(record.native_label)
    return record.label


def encode_meta_i32(values: Mapping[str, int]) -> bytes:
    """Little-endian int32 vector in ``format.META_FIELDS`` order."""
    return struct.pack(f"<{len(fmt.META_FIELDS)}i", *(int(values[name]) for name in fmt.META_FIELDS))


def decode_meta_i32(data: bytes) -> dict[str, int]:
    """Inverse of ``encode_meta_i32``; ``ValueError`` when the length is not ``4 * len(META_FIELDS)``."""
    expected = 4 * len(fmt.META_FIELDS)
    if len(data) != expected:
        raise ValueError(f"meta.i32 has {len(data)} bytes, expected {expected}")
    return dict(zip(fmt.META_FIELDS, struct.unpack(f"<{len(fmt.META_FIELDS)}i", data)))


def face_kind(clip: Any) -> str:
    """``detected`` when the crop follows a detected face, ``centre`` when it fell back to a centre crop."""
    face = getattr(clip, "face", None)
    if isinstance(face, str):
        return "detected" if face.lower().startswith("detect") else "centre"
    return "detected" if face else "centre"


def sample_metadata(record: ClipRecord, clip: Any, source: str) -> dict:
    """The sample's ``json``: the reader's metadata plus labels, provenance and what the transcode measured."""
    meta = dict(record.meta)
    meta.update(
        dataset=record.dataset,
        split=record.split,
        key=record.key,
        label=record.label,
        label_name=labels.UNIFIED[record.label],
        native_label=record.native_label,
        native_id=native_id(record),
        source=source,
        duration_s=round(float(clip.duration_s), 6),
        frames=int(clip.frames),
        fps=float(clip.fps),
        audio_samples=int(clip.audio_samples),
        audio_rate=fmt.AUDIO_RATE,
        face=face_kind(clip),
        face_box=clip.face_box,
    )
    source_info = getattr(clip, "source", None)
    if source_info is not None and not isinstance(source_info, str):
        meta["source_media"] = source_info
    return meta


def encode_sample(record: ClipRecord, clip: Any, source: str) -> dict:
    """All tar members of one sample (``format.py``), keyed by extension, plus webdataset's ``__key__``.

    ``clip`` is a ``transcode.Transcoded``; ``source`` the clip's path relative to the dataset root.
    """
    meta_values = {
        "frames": clip.frames,
        "label": record.label,
        "native_label": native_id(record),
        "audio_samples": clip.audio_samples,
    }
    return {
        "__key__": record.key,
        fmt.LABEL_EXT: str(record.label).encode("ascii"),
        fmt.AUDIO_EXT: bytes(clip.flac),
        fmt.META_EXT: dumps_json(sample_metadata(record, clip, source)),
        fmt.NUMS_EXT: encode_meta_i32(meta_values),
        fmt.VIDEO_EXT: bytes(clip.webm),
    }


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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_error(path: Path, error: OSError) -> AvdaliError:
    """A failed write (disk full, read-only folder) as one line naming the file that was being written."""
    return AvdaliError(f"{path}: cannot write ({error.strerror or error}); the file already there, if any, is unchanged")


def _remove_partial(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # best effort: the write error is the one to report
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` via ``path.tmp`` + ``os.replace``; a failed write removes the ``.tmp`` and raises ``write_error``."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        _remove_partial(tmp)


def tar_bytes(samples: Iterable[Mapping]) -> bytes:
    """The tar of the given samples (dicts from ``encode_sample``) with fixed member metadata."""
    import webdataset as wds  # here, not at the top: it imports torch, which `avdali --help` need not load

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user="", group="", mtime=0, format=tarfile.USTAR_FORMAT, encoder=False) as writer:
        for sample in samples:
            writer.write(dict(sample))
    return buffer.getvalue()


def write_shard(out_dir: Path, name: str, samples: list[Mapping]) -> ShardFile:
    """Write ``out_dir/name`` (tar) and its ``.idx`` atomically; returns what the manifest records.

    The index is written (and renamed) before the tar, so a tar under its final name always has its index.
    """
    if not samples:
        raise ValueError(f"{name}: a shard needs at least one sample")
    out_dir = Path(out_dir)
    tar_path = out_dir / name
    idx_path = out_dir / fmt.index_name(name)
    tmp_tar = tar_path.with_name(name + TMP_SUFFIX)
    data = tar_bytes(samples)
    try:
        with open(tmp_tar, "wb") as f:
            f.write(data)
        atomic_write_bytes(idx_path, tar_index(tmp_tar).encode())
        os.replace(tmp_tar, tar_path)
    except OSError as e:
        raise write_error(tar_path, e) from None
    finally:
        _remove_partial(tmp_tar)  # gone after the rename; a failed write leaves nothing behind
    return ShardFile(
        name=name,
        index_name=idx_path.name,
        samples=len(samples),
        keys=tuple(s["__key__"] for s in samples),
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
    )
