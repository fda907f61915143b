"""``avdali inspect``: check every shard of a folder against its ``manifest.json``.

Reads the tars with the same checked member iteration as the loaders, so a crafted tar is refused here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from avdali import labels
from avdali import shardformat as fmt
from avdali.files import file_sha256
from avdali.shardformat.index import MAX_INDEX_BYTES, tar_index
from avdali.shardformat.manifest import Manifest, read_manifest, sample_limits
from avdali.shardformat.members import SAMPLE_EXTS, UnsafeMember, decode_meta_i32, read_members
from avdali.shardformat.probe import count_flac_samples, count_webm_frames


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


def _group_samples(members: list[tuple[str, str, bytes]]) -> list[tuple[str, dict[str, bytes]]]:
    samples: list[tuple[str, dict[str, bytes]]] = []
    for key, ext, data in members:
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = data
    return samples


def _json_streams(meta: dict) -> int:
    """The ``streams`` bitmask a sample's json declares (no ``streams`` object: a whole clip)."""
    streams = meta.get("streams")
    if not isinstance(streams, dict):
        return fmt.STREAMS_ALL
    return (fmt.STREAM_AUDIO if streams.get("audio") is True else 0) | (fmt.STREAM_VIDEO if streams.get("video") is True else 0)


def _check_sample(
    key: str, parts: dict[str, bytes], split: str, limits: tuple[int, int], partial: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """Label consistency, the sizes ``meta.i32`` declares (within ``limits``) and the real streams (``meta.i32``,
    json and the manifest's ``partial`` entry: stream → missing) of one sample → (label id, problems)."""
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
    manifest_streams = fmt.STREAMS_ALL
    for stream in partial or {}:
        manifest_streams &= ~(fmt.STREAM_AUDIO if stream == "audio" else fmt.STREAM_VIDEO)
    if not nums["streams"] or len({nums["streams"], _json_streams(meta), manifest_streams}) != 1:
        problems.append(
            f"{key}: real streams disagree: meta.i32 {nums['streams']}, json {_json_streams(meta)}, manifest {manifest_streams}"
            " (1 audio, 2 video)"
        )
    max_frames, max_audio = limits
    if not 1 <= nums["frames"] <= max_frames or not 0 <= nums["audio_samples"] <= max_audio:
        problems.append(
            f"{key}: meta.i32 declares {nums['frames']} frames and {nums['audio_samples']} audio samples; "
            f"the pack options allow 1-{max_frames} frames and 0-{max_audio} samples"
        )
    return label, problems


def _check_decode(key: str, parts: dict[str, bytes]) -> list[str]:
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
            samples = _group_samples(read_members(tar_path))
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
        partial: dict[str, dict[str, str]] = {}
        for p in shard.partial:
            partial.setdefault(p["key"], {})[p["missing"]] = p["reason"]
        for key, parts in samples:
            label, sample_problems = _check_sample(key, parts, shard.split, limits, partial.get(key))
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
