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
from avdali.errors import AvdaliError
from avdali.packing import format as fmt
from avdali.packing.writer import ShardFile, atomic_write_bytes, check_member_name
from avdali.sources.records import Skipped

MAX_MANIFEST_BYTES = 256 << 20
"""Refuse larger manifests (MELD's full manifest is ~2 MB) rather than parse a crafted one."""

SHARD_NAME_RE = re.compile(r"^[a-z0-9]+-[A-Za-z0-9_]+-\d{6}\.tar$")
"""Shard tar names the writer produces; anything else (slashes, ``..``) is refused on read."""

FACE_KINDS = ("detected", "centre")


@dataclass
class ShardEntry:
    """One shard as the manifest records it."""

    name: str
    """Tar file name, relative to the manifest's folder."""
    index_name: str
    """DALI ``.idx`` file name beside the tar."""
    split: str
    """Split the shard belongs to (``fold1`` … / ``train`` …)."""
    samples: int
    """Samples in the tar."""
    keys: list[str]
    """Sample keys in tar order."""
    sha256: str
    """Hex SHA-256 of the tar."""
    bytes: int
    """Tar size in bytes."""
    labels: dict[str, int] = field(default_factory=dict)
    """Samples per unified label name."""
    faces: dict[str, int] = field(default_factory=dict)
    """Samples whose crop followed a detected face vs a centre crop."""
    skipped: list[dict] = field(default_factory=list)
    """Clips of this shard's group that could not be packed: ``{key, source, reason}``.
    The group's planned keys are ``keys`` plus these keys (resume compares them)."""

    @property
    def planned_keys(self) -> set[str]:
        return set(self.keys) | {s["key"] for s in self.skipped}

    @classmethod
    def from_file(cls, shard: ShardFile, split: str, labels_: dict, faces: dict, skipped: list[dict]) -> ShardEntry:
        return cls(
            name=shard.name,
            index_name=shard.index_name,
            split=split,
            samples=shard.samples,
            keys=list(shard.keys),
            sha256=shard.sha256,
            bytes=shard.bytes,
            labels=labels_,
            faces=faces,
            skipped=skipped,
        )


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
    """``format.FORMAT_VERSION`` of the writer; readers refuse other versions."""
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

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()

    def shard_paths(self, root: Path, split: str | None = None) -> list[Path]:
        """Tar paths of all shards (or of one split), in order."""
        return [Path(root) / s.name for s in self.shards if split is None or s.split == split]


def build_manifest(
    dataset: str,
    options: dict,
    shards: Iterable[ShardEntry],
    splits: Iterable[str],
    skipped: Iterable[Skipped | dict],
    complete: bool,
) -> Manifest:
    """Assemble a manifest and its totals from the shard entries (``splits`` names every planned split,
    so a split whose clips were all skipped still shows up with zero samples)."""
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
    skipped_rows = {
        (s.source, s.reason) if isinstance(s, Skipped) else (s["source"], s["reason"]) for s in skipped
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
    )


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
    )


def _check_options(options: dict, path: Path) -> None:
    """The pack options readers use (stored frame size, fps, max_seconds: they bound what a sample may declare) must
    be values ``avdali shard`` accepts; a missing one leaves readers to their own bounds."""
    from avdali.packing.options import PackOptions

    given = {k: options[k] for k in PackOptions().content_options() if k in options}
    integers, numbers = ("size", "shard_size"), ("fps", "max_seconds")
    _need(all(isinstance(given[k], int) and not isinstance(given[k], bool) for k in integers if k in given), path, "options.size/shard_size are not integers")
    _need(all(isinstance(given[k], (int, float)) and not isinstance(given[k], bool) for k in numbers if k in given), path, "options.fps/max_seconds are not numbers")
    try:
        PackOptions(**given)
    except AvdaliError as e:
        raise AvdaliError(f"{path}: options are not ones `avdali shard` writes ({e})") from None


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
        version == fmt.FORMAT_VERSION,
        path,
        f"shard format version {version!r}, this avdali reads {fmt.FORMAT_VERSION}; re-pack with `avdali shard`",
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
    )


# --- checking a shard folder against its manifest (``avdali inspect``) --------------------------

MAX_INDEX_BYTES = 64 << 20
"""An index lists ~5 short lines per sample; anything larger is not one of ours."""

SAMPLE_EXTS = (fmt.LABEL_EXT, fmt.AUDIO_EXT, fmt.META_EXT, fmt.NUMS_EXT, fmt.VIDEO_EXT)
"""Components every sample must have, in tar order."""


@dataclass
class InspectReport:
    """What ``inspect_shards`` found."""

    manifest: Manifest
    """The folder's manifest."""
    problems: list[str] = field(default_factory=list)
    """One line per mismatch, naming the shard (or the manifest)."""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """Samples per split per unified label name, counted from the tars' ``cls`` members."""
    decoded: int = 0
    """Clips whose webm and flac were decoded and matched ``meta.i32``."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_members(tar_path: Path, max_members: int | None = None) -> list[tuple[str, str, bytes]]:
    """(key, ext, data) of every member, each checked first (``writer.iter_members``: regular files with flat
    names whose data lies inside the file; ``UnsafeMember`` otherwise)."""
    from avdali.packing.writer import iter_members, split_member_name

    members = []
    for tar, member in iter_members(tar_path, max_members):
        data = tar.extractfile(member).read()
        key, ext = split_member_name(member.name)
        members.append((key, ext, data))
    return members


def _group_samples(members: list[tuple[str, str, bytes]]) -> list[tuple[str, dict[str, bytes]]]:
    samples: list[tuple[str, dict[str, bytes]]] = []
    for key, ext, data in members:
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = data
    return samples


def count_webm_frames(webm: bytes) -> int:
    """Frames in a webm, counted by decoding it with PyAV."""
    import io

    import av

    with av.open(io.BytesIO(webm), "r") as container:
        return sum(1 for _ in container.decode(video=0))


def count_flac_samples(flac: bytes) -> tuple[int, int, int]:
    """(samples, rate, channels) of a FLAC, decoded with soundfile."""
    import io

    import soundfile as sf

    data, rate = sf.read(io.BytesIO(flac), dtype="int16", always_2d=True)
    return data.shape[0], rate, data.shape[1]


def sample_limits(options: dict) -> tuple[int, int]:
    """(most frames, most audio samples) one sample can hold under the manifest's pack options: transcode keeps
    at most ``max_seconds * fps`` frames and ``max_seconds`` of 16 kHz audio (one of slack for rounding)."""
    from avdali.packing.options import MAX_FPS, MAX_SECONDS

    max_seconds, fps = float(options.get("max_seconds", MAX_SECONDS)), float(options.get("fps", MAX_FPS))
    return math.floor(max_seconds * fps) + 1, round(max_seconds * fmt.AUDIO_RATE) + 1


def _check_sample(key: str, parts: dict[str, bytes], split: str, limits: tuple[int, int]) -> tuple[int, list[str]]:
    """Label consistency and the sizes ``meta.i32`` declares (within ``limits``) of one sample → (label id, problems)."""
    from avdali.packing.writer import decode_meta_i32

    problems = []
    missing = [ext for ext in SAMPLE_EXTS if ext not in parts]
    if missing or len(parts) != len(SAMPLE_EXTS):
        return -1, [f"{key}: components {sorted(parts)}, expected {list(SAMPLE_EXTS)}"]
    try:
        label = int(parts[fmt.LABEL_EXT].decode("ascii"))
        meta = json.loads(parts[fmt.META_EXT])
        nums = decode_meta_i32(parts[fmt.NUMS_EXT])
    except (ValueError, UnicodeDecodeError) as e:
        return -1, [f"{key}: unreadable cls/json/meta.i32 ({e})"]
    if not 0 <= label < len(labels.UNIFIED):
        return -1, [f"{key}: cls {label} is not a unified label id"]
    if meta.get("key") != key or meta.get("split") != split:
        problems.append(f"{key}: json key/split {meta.get('key')!r}/{meta.get('split')!r} do not match")
    if meta.get("label") != label or nums["label"] != label:
        problems.append(f"{key}: cls {label}, json {meta.get('label')}, meta.i32 {nums['label']} disagree")
    if meta.get("frames") != nums["frames"] or meta.get("audio_samples") != nums["audio_samples"]:
        problems.append(f"{key}: json frames/audio_samples disagree with meta.i32")
    max_frames, max_audio = limits
    if not 1 <= nums["frames"] <= max_frames or not 0 <= nums["audio_samples"] <= max_audio:
        problems.append(
            f"{key}: meta.i32 declares {nums['frames']} frames and {nums['audio_samples']} audio samples; "
            f"the pack options allow 1-{max_frames} frames and 0-{max_audio} samples"
        )
    return label, problems


def _check_decode(key: str, parts: dict[str, bytes]) -> list[str]:
    from avdali.packing.writer import decode_meta_i32

    nums = decode_meta_i32(parts[fmt.NUMS_EXT])
    problems = []
    try:
        frames = count_webm_frames(parts[fmt.VIDEO_EXT])
        if frames != nums["frames"]:
            problems.append(f"{key}: webm decodes to {frames} frames, meta.i32 says {nums['frames']}")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        problems.append(f"{key}: webm does not decode ({type(e).__name__}: {e})")
    try:
        samples, rate, channels = count_flac_samples(parts[fmt.AUDIO_EXT])
        if (samples, rate, channels) != (nums["audio_samples"], fmt.AUDIO_RATE, 1):
            problems.append(
                f"{key}: flac is {samples} samples at {rate} Hz x{channels}, meta.i32 says {nums['audio_samples']} at {fmt.AUDIO_RATE} Hz mono"
            )
    except Exception as e:  # noqa: BLE001
        problems.append(f"{key}: flac does not decode ({type(e).__name__}: {e})")
    return problems


def inspect_shards(out: Path, decode_per_split: int = 3, progress=None) -> InspectReport:
    """Check every shard of ``out`` against ``manifest.json``: sha256, size, sample keys and counts, the
    ``.idx`` against the tar, label consistency of every sample; decode ``decode_per_split`` clips per split
    (evenly spread) and compare frames/audio samples with ``meta.i32``. ``progress(shard_name)`` is called per shard."""
    from avdali.packing.writer import UnsafeMember, file_sha256, tar_index

    out = Path(out)
    manifest = read_manifest(out)
    report = InspectReport(manifest)
    problems = report.problems
    if not manifest.complete:
        problems.append(f"{out / fmt.MANIFEST_NAME}: not complete (the run was stopped; re-run `avdali shard` to resume)")
    if not manifest.shards:
        problems.append(f"{out / fmt.MANIFEST_NAME}: lists no shards (nothing was packed)")
    limits = sample_limits(manifest.options)
    per_split_keys: dict[str, list[str]] = {}
    for shard in manifest.shards:
        per_split_keys.setdefault(shard.split, []).extend(shard.keys)
    to_decode: set[str] = set()
    for keys in per_split_keys.values():
        n = min(decode_per_split, len(keys))
        to_decode |= {keys[(i * len(keys)) // n] for i in range(n)} if n else set()

    for shard in manifest.shards:
        if progress:
            progress(shard.name)
        tar_path, idx_path = out / shard.name, out / shard.index_name
        where = shard.name
        if not tar_path.is_file():
            problems.append(f"{where}: missing")
            continue
        if tar_path.stat().st_size != shard.bytes:
            problems.append(f"{where}: {tar_path.stat().st_size} bytes, manifest says {shard.bytes}")
        if file_sha256(tar_path) != shard.sha256:
            problems.append(f"{where}: sha256 differs from the manifest")
        try:
            expected_idx = tar_index(tar_path)
            samples = _group_samples(_read_members(tar_path))
        except UnsafeMember as e:
            problems.append(f"{where}: refused: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a broken tar is a finding
            problems.append(f"{where}: unreadable tar ({type(e).__name__}: {e})")
            continue
        if not idx_path.is_file():
            problems.append(f"{shard.index_name}: missing")
        elif idx_path.stat().st_size > MAX_INDEX_BYTES:
            problems.append(f"{shard.index_name}: {idx_path.stat().st_size} bytes, too large for an index")
        elif idx_path.read_bytes() != expected_idx.encode():
            problems.append(f"{shard.index_name}: does not match {shard.name} (offsets/sizes/names differ)")
        keys = [key for key, _ in samples]
        if len(keys) != shard.samples or keys != shard.keys:
            problems.append(f"{where}: holds {len(keys)} samples, manifest lists {shard.samples} (keys differ)" if len(keys) != shard.samples else f"{where}: sample keys differ from the manifest")
        split_labels = report.labels.setdefault(shard.split, dict.fromkeys(labels.UNIFIED, 0))
        for key, parts in samples:
            label, sample_problems = _check_sample(key, parts, shard.split, limits)
            problems.extend(f"{where}: {p}" for p in sample_problems)
            if label >= 0:
                split_labels[labels.UNIFIED[label]] += 1
            if key in to_decode and not sample_problems:
                decode_problems = _check_decode(key, parts)
                problems.extend(f"{where}: {p}" for p in decode_problems)
                report.decoded += 1
    for split, counted in report.labels.items():
        recorded = manifest.splits.get(split)
        if recorded is None or {k: v for k, v in recorded.labels.items() if v} != {k: v for k, v in counted.items() if v}:
            problems.append(f"{out / fmt.MANIFEST_NAME}: labels of split {split} differ from the shards' cls")
    return report
