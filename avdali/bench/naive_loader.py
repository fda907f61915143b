"""The original notebook's loader, kept only as the benchmark's reference point (never used for training).

Per item it opens the raw mp4, decodes every frame to RGB, picks T evenly spaced frames, resizes them to
the crop size, decodes and resamples the AAC track to 16 kHz and computes MFCCs, all inside DataLoader
workers. It reads the raw tree, so it pays the full H.264 720p decode that packing pays only once.

It reads only the clips the shards' manifest packed whole: the raw tree also holds files the packer skipped
(truncated, corrupt, without audio) or packed with a placeholder (``--keep-partial``), which the notebook's loader
would crash on, and the comparison with the shard loaders must be over the same clips.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avdali.data import clipspec
from avdali.data.config import DataConfig
from avdali.errors import AvdaliError
from avdali.shardformat.manifest import Manifest
from avdali.sources import scan
from avdali.sources.records import ClipRecord


class NaiveClips(Dataset):
    """Raw clips of a dataset tree, decoded per item the notebook way."""

    def __init__(self, records: list[ClipRecord], cfg: DataConfig):
        self.records, self.cfg = records, cfg
        self._mfcc = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        with av.open(str(record.video_path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # every frame
        with av.open(str(record.video_path)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=clipspec.SAMPLE_RATE)
            chunks = [r.to_ndarray()[0] for f in container.decode(audio=0) for r in resampler.resample(f)]
        picks = np.linspace(0, len(frames) - 1, self.cfg.frames).round().astype(int)
        size = (self.cfg.crop, self.cfg.crop)
        video = np.stack([cv2.resize(frames[k], size, interpolation=cv2.INTER_AREA) for k in picks])
        wav = np.concatenate(chunks) if chunks else np.zeros(1, np.float32)
        window = clipspec.window_samples(self.cfg.audio_seconds)
        wav = np.pad(wav[:window], (0, max(0, window - len(wav))))
        if self._mfcc is None:
            import torchaudio

            self._mfcc = torchaudio.transforms.MFCC(
                sample_rate=clipspec.SAMPLE_RATE, n_mfcc=self.cfg.n_mfcc,
                melkwargs=dict(n_fft=clipspec.WINDOW, hop_length=clipspec.HOP, n_mels=self.cfg.n_mels),
            )
        mfcc = self._mfcc(torch.from_numpy(wav))
        return dict(video=torch.from_numpy(video).permute(0, 3, 1, 2), audio=mfcc, label=record.label)


def packed_records(dataset: str, root: str | Path, splits: list[str] | None, manifest: Manifest) -> list[ClipRecord]:
    """The raw tree's records of the clips ``manifest`` packed in ``splits`` (all when None), in scan order.

    ``AvdaliError`` when the tree is another dataset than the manifest's, or holds none of the packed clips."""
    if dataset != manifest.dataset:
        raise AvdaliError(f"--dataset {dataset}, but the shards hold {manifest.dataset}")
    packed = {k for s in manifest.shards if splits is None or s.split in splits for k in s.keys}
    packed -= {p["key"] for s in manifest.shards for p in s.partial}  # --keep-partial clips: the notebook's reader needs both streams
    # the same reader options as the pack, so every packed key has its record (songs, a --splits subset)
    found = scan(dataset, Path(root), include_song=bool(manifest.options.get("include_song")),
                 splits=manifest.options.get("splits")).records
    records = [r for r in found if r.key in packed]
    if not records:
        raise AvdaliError(
            f"{root}: none of the {len(packed)} clips packed in the shards' splits {splits or 'all'} is in this "
            f"{dataset} tree; --src must be the raw tree the shards were packed from"
        )
    return records


def naive_loader(dataset: str, root: str | Path, splits: list[str] | None, cfg: DataConfig, manifest: Manifest) -> DataLoader:
    """DataLoader over the raw tree's clips that ``manifest`` packed in ``splits``, ``cfg.num_threads`` workers."""
    return DataLoader(
        NaiveClips(packed_records(dataset, root, splits, manifest), cfg),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_threads,
        multiprocessing_context="forkserver",
        persistent_workers=True,
        drop_last=True,
    )
