"""Pack a raw dataset into shards: plan, transcode in parallel, write in order, resume after a stop.

The plan: scan → per split, the records in the order the shuffle seed gives them (``shuffled``), cut into groups
of ``shard_size`` → group ``i`` of a split becomes ``{dataset}-{split}-{i:06d}.tar`` holding the group's good clips.
A shard's bytes depend only on its group, so a stopped run resumes by keeping every shard the manifest vouches for
(same sha256, same planned keys) and redoing the rest, and the result is the same bytes as an uninterrupted run.

Clips are transcoded in a process pool (``workers.py``) and consumed in plan order, so the parent writes shards one
after another while the workers already work on the next group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from avdali import labels
from avdali.machine import libraries
from avdali import shardformat as fmt
from avdali.errors import AvdaliError
from avdali.files import TMP_SUFFIX, file_sha256
from avdali.folder_lock import hold_folder
from avdali.packing.workers import TranscodeFn, real_transcode, transcode_in_order
from avdali.packing.writer import encode_sample, face_kind, missing_streams, write_shard
from avdali.shardformat.index import tar_index
from avdali.shardformat.manifest import Manifest, ShardEntry, build_manifest, read_manifest, write_manifest
from avdali.shardformat.options import PackOptions
from avdali.sources.records import ClipRecord, Scan, Skipped



@dataclass(frozen=True)
class PackEvent:
    """What ``pack`` reports to its ``progress`` callback."""

    kind: str
    """``plan`` (once, before work), ``clip`` (a clip transcoded or failed), ``skip`` (a source not packed),
    ``shard`` (a shard finished or kept), ``note`` (a line to show, e.g. a stale folder lock taken over)."""
    clips_total: int = 0
    """``plan``: clips to transcode in this run (kept shards' clips excluded)."""
    shards_total: int = 0
    """``plan``: shards in the plan."""
    shards_kept: int = 0
    """``plan``: shards kept from an earlier run."""
    skipped: Skipped | None = None
    """``skip``: the source and the reason."""
    shard: str | None = None
    """``shard``: the tar's name."""
    kept: bool = False
    """``shard``: kept from an earlier run rather than written now."""
    samples: int = 0
    """``shard``: samples in it."""
    text: str = ""
    """``note``: the line."""


ProgressFn = Callable[[PackEvent], None]


@dataclass
class PackResult:
    """What a finished ``pack`` did."""

    out: Path
    """The shard folder."""
    manifest: Manifest
    """The final manifest (also in ``out/manifest.json``)."""
    shards_written: int
    """Shards written by this run."""
    shards_kept: int
    """Shards kept from an earlier, stopped run."""
    clips_transcoded: int
    """Clips this run sent through transcode (good or failed)."""
    elapsed_s: float
    """Wall time of this run."""
    workers: int
    """Worker processes used."""
    transcode_s: float = 0.0
    """Summed per-clip transcode seconds in the workers (÷ workers ≈ busy time)."""
    stage_s: dict[str, float] = field(default_factory=dict)
    """Summed seconds per transcode stage the transcode exposes (e.g. ``detect``)."""
    packed_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes written per component (``webm``, ``flac``, ``total`` = tar bytes) by this run."""
    clips_packed: int = 0
    """Samples written by this run."""

    @property
    def clips_per_s(self) -> float:
        return self.clips_transcoded / self.elapsed_s if self.elapsed_s > 0 else 0.0


class PackFailed(AvdaliError):
    """The run finished and wrote its manifest, but the result is not acceptable (nothing packed, or a skip
    under ``strict``); ``result`` holds everything for a summary."""

    def __init__(self, message: str, result: PackResult):
        super().__init__(message)
        self.result = result


@dataclass
class _Group:
    split: str
    index: int
    records: list[ClipRecord]

    @property
    def name(self) -> str:
        return fmt.shard_name(self.records[0].dataset, self.split, self.index)


def plan_groups(scan: Scan, shard_size: int, seed: int = 0) -> list[_Group]:
    """Cut each split's records, in ``shuffled`` order, into groups of ``shard_size``."""
    by_split: dict[str, list[ClipRecord]] = {}
    for record in scan.records:
        by_split.setdefault(record.split, []).append(record)
    groups = []
    for split in sorted(by_split):
        records = shuffled(by_split[split], seed, split)
        for i in range(0, len(records), shard_size):
            groups.append(_Group(split, i // shard_size, records[i : i + shard_size]))
    return groups


def shuffled(records: list[ClipRecord], seed: int, split: str) -> list[ClipRecord]:
    """One split's records in the order ``seed`` gives them: sorted by SHA-256 of ``{seed}/{split}/{key}``.

    Readers read tars in stored order and ranks read ranges of tars, so file-name order (RAVDESS names start with the
    emotion) would give a rank a few emotions only. A keyed hash rather than a seeded generator: the order depends on
    nothing but the seed and the keys (not on scan order, Python's or NumPy's generator versions, or the machine), so
    the same sources and options keep giving byte-identical shards."""

    def rank(record: ClipRecord) -> tuple[bytes, str]:
        return hashlib.sha256(f"{seed}/{split}/{record.key}".encode()).digest(), record.key

    return sorted(records, key=rank)


def relative_source(path: Path, src: Path) -> str:
    """A clip's path relative to the dataset root (POSIX), or the path itself when it is elsewhere."""
    try:
        return Path(path).resolve().relative_to(Path(src).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# --- resume -------------------------------------------------------------------------------------

_SHARD_FILE_RE = re.compile(r"^[a-z0-9]+-[A-Za-z0-9_]+-\d{6}\.(tar|idx)$")
"""Names of shard files (any dataset) that cleanup may delete; nothing else in OUT is touched."""


def _previous_manifest(out: Path, dataset: str, options: PackOptions, overwrite: bool) -> Manifest | None:
    path = out / fmt.MANIFEST_NAME
    if not path.exists():
        return None
    if overwrite:
        _remove_previous_run(out)
        return None
    advice = f"use a new OUT folder or --overwrite to replace {out}"
    try:
        previous = read_manifest(out)
    except AvdaliError as e:
        raise AvdaliError(f"{e}; {advice}") from None
    if previous.dataset != dataset:
        raise AvdaliError(f"{path} holds {previous.dataset} shards, not {dataset}; {advice}")
    # every content option, a missing one read as its default: an option left at its default is not recorded
    # (keyint, keep_partial), a manifest of an older format lacks shuffle_seed (its shards are re-packed below),
    # and a run that recorded one must not be resumed by a run that leaves it out
    defaults = PackOptions().content_options() | {"keyint": 0, "keep_partial": False}
    current = defaults | options.content_options()
    recorded = {k: previous.options.get(k, defaults[k]) for k in current}
    if recorded != current:
        changed = ", ".join(f"{k} {recorded[k]!r} → {v!r}" for k, v in current.items() if recorded[k] != v)
        raise AvdaliError(f"{path} was packed with other options ({changed}); {advice}")
    return previous


def _remove_previous_run(out: Path) -> None:
    """``--overwrite``: delete the files an earlier manifest lists (when it can be read) and the manifest."""
    try:
        previous = read_manifest(out)
        names = {n for s in previous.shards for n in (s.name, s.index_name)}
    except AvdaliError:
        names = set()
    names |= {p.name for p in out.iterdir() if p.is_file() and _SHARD_FILE_RE.match(p.name)}
    for name in sorted(names):
        (out / name).unlink(missing_ok=True)
    (out / fmt.MANIFEST_NAME).unlink(missing_ok=True)


def _keepable(group: _Group, entry: ShardEntry | None, out: Path) -> bool:
    """A shard from an earlier run is kept when it is the same plan (keys) and the same bytes (sha256)."""
    if entry is None or entry.split != group.split:
        return False
    if entry.planned_keys != {r.key for r in group.records}:
        return False
    planned_good = [r.key for r in group.records if r.key in set(entry.keys)]
    if planned_good != entry.keys:
        return False
    tar = out / entry.name
    if not tar.is_file() or tar.stat().st_size != entry.bytes or file_sha256(tar) != entry.sha256:
        return False
    idx = out / entry.index_name
    try:
        expected_idx = tar_index(tar).encode()
    except (ValueError, tarfile.TarError):
        return False  # the manifest vouches for a tar with links or paths in it: not ours, redo it

    if not idx.is_file() or idx.read_bytes() != expected_idx:
        # the tar is intact: its index can be rebuilt without transcoding anything
        from avdali.files import atomic_write_bytes

        atomic_write_bytes(idx, expected_idx)
    return True


def _remove_tmp_files(out: Path) -> None:
    for path in out.glob(f"*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink()


def _remove_stale_shards(out: Path, keep: set[str], previous: Manifest | None, dataset: str) -> None:
    """Delete shard files this run's plan does not contain: the old plan's files and our dataset's pattern."""
    candidates = {p.name for p in out.iterdir() if p.is_file() and _SHARD_FILE_RE.match(p.name) and p.name.startswith(f"{dataset}-")}
    if previous is not None:
        candidates |= {n for s in previous.shards for n in (s.name, s.index_name)}
    for name in sorted(candidates - keep):
        path = out / name
        if path.is_file():
            path.unlink()


# --- the run ------------------------------------------------------------------------------------


def _manifest_options(options: PackOptions) -> dict:
    """Options as the manifest records them, with float fields as floats: ``fps=15`` and ``fps=15.0`` are the
    same run and must write the same manifest bytes."""
    d = options.content_options()
    d.update(workers=options.workers, strict=options.strict)
    for f in dataclasses.fields(options):
        if f.type in (float, "float"):
            d[f.name] = float(d[f.name])
    return d


def _group_entry(group: _Group, outcomes: list[tuple[ClipRecord, Any, str | None]], src: Path, out: Path):
    """Write the shard of a finished group (when any clip is good) → (entry | None, skipped rows, samples)."""
    samples, skipped, partial = [], [], []
    label_counts = dict.fromkeys(labels.UNIFIED, 0)
    faces = {"detected": 0, "centre": 0}  # + "none" (placeholder picture) only when there is one
    for record, clip, reason in outcomes:
        source = relative_source(record.video_path, src)
        if clip is None:
            skipped.append({"key": record.key, "source": source, "reason": reason})
            continue
        samples.append(encode_sample(record, clip, source))
        label_counts[labels.UNIFIED[record.label]] += 1
        kind = face_kind(clip)
        faces[kind] = faces.get(kind, 0) + 1
        for stream, why in missing_streams(clip).items():
            partial.append({"key": record.key, "source": source, "missing": stream, "reason": why})
    if not samples:
        return None, skipped, samples
    shard = write_shard(out, group.name, samples)
    good = [clip for _, clip, _ in outcomes if clip is not None]
    totals = dict(frames=sum(c.frames for c in good), audio_samples=sum(c.audio_samples for c in good))
    return ShardEntry.from_file(shard, group.split, label_counts, faces, skipped, partial, **totals), skipped, samples


def pack(
    dataset: str,
    src: Path,
    out: Path,
    options: PackOptions,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    transcode: TranscodeFn | None = None,
) -> PackResult:
    """Pack raw ``dataset`` at ``src`` into shards in ``out`` (see the module doc); resumes a stopped run.

    ``overwrite`` ignores (and replaces) an earlier run's manifest and shards. ``transcode`` replaces
    ``transcode_clip`` (tests, benchmarks); it must be picklable when ``options.num_workers`` > 1.
    Raises ``AvdaliError`` for a bad ``src`` or a mismatching earlier run, ``PackFailed`` after writing
    the manifest when nothing could be packed or (``strict``) anything was skipped.
    """
    libraries.require(libraries.PACK_PARTS)  # a library that does not load: one line here, not a worker traceback
    from avdali.sources import scan as scan_dataset

    src, out = Path(src), Path(out)
    scan = scan_dataset(dataset, src, include_song=options.include_song, splits=options.splits)
    return pack_scan(scan, dataset, src, out, options, progress, overwrite=overwrite, transcode=transcode)


def pack_scan(
    scan: Scan,
    dataset: str,
    src: Path,
    out: Path,
    options: PackOptions,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    transcode: TranscodeFn | None = None,
) -> PackResult:
    """``pack`` after the scan: the records and reader skips are given. Holds ``out``'s folder lock
    (``avdali.folder_lock``) while it writes: a second packer into the same ``out`` stops at once."""
    notify = progress or (lambda event: None)
    with hold_folder(out, "avdali shard", lambda line: notify(PackEvent("note", text=line))):
        return _pack_locked(scan, dataset, src, Path(out), options, notify, overwrite, transcode)


def _pack_locked(
    scan: Scan, dataset: str, src: Path, out: Path, options: PackOptions, notify: ProgressFn, overwrite: bool,
    transcode: TranscodeFn | None,
) -> PackResult:
    started = time.perf_counter()
    previous = _previous_manifest(out, dataset, options, overwrite)
    _remove_tmp_files(out)

    groups = plan_groups(scan, options.shard_size, options.shuffle_seed)
    # the splits the reader found count even with no record left, so an empty split is reported, never dropped
    splits = sorted(set(scan.splits) | {g.split for g in groups})
    old_entries = {s.name: s for s in previous.shards} if previous else {}
    if previous is not None and previous.format_version != fmt.FORMAT_VERSION:
        # keeping them would mix two formats in one folder: every shard is redone (same options, new format)
        notify(PackEvent("note", text=f"{out / fmt.MANIFEST_NAME}: shard format {previous.format_version}, this avdali "
                                      f"writes {fmt.FORMAT_VERSION}: re-packing every shard"))
        old_entries = {}
    entries: dict[str, ShardEntry] = {}
    empty_group_skips: list[dict] = []
    todo: list[_Group] = []
    for group in groups:
        entry = old_entries.get(group.name)
        if _keepable(group, entry, out):
            entries[group.name] = entry
        else:
            todo.append(group)

    manifest_options = _manifest_options(options)

    def current_manifest(complete: bool) -> Manifest:
        skipped = list(scan.skipped) + [s for e in entries.values() for s in e.skipped] + empty_group_skips
        return build_manifest(dataset, manifest_options, entries.values(), splits, skipped, complete)

    workers = max(1, min(options.num_workers, sum(len(g.records) for g in todo) or 1))
    notify(
        PackEvent(
            "plan",
            clips_total=sum(len(g.records) for g in todo),
            shards_total=len(groups),
            shards_kept=len(entries),
        )
    )
    for skipped in scan.skipped:
        notify(PackEvent("skip", skipped=skipped))
    for name, entry in entries.items():
        notify(PackEvent("shard", shard=name, kept=True, samples=entry.samples))
        for s in entry.skipped:
            notify(PackEvent("skip", skipped=Skipped(s["source"], s["reason"])))
    write_manifest(out, current_manifest(complete=False))

    result = PackResult(out, None, 0, len(entries), 0, 0.0, workers)  # type: ignore[arg-type]
    result.packed_bytes = {fmt.VIDEO_EXT: 0, fmt.AUDIO_EXT: 0, "total": 0}
    records = [r for g in todo for r in g.records]
    outcomes_iter = transcode_in_order(records, options, transcode or real_transcode, workers)
    try:
        for group in todo:
            outcomes = []
            for _ in group.records:
                record, (clip, reason, seconds) = next(outcomes_iter)
                result.clips_transcoded += 1
                result.transcode_s += seconds
                if clip is not None:
                    detect = getattr(clip, "detect_s", None)
                    if detect is not None:
                        result.stage_s["detect"] = result.stage_s.get("detect", 0.0) + float(detect)
                else:
                    notify(PackEvent("skip", skipped=Skipped(relative_source(record.video_path, src), reason)))
                outcomes.append((record, clip, reason))
                notify(PackEvent("clip"))
            entry, skipped, samples = _group_entry(group, outcomes, src, out)
            for sample in samples:
                result.packed_bytes[fmt.VIDEO_EXT] += len(sample[fmt.VIDEO_EXT])
                result.packed_bytes[fmt.AUDIO_EXT] += len(sample[fmt.AUDIO_EXT])
            result.clips_packed += len(samples)
            if entry is None:
                empty_group_skips.extend(skipped)
                continue
            entries[group.name] = entry
            result.shards_written += 1
            result.packed_bytes["total"] += entry.bytes
            write_manifest(out, current_manifest(complete=False))
            notify(PackEvent("shard", shard=entry.name, samples=entry.samples))
    finally:
        outcomes_iter.close()  # stops the pool, also on Ctrl-C
        _remove_tmp_files(out)

    manifest = current_manifest(complete=True)
    _remove_stale_shards(out, {n for e in entries.values() for n in (e.name, e.index_name)}, previous, dataset)
    write_manifest(out, manifest)
    result.manifest = manifest
    result.elapsed_s = time.perf_counter() - started
    if manifest.samples == 0:
        raise PackFailed(f"{src}: no clip could be packed ({len(manifest.skipped)} sources skipped)", result)
    empty = [name for name, totals in manifest.splits.items() if totals.samples == 0]
    if empty:
        raise PackFailed(
            f"split {', '.join(empty)}: 0 samples packed (every source skipped, see above and manifest.json); "
            "fix the sources, or leave the split out on purpose with --splits",
            result,
        )
    if options.strict and manifest.skipped:
        first = manifest.skipped[0]
        raise PackFailed(
            f"{len(manifest.skipped)} sources skipped under --strict (first: {first['source']}: {first['reason']})", result
        )
    return result
