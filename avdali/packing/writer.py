"""Writing deterministic shard files: one sample's tar members, the tar itself and DALI's ``.idx`` beside it.

What the members, the index and the manifest hold is ``avdali.shardformat``; this module only writes them.

Determinism comes from three places (MEDIA.md): the webm muxer in bit-exact mode (encode.py),
FLAC from soundfile, and tar members with fixed metadata, which webdataset's ``TarWriter`` gives
with ``mtime=0``, empty user/group names and the USTAR format (uid/gid default to 0).

Every file is written under ``<name>.tmp`` and renamed with ``os.replace`` (``avdali.files``), so a killed run
leaves either the previous file or the finished one, never half of one.

No torch here (ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from avdali import labels
from avdali import shardformat as fmt
from avdali.files import atomic_write_bytes, remove_partial, tmp_path, write_error
from avdali.shardformat.index import tar_index
from avdali.shardformat.manifest import ShardFile
from avdali.shardformat.members import encode_meta_i32
from avdali.sources.records import ClipRecord


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


def face_kind(clip: Any) -> str:
    """``detected`` when the crop follows a detected face, ``centre`` when it fell back to a centre crop, ``none``
    when the picture is a placeholder (``--keep-partial``, no usable video)."""
    face = getattr(clip, "face", None)
    if face == "none" and not clip_streams(clip) & fmt.STREAM_VIDEO:
        return "none"
    if isinstance(face, str):
        return "detected" if face.lower().startswith("detect") else "centre"
    return "detected" if face else "centre"


def clip_streams(clip: Any) -> int:
    """The ``meta.i32`` ``streams`` bitmask of a transcoded clip (a clip without the attribute is whole)."""
    return int(getattr(clip, "streams", fmt.STREAMS_ALL))


def missing_streams(clip: Any) -> dict[str, str]:
    """``audio``/``video`` → why that stream is a placeholder; empty for a whole clip."""
    if clip_streams(clip) == fmt.STREAMS_ALL:
        return {}
    reasons = dict(getattr(clip, "missing", {}) or {})
    out = {}
    for name, bit in (("audio", fmt.STREAM_AUDIO), ("video", fmt.STREAM_VIDEO)):
        if not clip_streams(clip) & bit:
            out[name] = str(reasons.get(name, f"no {name}"))
    return out


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
    missing = missing_streams(clip)
    if missing:  # only partial samples carry these, so a whole clip's json is what it was before --keep-partial
        streams = clip_streams(clip)
        meta["streams"] = {"audio": bool(streams & fmt.STREAM_AUDIO), "video": bool(streams & fmt.STREAM_VIDEO)}
        meta["missing"] = missing
    return meta


def encode_sample(record: ClipRecord, clip: Any, source: str) -> dict:
    """All tar members of one sample (``avdali.shardformat``), keyed by extension, plus webdataset's ``__key__``.

    ``clip`` is a ``transcode.Transcoded``; ``source`` the clip's path relative to the dataset root.
    """
    meta_values = {
        "frames": clip.frames,
        "label": record.label,
        "native_label": native_id(record),
        "audio_samples": clip.audio_samples,
        "streams": clip_streams(clip),
    }
    return {
        "__key__": record.key,
        fmt.LABEL_EXT: str(record.label).encode("ascii"),
        fmt.AUDIO_EXT: bytes(clip.flac),
        fmt.META_EXT: dumps_json(sample_metadata(record, clip, source)),
        fmt.NUMS_EXT: encode_meta_i32(meta_values),
        fmt.VIDEO_EXT: bytes(clip.webm),
    }


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
    tmp_tar = tmp_path(tar_path)
    data = tar_bytes(samples)
    try:
        with open(tmp_tar, "wb") as f:
            f.write(data)
        atomic_write_bytes(idx_path, tar_index(tmp_tar).encode())
        os.replace(tmp_tar, tar_path)
    except OSError as e:
        raise write_error(tar_path, e) from None
    finally:
        remove_partial(tmp_tar)  # gone after the rename; a failed write leaves nothing behind
    return ShardFile(
        name=name,
        index_name=idx_path.name,
        samples=len(samples),
        keys=[s["__key__"] for s in samples],
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
    )
