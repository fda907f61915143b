"""Speaker normalisation (``data.speaker_norm``): each clip against its speaker's usual face and voice.

A speaker's statistics come from every clip that person has in the same split of the shard folder (labels are never
read): the mean of all their decoded frames, and the mean and standard deviation of each audio feature bin over all
their audio frames. A device stage after the loader (``SpeakerNorm``, the same for every loader) subtracts the mean
frame, cropped, scaled and flipped with each clip's own crop window, from every frame, and standardises the raw
features the loader emits with the speaker's mean and std (instead of each clip's own). What is left is how this clip differs from the person's usual
face and voice: identity, skin tone, background, vocal tract and a personal way of holding the face cancel, the
expression stays. It is per-speaker feature normalisation as in speech emotion recognition, extended to the frames,
and transductive like it: a held-out speaker is normalised with their own unlabelled clips. ``avdali predict`` needs
other clips of the same person for it (``--speaker-clips``).

The statistics are computed once per shard folder and audio feature setting (all splits, one pass decoding every
frame and every audio track) and cached beside the manifest in ``speaker_stats-<features><bins>.npz``, keyed on the
shards' SHA-256s and the feature settings, so a re-pack (or MFCC over another mel count) recomputes them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avdali import shardformat as fmt
from avdali.data import clipspec
from avdali.data.batch import Batch
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError
from avdali.files import atomic_write
from avdali.shardformat.manifest import read_manifest
from avdali.shardformat.members import decode_meta_i32, read_members



@dataclass(frozen=True)
class Speaker:
    """One person's statistics (None where they have no clip with that stream)."""

    frame: np.ndarray | None
    """H,W,3 float32 mean of all their frames."""
    audio_mean: np.ndarray | None
    """F float32 per-bin mean of their audio features."""
    audio_std: np.ndarray | None
    """F float32 per-bin standard deviation."""


class Sums:
    """Running sums of one speaker's frames and feature frames."""

    def __init__(self):
        self.frame, self.frames = 0.0, 0
        self.audio, self.audio_sq, self.audio_frames = 0.0, 0.0, 0

    def add_frames(self, frames: np.ndarray) -> None:
        """T,H,W,3 frames of one clip."""
        self.frame = self.frame + frames.sum(axis=0, dtype=np.float64)
        self.frames += len(frames)

    def add_features(self, feats: np.ndarray) -> None:
        """F,A un-normalised features of one clip."""
        feats = feats.astype(np.float64)
        self.audio = self.audio + feats.sum(axis=1)
        self.audio_sq = self.audio_sq + (feats**2).sum(axis=1)
        self.audio_frames += feats.shape[1]

    def speaker(self) -> Speaker:
        frame = (self.frame / self.frames).astype(np.float32) if self.frames else None
        if not self.audio_frames:
            return Speaker(frame, None, None)
        mean = self.audio / self.audio_frames
        var = np.maximum(self.audio_sq / self.audio_frames - mean**2, 0.0)
        return Speaker(frame, mean.astype(np.float32), np.sqrt(var + clipspec.SPEAKER_STD_EPS).astype(np.float32))


@dataclass(frozen=True)
class SpeakerStats:
    """Statistics per (split, speaker) of one shard folder, and which speaker each sample belongs to."""

    speakers: dict[tuple[str, str], Speaker]
    """(split, speaker) → their statistics."""
    speaker: dict[tuple[str, str], str]
    """(tar file name, sample key) → speaker."""
    split: dict[str, str]
    """tar file name → split."""

    def of(self, tar: str, key: str) -> Speaker:
        """The statistics of the speaker of sample ``key`` in the tar at path (or name) ``tar``."""
        name = Path(tar).name
        return self.speakers[(self.split[name], self.speaker[(name, key)])]


def speaker_of(meta: dict, source: str) -> str:
    """The person in a sample's ``.json``: RAVDESS ``actor`` (``Actor_05``) or MELD ``speaker``."""
    if isinstance(meta.get("actor"), int):
        return f"Actor_{meta['actor']:02d}"
    if isinstance(meta.get("speaker"), str) and meta["speaker"].strip():
        return meta["speaker"].strip()
    raise AvdaliError(f"{source}: the sample's json names no speaker ('actor' or 'speaker'); "
                      "data.speaker_norm needs one")


def subtract_mean(frames: np.ndarray, mean: np.ndarray, source: str = "clip") -> np.ndarray:
    """T,H,W,3 uint8 frames minus their speaker's mean frame, offset by ``clipspec.SPEAKER_OFFSET`` and rounded back
    to uint8 (the reference for ``SpeakerNorm``'s video half)."""
    if frames.shape[1:] != mean.shape:
        raise AvdaliError(f"{source}: frames of {frames.shape[1:3]} but the speaker's mean frame is {mean.shape[:2]}")
    return np.clip(np.rint(frames.astype(np.float32) - mean + clipspec.SPEAKER_OFFSET), 0, 255).astype(np.uint8)


def add_clip(sums: Sums, webm: bytes | None, frames: int, flac: bytes | None, features, source: str) -> None:
    """Add one clip's real streams (None: a placeholder, left out) to ``sums``: all ``frames`` decoded frames of
    ``webm`` and the features of all of ``flac``; ``features`` is an ``AudioFeatures`` of the run's settings."""
    import torch

    from avdali.data.decode import decode_frames, read_wav

    if webm is not None:
        sums.add_frames(decode_frames(webm, np.arange(frames), source))
    if flac is not None:
        sums.add_features(features.raw(torch.from_numpy(np.ascontiguousarray(read_wav(flac, source)))).numpy())


def compute_speaker_stats(shards: str | Path, cfg) -> SpeakerStats:
    """One pass over every tar of the folder: every frame and audio track, summed per (split, speaker). Placeholder
    streams (``--keep-partial``) are left out."""
    import webdataset as wds

    from avdali.data.decode import AudioFeatures

    shards = Path(shards)
    features = AudioFeatures(cfg)
    sums: dict[tuple[str, str], Sums] = {}
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
            nums = decode_meta_i32(sample[fmt.NUMS_EXT])
            add_clip(sums.setdefault((entry.split, who), Sums()),
                     sample[fmt.VIDEO_EXT] if nums["streams"] & fmt.STREAM_VIDEO else None, nums["frames"],
                     sample[fmt.AUDIO_EXT] if nums["streams"] & fmt.STREAM_AUDIO else None, features, source)
    return SpeakerStats({g: s.speaker() for g, s in sums.items()}, speaker, split)


def cache_path(shards: Path, cfg) -> Path:
    """Where the folder's statistics for ``cfg``'s audio features are cached."""
    return shards / f"speaker_stats-{cfg.features}{cfg.feature_bins}.npz"


def _cache_key(shards: Path, cfg) -> str:
    """The shards' SHA-256s and every setting the audio statistics depend on."""
    h = hashlib.sha256(f"{cfg.features} {cfg.n_mels} {cfg.n_mfcc}\n".encode())
    for entry in read_manifest(shards).shards:
        h.update(f"{entry.name}\0{entry.sha256}\n".encode())
    return h.hexdigest()


_FIELDS = ("frame", "audio_mean", "audio_std")


def _save(path: Path, stats: SpeakerStats, key: str) -> None:
    groups = sorted(stats.speakers)
    arrays = {}
    for i, g in enumerate(groups):
        for name in _FIELDS:
            value = getattr(stats.speakers[g], name)
            if value is not None:
                arrays[f"{name}_{i}"] = value
    table = {"key": key, "groups": [list(g) for g in groups], "split": stats.split,
             "speaker": [[tar, sample, who] for (tar, sample), who in sorted(stats.speaker.items())]}
    buf = io.BytesIO()
    np.savez(buf, table=np.frombuffer(json.dumps(table).encode(), dtype=np.uint8), **arrays)
    atomic_write(path, lambda f: f.write(buf.getvalue()), "speaker statistics")


def _load(path: Path, key: str) -> SpeakerStats | None:
    try:
        with np.load(path) as z:
            table = json.loads(z["table"].tobytes())
            if table.get("key") != key:
                return None
            groups = [tuple(g) for g in table["groups"]]
            speakers = {g: Speaker(*(z[f"{n}_{i}"] if f"{n}_{i}" in z.files else None for n in _FIELDS))
                        for i, g in enumerate(groups)}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or from another version: recompute
    return SpeakerStats(speakers, {(tar, sample): who for tar, sample, who in table["speaker"]}, dict(table["split"]))


def speakers_of(shardset: ShardSet) -> dict[tuple[str, str], str]:
    """(tar file name, sample key) → speaker, from each sample's json (read, never decoded)."""
    out = {}
    for f in shardset.files:
        for key, ext, data in read_members(Path(f.tar)):
            if ext == fmt.META_EXT:
                source = f"{f.tar}:{key}"
                try:
                    meta = json.loads(data)
                except ValueError as e:
                    raise AvdaliError(f"{source}: unreadable sample json ({e})") from None
                out[(Path(f.tar).name, key)] = speaker_of(meta, source)
    return out


def stats_from_cache(store, shardset: ShardSet, cfg) -> SpeakerStats:
    """The statistics of the speakers of ``shardset``'s samples from a decoded-frame cache's ``store``
    (``cache.CacheStore``), with no second decoding pass: the cached frames summed per speaker, and the features of
    each cached audio track (``decode.AudioFeatures.raw``, or those the store keeps). Placeholder streams are left
    out, as in the folder's pass."""
    import torch

    from avdali.data.decode import AudioFeatures

    features = AudioFeatures(cfg)
    who = speakers_of(shardset)
    split = {Path(f.tar).name: f.entry.split for f in shardset.files}
    sums: dict[tuple[str, str], Sums] = {}
    for f in shardset.files:
        name = Path(f.tar).name
        for j, key in enumerate(f.keys):
            r = store.row.get(f.first + j)
            if r is None:
                continue
            group = sums.setdefault((split[name], who[(name, key)]), Sums())
            if store.streams[r] & fmt.STREAM_VIDEO:
                a = int(store.frame_start[r])
                group.add_frames(store.frames[a : a + int(store.frame_count[r])].cpu().numpy())
            if store.streams[r] & fmt.STREAM_AUDIO:
                a = int(store.audio_start[r])
                track = store.audio[a : a + int(store.audio_count[r])].cpu()
                group.add_features(track.T.numpy() if store.keeps_features else features.raw(track).numpy())
    return SpeakerStats({g: s.speaker() for g, s in sums.items()}, who, split)


def load_speaker_stats(shards: str | Path, cfg, compute=None) -> SpeakerStats:
    """The folder's speaker statistics for ``cfg``'s audio features (a ``DataConfig``): from the folder's cache file
    when it matches the shards, else computed: by ``compute()`` when given (e.g. ``stats_from_cache`` for some of the
    folder's splits, not written to the file), else by one pass over the folder (written to the file when the folder
    is writable)."""
    shards = Path(shards)
    key = _cache_key(shards, cfg)
    path = cache_path(shards, cfg)
    cached = _load(path, key) if path.is_file() else None
    if cached is not None:
        return cached
    if compute is not None:
        return compute()
    stats = compute_speaker_stats(shards, cfg)
    try:
        _save(path, stats, key)
    except AvdaliError:
        pass  # a read-only shard folder: computed again next time
    return stats


class SpeakerNorm:
    """The speaker stage: runs on a batch's own device after any loader (DALI, torch, cache) and after ``predict``'s
    one-clip input, so every path normalises alike.

    Video: each frame minus its speaker's mean frame, that mean cropped and scaled with the clip's ``crop_box`` (one
    bilinear sample per output pixel, as the crop resamples) and mirrored when the clip was, plus
    ``clipspec.SPEAKER_OFFSET``, rounded to uint8; rows whose video is a placeholder, or whose speaker has no real
    video, keep their frames. Audio: the loader's raw features standardised per bin with the speaker's mean and std;
    rows without the speaker's audio statistics, or with placeholder audio, are standardised per clip (as without
    ``data.speaker_norm``); padding stays zero."""

    def __init__(self, speakers: list[Speaker], sample_speaker: np.ndarray):
        """``speakers``: the rows; ``sample_speaker``: a sample's ``Batch.index`` → its row."""
        frames = [s.frame for s in speakers if s.frame is not None]
        bins = next((len(s.audio_mean) for s in speakers if s.audio_mean is not None), 1)
        shape = frames[0].shape if frames else (1, 1, 3)
        self._host = dict(
            frame=np.stack([s.frame if s.frame is not None else np.zeros(shape, np.float32) for s in speakers]),
            has_frame=np.array([s.frame is not None for s in speakers]),
            audio_mean=np.stack([s.audio_mean if s.audio_mean is not None else np.zeros(bins, np.float32) for s in speakers]),
            audio_std=np.stack([s.audio_std if s.audio_std is not None else np.ones(bins, np.float32) for s in speakers]),
            has_audio=np.array([s.audio_mean is not None for s in speakers]),
            row=np.asarray(sample_speaker, dtype=np.int64),
        )
        self._on: dict = {}

    @classmethod
    def for_shards(cls, stats: SpeakerStats, shardset: ShardSet) -> SpeakerNorm:
        """The stage for the samples of ``shardset`` (their ``Batch.index``)."""
        groups = sorted(stats.speakers)
        row_of = {g: i for i, g in enumerate(groups)}
        sample = np.empty(shardset.num_samples, dtype=np.int64)
        for f in shardset.files:
            name = Path(f.tar).name
            for j, key in enumerate(f.keys):
                sample[f.first + j] = row_of[(stats.split[name], stats.speaker[(name, key)])]
        return cls([stats.speakers[g] for g in groups], sample)

    @classmethod
    def for_one(cls, speaker: Speaker) -> SpeakerNorm:
        """The stage for a one-clip batch (``index`` 0) of ``speaker``."""
        return cls([speaker], np.zeros(1, dtype=np.int64))

    def _tensors(self, device):
        import torch

        key = str(device)
        if key not in self._on:
            self._on[key] = {k: torch.from_numpy(v).to(device) for k, v in self._host.items()}
        return self._on[key]

    def __call__(self, batch: Batch) -> Batch:
        import dataclasses

        t = self._tensors(batch.label.device)
        row = t["row"][batch.index]
        return dataclasses.replace(batch, video=self._video(batch, t, row), audio=self._audio(batch, t, row))

    @staticmethod
    def _video(batch: Batch, t: dict, row):
        import torch
        from torchvision.ops import roi_align

        video = batch.video  # N,T,C,H,W uint8 (DALI's: a view of N,T,H,W,C memory)
        if video.dtype != torch.uint8:
            raise AvdaliError(f"the speaker stage subtracts in pixel levels: uint8 frames needed, got {video.dtype}")
        if batch.crop_box is None:
            raise AvdaliError("the speaker stage needs each clip's crop window (Batch.crop_box); this loader gave none")
        mean = t["frame"][row].permute(0, 3, 1, 2)  # N,3,H,W float32
        top, left, h, w = batch.crop_box.to(torch.float32).unbind(1)
        boxes = torch.stack([torch.arange(len(row), device=row.device, dtype=torch.float32), left, top, left + w, top + h], 1)
        crop = roi_align(mean, boxes, output_size=tuple(video.shape[-2:]), spatial_scale=1.0, sampling_ratio=1,
                         aligned=True)  # one bilinear sample per output pixel at the pixel's centre
        if batch.flipped is not None:
            crop = torch.where(batch.flipped.view(-1, 1, 1, 1), crop.flip(-1), crop)
        use = batch.video_present & t["has_frame"][row]
        memory = video.permute(0, 1, 3, 4, 2)  # N,T,H,W,C: DALI's memory order (a view either way)
        out = (memory.float() - crop.permute(0, 2, 3, 1)[:, None] + clipspec.SPEAKER_OFFSET).round_().clamp_(0, 255)
        out = torch.where(use.view(-1, 1, 1, 1, 1), out.to(torch.uint8), memory)
        return out.permute(0, 1, 4, 2, 3)

    @staticmethod
    def _audio(batch: Batch, t: dict, row):
        import torch

        feats = batch.audio  # N,F,A raw features, zero-padded after audio_len
        mask = (torch.arange(feats.shape[2], device=feats.device) < batch.audio_len[:, None])[:, None, :]
        count = batch.audio_len.clamp(min=1).to(feats.dtype)[:, None, None]
        clip_mean = (feats * mask).sum(2, keepdim=True) / count
        clip_var = (((feats - clip_mean) * mask) ** 2).sum(2, keepdim=True) / count
        use = (batch.audio_present & t["has_audio"][row]).view(-1, 1, 1)
        mean = torch.where(use, t["audio_mean"][row][:, :, None], clip_mean)
        std = torch.where(use, t["audio_std"][row][:, :, None], torch.sqrt(clip_var + clipspec.NORM_EPS))
        return (feats - mean) / std * mask


class SpeakerNormalised:
    """A loader whose every batch passes through a ``SpeakerNorm`` stage (the Loader contract of ``data.build``)."""

    def __init__(self, loader, stage: SpeakerNorm):
        self.loader, self.stage = loader, stage
        self.num_samples = loader.num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for batch in self.loader:
            yield self.stage(batch)
