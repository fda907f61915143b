"""Speaker normalisation of the frames (``data.speaker_norm``): every frame minus its speaker's mean frame.

A speaker's mean frame is the average of every decoded frame of every clip that speaker has in the same split of the
shard folder (labels are never read). What is left is how this clip's face differs from the person's usual
face: identity, skin tone, background and a personal way of holding the face cancel, the expression stays. It is
the visual counterpart of per-speaker feature normalisation in speech emotion recognition, and it is transductive
in that sense: a held-out speaker is normalised with their own unlabelled clips. ``avdali predict`` needs other clips
of the same person for it (``--speaker-clips``).

The means are computed once per shard folder (all its splits, one pass decoding every frame) and cached beside the
manifest in ``speaker_frames.npz``, keyed on the shards' SHA-256s, so a re-pack recomputes them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avdali import shardformat as fmt
from avdali.errors import AvdaliError
from avdali.files import atomic_write
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.members import decode_meta_i32

CACHE_NAME = "speaker_frames.npz"
"""The cache file in the shard folder."""
OFFSET = 128.0
"""Added to the difference so it fits the loaders' uint8 frames (a difference of ±127 levels survives)."""


@dataclass(frozen=True)
class SpeakerFrames:
    """Mean frames per (split, speaker) of one shard folder, and which speaker each sample belongs to."""

    means: dict[tuple[str, str], np.ndarray]
    """(split, speaker) → H,W,3 float32 mean of all the speaker's frames in that split."""
    speaker: dict[tuple[str, str], str]
    """(tar file name, sample key) → speaker."""
    split: dict[str, str]
    """tar file name → split."""

    def mean_for(self, tar: str, key: str) -> np.ndarray | None:
        """The mean frame of the speaker of sample ``key`` in the tar at path (or name) ``tar``; None for a speaker
        whose every clip in the split lacks its video (``--keep-partial``): there is nothing to subtract."""
        name = Path(tar).name
        return self.means.get((self.split[name], self.speaker[(name, key)]))


def speaker_of(meta: dict, source: str) -> str:
    """The person in a sample's ``.json``: RAVDESS ``actor`` (``Actor_05``) or MELD ``speaker``."""
    if isinstance(meta.get("actor"), int):
        return f"Actor_{meta['actor']:02d}"
    if isinstance(meta.get("speaker"), str) and meta["speaker"].strip():
        return meta["speaker"].strip()
    raise AvdaliError(f"{source}: the sample's json names no speaker ('actor' or 'speaker'); "
                      "data.speaker_norm needs one")


def subtract_mean(frames: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """T,H,W,3 uint8 frames minus their speaker's mean frame, offset by ``OFFSET`` and rounded back to uint8."""
    if frames.shape[1:] != mean.shape:
        raise AvdaliError(f"frames of {frames.shape[1:3]} but the speaker's mean frame is {mean.shape[:2]}")
    return np.clip(np.rint(frames.astype(np.float32) - mean + OFFSET), 0, 255).astype(np.uint8)


def mean_frame(webms: list[bytes], source: str) -> np.ndarray:
    """The mean of every frame of the given webm clips (H,W,3 float32)."""
    from avdali.data.torch_loader import all_frames

    total, count = None, 0
    for webm in webms:
        frames = all_frames(webm, source)
        s = frames.sum(axis=0, dtype=np.float64)
        total = s if total is None else total + s
        count += len(frames)
    if total is None:
        raise AvdaliError(f"{source}: no clips to average")
    return (total / count).astype(np.float32)


def _cache_key(shards: Path) -> str:
    manifest = read_manifest(shards)
    h = hashlib.sha256()
    for entry in manifest.shards:
        h.update(f"{entry.name}\0{entry.sha256}\n".encode())
    return h.hexdigest()


def compute_speaker_frames(shards: str | Path) -> SpeakerFrames:
    """One pass over every tar of the folder: decode every frame, average per (split, speaker). Clips without real
    video are left out of the means."""
    import webdataset as wds

    from avdali.data.torch_loader import all_frames

    shards = Path(shards)
    sums: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    speaker: dict[tuple[str, str], str] = {}
    split: dict[str, str] = {}
    for entry in read_manifest(shards).shards:
        split[entry.name] = entry.split
        for sample in wds.WebDataset(str(shards / entry.name), shardshuffle=False, empty_check=False):
            source = f"{shards / entry.name}:{sample['__key__']}"
            try:
                meta = json.loads(sample["json"])
            except (KeyError, ValueError) as e:
                raise AvdaliError(f"{source}: unreadable sample json ({e})") from None
            who = speaker_of(meta, source)
            speaker[(entry.name, sample["__key__"])] = who
            if not decode_meta_i32(sample[fmt.NUMS_EXT])["streams"] & fmt.STREAM_VIDEO:
                continue  # a placeholder picture (--keep-partial) says nothing about the face
            frames = all_frames(sample["webm"], source)
            group = (entry.split, who)
            s = frames.sum(axis=0, dtype=np.float64)
            sums[group] = sums[group] + s if group in sums else s
            counts[group] = counts.get(group, 0) + len(frames)
    means = {g: (sums[g] / counts[g]).astype(np.float32) for g in sums}
    return SpeakerFrames(means=means, speaker=speaker, split=split)


def _save(path: Path, frames: SpeakerFrames, key: str) -> None:
    groups = sorted(frames.means)
    table = {"key": key, "groups": [list(g) for g in groups], "split": frames.split,
             "speaker": [[tar, sample, who] for (tar, sample), who in sorted(frames.speaker.items())]}
    buf = io.BytesIO()
    np.savez(buf, table=np.frombuffer(json.dumps(table).encode(), dtype=np.uint8),
             means=np.stack([frames.means[g] for g in groups]) if groups else np.zeros((0, 1, 1, 3), np.float32))
    atomic_write(path, lambda f: f.write(buf.getvalue()), "speaker mean frames")


def _load(path: Path, key: str) -> SpeakerFrames | None:
    try:
        with np.load(path) as z:
            table = json.loads(z["table"].tobytes())
            means = z["means"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable or from another version: recompute
    if table.get("key") != key:
        return None
    groups = [tuple(g) for g in table["groups"]]
    return SpeakerFrames(means={g: means[i] for i, g in enumerate(groups)},
                         speaker={(tar, sample): who for tar, sample, who in table["speaker"]},
                         split=dict(table["split"]))


def load_speaker_frames(shards: str | Path) -> SpeakerFrames:
    """The folder's speaker mean frames: from ``speaker_frames.npz`` when it matches the shards, else computed (and
    cached there when the folder is writable)."""
    shards = Path(shards)
    key = _cache_key(shards)
    path = shards / CACHE_NAME
    cached = _load(path, key) if path.is_file() else None
    if cached is not None:
        return cached
    frames = compute_speaker_frames(shards)
    try:
        _save(path, frames, key)
    except AvdaliError:
        pass  # a read-only shard folder: the means are recomputed next time
    return frames
