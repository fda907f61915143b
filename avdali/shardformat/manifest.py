"""``manifest.json``: what a shard folder holds, written atomically after every finished shard.

The manifest is deterministic (no timings, no dates), so two runs with the same sources and options
write the same bytes. Readers (``avdali inspect``, the loaders) go through ``read_manifest``, which
checks the version and every field's type and size before anything uses it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from avdali import __version__, labels
from avdali import shardformat as fmt
from avdali.errors import AvdaliError
from avdali.files import atomic_write_bytes
from avdali.shardformat.members import check_member_name
from avdali.shardformat.options import MAX_FPS, MAX_SECONDS, PackOptions

MAX_MANIFEST_BYTES = 256 << 20
"""Refuse larger manifests (MELD's full manifest is ~2 MB) rather than parse a crafted one."""

SHARD_NAME_RE = re.compile(r"^[a-z0-9]+-[A-Za-z0-9_]+-\d{6}\.tar$")
"""Shard tar names the writer produces; anything else (slashes, ``..``) is refused on read."""

FACE_KINDS = ("detected", "centre")
"""Always counted. A third kind, ``none`` (placeholder picture, ``--keep-partial``), appears only when non-zero."""
PARTIAL_KINDS = {"audio": "no_audio", "video": "no_video"}
"""Missing stream → its count's name in ``Manifest.partial``."""


@dataclass
class ShardFile:
    """A finished tar + idx pair on disk: what ``packing.writer.write_shard`` returns."""

    name: str
    """Tar file name (``ravdess-fold1-000000.tar``), relative to the manifest's folder."""
    index_name: str
    """DALI ``.idx`` file name beside the tar (``ravdess-fold1-000000.idx``)."""
    samples: int
    """Samples in the tar."""
    keys: list[str]
    """Sample keys in tar order."""
    sha256: str
    """Hex SHA-256 of the tar bytes (resume and ``avdali inspect`` check it)."""
    bytes: int
    """Tar size in bytes."""


@dataclass
class ShardEntry(ShardFile):
    """One shard as the manifest records it: the file, its split and what its samples hold."""

    split: str
    """Split the shard belongs to (``fold1`` … / ``train`` …)."""
    labels: dict[str, int] = field(default_factory=dict)
    """Samples per unified label name."""
    faces: dict[str, int] = field(default_factory=dict)
    """Samples whose crop followed a detected face vs a centre crop."""
    skipped: list[dict] = field(default_factory=list)
    """Clips of this shard's group that could not be packed: ``{key, source, reason}``.
    The group's planned keys are ``keys`` plus these keys (resume compares them)."""

    partial: list[dict] = field(default_factory=list)
    """Samples packed under ``--keep-partial`` with a placeholder stream: ``{key, source, missing, reason}``, where
    ``missing`` is ``audio`` or ``video``. Not written when empty (a default run's manifest has no such field)."""
    frames: int | None = None
    """Stored frames of all its samples together (the sum of their ``meta.i32`` counts): what a decoded-frame cache
    of the shard needs before decoding it. None in manifests of format 1–2, which did not record it."""
    audio_samples: int | None = None
    """16 kHz audio samples of all its samples together. None in manifests of format 1–2."""

    @property
    def planned_keys(self) -> set[str]:
        return set(self.keys) | {s["key"] for s in self.skipped}

    @classmethod
    def from_file(
        cls, shard: ShardFile, split: str, labels_: dict, faces: dict, skipped: list[dict], partial: list[dict] | None = None,
        frames: int | None = None, audio_samples: int | None = None,
    ) -> ShardEntry:
        return cls(**{**asdict(shard), "keys": list(shard.keys)}, split=split, labels=labels_, faces=faces, skipped=skipped,
                   partial=list(partial or []), frames=frames, audio_samples=audio_samples)


@dataclass
class SplitSummary:
    """Totals of one split."""

    samples: int = 0
    """Samples packed."""
    shards: int = 0
    """Shard files."""
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(labels.UNIFIED, 0))
    """Samples per unified label name."""


@dataclass
class Manifest:
    """The content of ``manifest.json``."""

    format_version: int
    """``format.FORMAT_VERSION`` of the writer; readers refuse versions not in ``READABLE_VERSIONS``."""
    dataset: str
    """``ravdess`` or ``meld``."""
    avdali_version: str
    """Version of avdali that wrote the shards."""
    options: dict
    """PackOptions: the content options (must match to resume) plus workers and strict."""
    complete: bool
    """False while a run is in progress or after it was interrupted; re-running resumes."""
    shards: list[ShardEntry]
    """Shard files in (split, index) order."""
    splits: dict[str, SplitSummary]
    """Totals per split."""
    labels: dict[str, int]
    """Samples per unified label name, all splits."""
    faces: dict[str, int]
    """Samples with a detected face vs a centre crop, all splits."""
    skipped: list[dict]
    """Every source not packed, ``{source, reason}``, sorted: reader skips and transcode failures."""
    partial: dict[str, int] = field(default_factory=dict)
    """``--keep-partial``: samples packed with a placeholder, ``{no_audio: n, no_video: n}`` (the keys are in the
    shards' ``partial`` lists). Not written when no sample is partial."""

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> bytes:
        d = asdict(self)
        # the partial fields only where there is something to say: a default run's manifest keeps its old fields
        for shard in d["shards"]:
            if not shard["partial"]:
                del shard["partial"]
            for total in ("frames", "audio_samples"):  # None: a shard read from an older manifest
                if shard[total] is None:
                    del shard[total]
        if not any(d["partial"].values()):
            del d["partial"]
        return (json.dumps(d, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()

    @property
    def partial_keys(self) -> dict[str, list[str]]:
        """``no_audio``/``no_video`` → the keys of those samples, in shard order."""
        out: dict[str, list[str]] = {name: [] for name in PARTIAL_KINDS.values()}
        for shard in self.shards:
            for p in shard.partial:
                out[PARTIAL_KINDS[p["missing"]]].append(p["key"])
        return out

    def shard_paths(self, root: Path, split: str | None = None) -> list[Path]:
        """Tar paths of all shards (or of one split), in order."""
        return [Path(root) / s.name for s in self.shards if split is None or s.split == split]


def build_manifest(
    dataset: str,
    options: dict,
    shards: Iterable[ShardEntry],
    splits: Iterable[str],
    skipped: Iterable,
    complete: bool,
) -> Manifest:
    """Assemble a manifest and its totals from the shard entries (``splits`` names every planned split,
    so a split whose clips were all skipped still shows up with zero samples). ``skipped`` holds
    ``sources.records.Skipped`` records or ``{source, reason}`` dicts."""
    shards = sorted(shards, key=lambda s: (s.split, s.name))
    split_totals = {name: SplitSummary() for name in sorted(set(splits) | {s.split for s in shards})}
    label_totals = dict.fromkeys(labels.UNIFIED, 0)
    face_totals = dict.fromkeys(FACE_KINDS, 0)
    for shard in shards:
        total = split_totals[shard.split]
        total.samples += shard.samples
        total.shards += 1
        for name, n in shard.labels.items():
            total.labels[name] = total.labels.get(name, 0) + n
            label_totals[name] = label_totals.get(name, 0) + n
        for kind, n in shard.faces.items():
            face_totals[kind] = face_totals.get(kind, 0) + n
    partial = partial_totals(shards)
    skipped_rows = {
        (s["source"], s["reason"]) if isinstance(s, dict) else (s.source, s.reason) for s in skipped
    }
    return Manifest(
        format_version=fmt.FORMAT_VERSION,
        dataset=dataset,
        avdali_version=__version__,
        options=dict(options),
        complete=complete,
        shards=shards,
        splits=split_totals,
        labels=label_totals,
        faces=face_totals,
        skipped=[{"source": src, "reason": reason} for src, reason in sorted(skipped_rows)],
        partial=partial,
    )


def partial_totals(shards: Iterable[ShardEntry]) -> dict[str, int]:
    """``{no_audio, no_video}`` counts over the shards' ``partial`` lists (empty when there are none)."""
    totals = dict.fromkeys(PARTIAL_KINDS.values(), 0)
    for shard in shards:
        for p in shard.partial:
            totals[PARTIAL_KINDS[p["missing"]]] += 1
    return totals if any(totals.values()) else {}


def write_manifest(out: Path, manifest: Manifest) -> None:
    """Atomically (tmp + rename) write ``out/manifest.json``."""
    atomic_write_bytes(Path(out) / fmt.MANIFEST_NAME, manifest.to_json())


# --- reading: every value is checked before use -------------------------------------------------


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise AvdaliError(f"{path}: {what}")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count_map(v, path: Path, what: str) -> dict[str, int]:
    _need(isinstance(v, dict) and all(isinstance(k, str) and _is_count(n) for k, n in v.items()), path, what)
    return dict(v)


def _shard_from_dict(d, path: Path, i: int) -> ShardEntry:
    where = f"shards[{i}]"
    _need(isinstance(d, dict), path, f"{where} is not an object")
    name = d.get("name")
    _need(isinstance(name, str) and SHARD_NAME_RE.match(name) is not None, path, f"{where}.name {name!r} is not a shard name")
    _need(d.get("index_name") == fmt.index_name(name), path, f"{where}.index_name does not match {name}")
    _need(isinstance(d.get("split"), str), path, f"{where}.split is missing")
    _need(_is_count(d.get("samples")), path, f"{where}.samples is not a count")
    keys = d.get("keys")
    _need(
        isinstance(keys, list) and len(keys) == d["samples"] and all(isinstance(k, str) for k in keys),
        path,
        f"{where}.keys does not list {d['samples']} keys",
    )
    bad_key = next((k for k in keys if check_member_name(f"{k}.{fmt.VIDEO_EXT}")), None)
    _need(bad_key is None, path, f"{where}.keys: {bad_key!r} is not a sample key (a name in the tar's root)")
    sha = d.get("sha256")
    _need(isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) is not None, path, f"{where}.sha256 is not a SHA-256")
    _need(_is_count(d.get("bytes")), path, f"{where}.bytes is not a count")
    skipped = d.get("skipped", [])
    _need(
        isinstance(skipped, list)
        and all(isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("key", "source", "reason")) for s in skipped),
        path,
        f"{where}.skipped is malformed",
    )
    partial = d.get("partial", [])
    _need(
        isinstance(partial, list)
        and all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("key", "source", "reason"))
            and p.get("missing") in PARTIAL_KINDS and p["key"] in keys
            for p in partial
        ),
        path,
        f"{where}.partial is malformed (each needs key of this shard, source, missing audio|video, reason)",
    )
    for total in ("frames", "audio_samples"):
        _need(d.get(total) is None or _is_count(d[total]), path, f"{where}.{total} is not a count")
    return ShardEntry(
        name=name,
        index_name=d["index_name"],
        split=d["split"],
        samples=d["samples"],
        keys=list(keys),
        sha256=sha,
        bytes=d["bytes"],
        labels=_count_map(d.get("labels", {}), path, f"{where}.labels is malformed"),
        faces=_count_map(d.get("faces", {}), path, f"{where}.faces is malformed"),
        skipped=[dict(s) for s in skipped],
        partial=[{k: p[k] for k in ("key", "source", "missing", "reason")} for p in partial],
        frames=d.get("frames"),
        audio_samples=d.get("audio_samples"),
    )


def _check_options(options: dict, path: Path) -> None:
    """The pack options readers use (stored frame size, fps, max_seconds: they bound what a sample may declare) must
    be values ``avdali shard`` accepts; a missing one leaves readers to their own bounds."""
    given = {k: options[k] for k in PackOptions().content_options() if k in options}
    integers, numbers = ("size", "shard_size"), ("fps", "max_seconds")
    _need(all(isinstance(given[k], int) and not isinstance(given[k], bool) for k in integers if k in given), path, "options.size/shard_size are not integers")
    _need(all(isinstance(given[k], (int, float)) and not isinstance(given[k], bool) for k in numbers if k in given), path, "options.fps/max_seconds are not numbers")
    _need(isinstance(options.get("keep_partial", False), bool), path, "options.keep_partial is not true/false")
    try:
        PackOptions(**given)
    except AvdaliError as e:
        raise AvdaliError(f"{path}: options are not ones `avdali shard` writes ({e})") from None


def _readable_versions() -> str:
    """``READABLE_VERSIONS`` as a user reads them: ``1, 2 or 3``."""
    *rest, last = map(str, fmt.READABLE_VERSIONS)
    return f"{', '.join(rest)} or {last}" if rest else last


def read_manifest(out: Path) -> Manifest:
    """Read and validate ``out/manifest.json`` (``AvdaliError`` naming the file and the problem)."""
    path = Path(out) / fmt.MANIFEST_NAME
    if not path.is_file():
        raise AvdaliError(f"{path}: no manifest (is {out} a folder written by `avdali shard`?)")
    size = path.stat().st_size
    _need(size <= MAX_MANIFEST_BYTES, path, f"{size} bytes is larger than any manifest avdali writes")
    try:
        d = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise AvdaliError(f"{path}: not valid JSON ({e})") from None
    _need(isinstance(d, dict), path, "not a JSON object")
    version = d.get("format_version")
    _need(
        version in fmt.READABLE_VERSIONS and not isinstance(version, bool),
        path,
        f"shard format version {version!r}, this avdali reads {_readable_versions()}; "
        "re-pack with `avdali shard`",
    )
    _need(isinstance(d.get("dataset"), str), path, "dataset is missing")
    _need(isinstance(d.get("options"), dict), path, "options is missing")
    _check_options(d["options"], path)
    _need(isinstance(d.get("complete"), bool), path, "complete is missing")
    _need(isinstance(d.get("shards"), list), path, "shards is not a list")
    shards = [_shard_from_dict(s, path, i) for i, s in enumerate(d["shards"])]
    _need(len({s.name for s in shards}) == len(shards), path, "a shard is listed twice")
    splits_raw = d.get("splits", {})
    _need(isinstance(splits_raw, dict), path, "splits is not an object")
    splits = {}
    for name, s in splits_raw.items():
        _need(isinstance(s, dict) and _is_count(s.get("samples")) and _is_count(s.get("shards")), path, f"splits.{name} is malformed")
        splits[name] = SplitSummary(s["samples"], s["shards"], _count_map(s.get("labels", {}), path, f"splits.{name}.labels is malformed"))
    skipped = d.get("skipped", [])
    _need(
        isinstance(skipped, list) and all(isinstance(s, dict) and isinstance(s.get("source"), str) and isinstance(s.get("reason"), str) for s in skipped),
        path,
        "skipped is malformed",
    )
    return Manifest(
        format_version=version,
        dataset=d["dataset"],
        avdali_version=str(d.get("avdali_version", "")),
        options=d["options"],
        complete=d["complete"],
        shards=shards,
        splits=splits,
        labels=_count_map(d.get("labels", {}), path, "labels is malformed"),
        faces=_count_map(d.get("faces", {}), path, "faces is malformed"),
        skipped=[{"source": s["source"], "reason": s["reason"]} for s in skipped],
        partial=partial_totals(shards),
    )


def sample_limits(options: dict) -> tuple[int, int]:
    """(most frames, most audio samples) one sample can hold under the manifest's pack options: transcode keeps
    at most ``max_seconds * fps`` frames and ``max_seconds`` of 16 kHz audio (one of slack for rounding)."""
    max_seconds, fps = float(options.get("max_seconds", MAX_SECONDS)), float(options.get("fps", MAX_FPS))
    return math.floor(max_seconds * fps) + 1, round(max_seconds * fmt.AUDIO_RATE) + 1
