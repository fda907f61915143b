"""The PyTorch baseline loader: webdataset → PyAV + soundfile + torchaudio in DataLoader workers.

It reads the same frames and audio window as the DALI pipeline (``sampling.py``), and it is the fallback
where DALI is not installed (nothing here imports DALI). What makes it a fair baseline:

- workers are started with ``forkserver`` (audio libraries are not fork-safe) and stay alive across epochs;
  each runs one decoder thread and one torch thread, so N workers use N cores without oversubscription;
- a rank reads only the tars that hold its sample range (``sampling.rank_range``, the same split DALI uses),
  and its workers split its samples between them (every worker reads the tars, each decodes every N-th sample:
  all workers stay busy when a rank has fewer tars than workers);
- PyAV decodes only up to the last needed frame and converts only the needed frames to RGB;
- uint8 pixels cross the worker queues (4× smaller than float32); batches are pinned when going to CUDA;
- batching happens in the workers; the main process only merges the few partial batches at the end of an
  epoch and pads the last one so that every rank yields ``len()`` batches (padding has ``valid=False``).
"""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing as mp
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from avdali import shardformat as fmt
from avdali.data import sampling
from avdali.data.batch import Batch
from avdali.data.config import DataConfig
from avdali.data.integrity import changed_shards, read_failure
from avdali.data.normalize import prepare_video
from avdali.data.shards import ShardSet
from avdali.data.speakers import Speaker, SpeakerStats, load_speaker_stats, subtract_mean
from avdali.errors import AvdaliError
from avdali.shardformat.members import decode_meta_i32

START_METHOD = "forkserver"
"""Worker start method: fork is unsafe with audio/codec libraries that start threads (STYLE.md)."""
RANDOM_SCALE = (0.35, 1.0)
"""Random resized crop: share of the frame area kept (same as the DALI pipeline)."""
RANDOM_RATIO = (3 / 4, 4 / 3)
"""Random resized crop: aspect ratio range (same as the DALI pipeline)."""
DB_AMIN = 1e-10
"""Floor of the mel power before the log (DALI: ``cutoff_db=-100``)."""
NORM_EPS = 1e-5
"""Added to the variance in the per-utterance normalisation (same as the DALI pipeline)."""


# BT.601 limited range ("TV") YUV → RGB, what libavcodec's VP9 streams carry and what DALI converts with
_Y_SCALE = 255.0 / 219.0
_C_SCALE = 255.0 / 224.0
_YUV_TO_RGB = np.array(
    [[0.0, 1.402], [-0.344136, -0.714136], [1.772, 0.0]], dtype=np.float32
) * np.float32(_C_SCALE)  # rows R,G,B; columns U,V


def yuv420_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """H,W,3 uint8 RGB of a yuv420p frame, converted the way DALI's decoder does (BT.601 limited range,
    bilinear chroma upsampling): swscale's default chroma handling differs by up to ~40 levels on sharp
    colour edges, which would break loader parity."""
    h, w = frame.height, frame.width
    if frame.format.name != "yuv420p" or h % 2 or w % 2:
        return frame.to_ndarray(format="rgb24")
    planes = frame.to_ndarray()  # (h * 3/2, w): Y, then U and V quarter planes
    y = (planes[:h].astype(np.float32) - 16.0) * np.float32(_Y_SCALE)
    chroma = planes[h:].reshape(2, h // 2, w // 2)
    u = cv2.resize(chroma[0], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    v = cv2.resize(chroma[1], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    rgb = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        rgb[..., c] = y + _YUV_TO_RGB[c, 0] * u + _YUV_TO_RGB[c, 1] * v
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_frames(webm: bytes, indices: np.ndarray, source: str = "webm") -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) as T,H,W,3 uint8 RGB.

    Decoding stops at the last needed frame and only needed frames are converted to RGB. A clip with
    fewer frames than asked for repeats its last frame (the packer checks frame counts, so this is rare).
    """
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    picked: dict[int, np.ndarray] = {}
    final = None
    try:
        with av.open(io.BytesIO(webm)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # one decoder thread per worker: workers already fill the cores
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    picked[i] = final = yuv420_to_rgb(frame)
                if i >= last:
                    break
    except (av.FFmpegError, IndexError) as e:
        raise AvdaliError(f"{source}: cannot decode the video ({e})") from None
    if final is None:
        raise AvdaliError(f"{source}: the video has no frames")
    return np.stack([picked.get(int(i), final) for i in indices])


@dataclass
class AudioFeatures:
    """Log-mel (or MFCC) features with the DALI pipeline's parameters, computed with torchaudio."""

    cfg: DataConfig
    """Feature settings (features, n_mels, n_mfcc, audio_seconds)."""

    def __post_init__(self):
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sampling.SAMPLE_RATE,
            n_fft=sampling.NFFT,
            win_length=sampling.WINDOW,
            hop_length=sampling.HOP,
            f_min=0.0,
            f_max=sampling.SAMPLE_RATE / 2,
            n_mels=self.cfg.n_mels,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",  # DALI mel_filter_bank normalize=True
            mel_scale="slaney",  # DALI mel_formula="slaney"
        )
        self.dct = torchaudio.functional.create_dct(self.cfg.n_mfcc, self.cfg.n_mels, norm="ortho")
        self.frames = sampling.feature_frames(sampling.window_samples(self.cfg.audio_seconds))

    def raw(self, segment: torch.Tensor) -> torch.Tensor:
        """Features F,A of every frame, before any normalisation (log-mel in dB, or its MFCC)."""
        feats = 10.0 * torch.log10(torch.clamp(self.mel(segment), min=DB_AMIN))  # AmplitudeToDB, ref 1, no top_db
        if self.cfg.features == "mfcc":
            feats = (feats.T @ self.dct).T
        return feats

    def __call__(self, segment: torch.Tensor, speaker: Speaker | None = None) -> tuple[torch.Tensor, int]:
        """Features F,A (normalised per bin over the valid frames, or with ``speaker``'s per-bin mean and std when
        given; zero-padded) and the valid frame count."""
        feats = self.raw(segment)
        if speaker is not None and speaker.audio_mean is not None:
            mean, std = (torch.from_numpy(v)[:, None] for v in (speaker.audio_mean, speaker.audio_std))
            feats = (feats - mean) / std
        else:
            mean = feats.mean(dim=1, keepdim=True)
            var = feats.var(dim=1, unbiased=False, keepdim=True)
            feats = (feats - mean) / torch.sqrt(var + NORM_EPS)
        valid = feats.shape[1]
        return torch.nn.functional.pad(feats, (0, self.frames - valid)), valid


def _every(step: int, start: int, samples):
    """Samples ``start``, ``start + step``, … of the stream (the rest are read but not decoded)."""
    return itertools.islice(samples, start, None, step)


def _seed(*parts: int) -> int:
    return hash(parts) & 0x7FFF_FFFF


class ClipStream(IterableDataset):
    """One rank's samples, split over the DataLoader workers (every worker reads the rank's tars and decodes every
    N-th sample), decoded and batched in the workers."""

    def __init__(self, cfg: DataConfig, shardset: ShardSet, *, train: bool, rank: int, world_size: int, seed: int, epoch,
                 speakers: SpeakerStats | None = None):
        self.cfg, self.train, self.rank, self.seed, self.speakers = cfg, train, rank, seed, speakers
        self.epoch = epoch  # a shared multiprocessing Value: persistent workers see set_epoch
        lo, hi = sampling.rank_range(shardset.num_samples, rank, world_size)
        # tars overlapping [lo, hi) and, per (tar, key), the sample's global index
        self.urls = [f.tar for f in shardset.files if f.first < hi and f.first + f.count > lo]
        self.index = {
            (f.tar, key): f.first + j
            for f in shardset.files
            for j, key in enumerate(f.keys)
            if lo <= f.first + j < hi
        }
        self._features = None

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = self.epoch.value
        urls = list(self.urls)
        if self.train:
            random.Random(_seed(self.seed, self.rank, epoch)).shuffle(urls)  # same order in every worker
        rng = np.random.default_rng([self.seed, self.rank, epoch, worker])
        torch.manual_seed(_seed(self.seed, self.rank, epoch, worker, 1))
        stages = [
            wds.SimpleShardList(urls),
            wds.tarfile_to_samples(),
            wds.select(lambda s: (s["__url__"], s["__key__"]) in self.index),
            functools.partial(_every, workers, worker),  # this worker's samples: all workers busy, even on one tar
        ]
        if self.train:
            buffer = self.cfg.shuffle_buffer
            stages.append(wds.shuffle(buffer, initial=buffer, rng=random.Random(_seed(self.seed, self.rank, epoch, worker))))
        stages += [
            wds.map(lambda s: self.decode(s, rng if self.train and self.cfg.augment else None)),
            wds.batched(self.cfg.batch_size, collation_fn=_collate, partial=True),
        ]
        yield from wds.DataPipeline(*stages)

    def decode(self, sample: dict, rng: np.random.Generator | None) -> dict:
        """One tar sample → tensors (video T,C,H,W, audio F,A, audio_len, label, index)."""
        if self._features is None:
            self._features = AudioFeatures(self.cfg)
        source = f"{sample['__url__']}:{sample['__key__']}"
        speaker = self.speakers.of(sample["__url__"], sample["__key__"]) if self.speakers else None
        clip = decode_clip(sample[fmt.VIDEO_EXT], sample[fmt.AUDIO_EXT], sample[fmt.NUMS_EXT], self.cfg, rng, source,
                           self._features, speaker=speaker)
        return dict(clip, index=self.index[(sample["__url__"], sample["__key__"])])


def decode_clip(webm: bytes, flac: bytes, meta_i32: bytes, cfg: DataConfig, rng: np.random.Generator | None,
                source: str, features: AudioFeatures | None = None, speaker: Speaker | None = None) -> dict:
    """One clip's members → tensors (video T,C,H,W, audio F,A, audio_len, label) and its real streams
    (audio_present, video_present from ``meta.i32``): the per-sample work of the torch loader, also what
    ``avdali predict`` runs on a clip that is in no shard. ``rng`` (None: evaluation) picks frames, the crop window
    and the audio window; ``source`` names the clip in errors; ``features`` may be reused across calls (building
    the mel filter bank costs more than applying it). A placeholder stream (``--keep-partial``) is decoded like a
    real one, as DALI does: the flags, not the data, tell the model it is missing. ``speaker``
    (``data.speaker_norm``): the person's statistics; their mean frame is subtracted from the frames before the crop
    and the features are standardised with their per-bin mean and std (real streams only)."""
    frame_count, label, streams = _check_meta(meta_i32, cfg, source)
    frames = decode_frames(webm, sampling.frame_indices(frame_count, cfg.frames, rng), source)
    if speaker is not None and speaker.frame is not None and streams & fmt.STREAM_VIDEO:
        frames = subtract_mean(frames, speaker.frame, source)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T,C,H,W uint8, a view
    video = crop_video(video, cfg, augment=rng is not None)
    if cfg.video_dtype != "uint8":
        video = prepare_video(video).to(getattr(torch, cfg.video_dtype))

    wav = read_wav(flac, source)
    window = sampling.window_samples(cfg.audio_seconds)
    start = sampling.audio_start(len(wav), window, rng)
    features = features or AudioFeatures(cfg)
    real_audio = speaker if streams & fmt.STREAM_AUDIO else None
    audio, audio_len = features(torch.from_numpy(np.ascontiguousarray(wav[start : start + window])), real_audio)
    return dict(video=video, audio=audio, audio_len=audio_len, label=label,
                audio_present=bool(streams & fmt.STREAM_AUDIO), video_present=bool(streams & fmt.STREAM_VIDEO))


def read_wav(flac: bytes, source: str) -> np.ndarray:
    """The 16 kHz audio of a sample as mono float32 samples."""
    try:
        wav, rate = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile errors on corrupt data come as several types
        raise AvdaliError(f"{source}: cannot decode the audio ({_describe(e)})") from None
    if rate != sampling.SAMPLE_RATE:
        raise AvdaliError(f"{source}: audio at {rate} Hz, the shards must hold {sampling.SAMPLE_RATE} Hz")
    return wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]


def crop_video(video: torch.Tensor, cfg: DataConfig, augment: bool) -> torch.Tensor:
    """Random resized crop + flip (one window per clip) in training; centre crop otherwise."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    size = [cfg.crop, cfg.crop]
    if augment:
        top, left, h, w = v2.RandomResizedCrop.get_params(video, list(RANDOM_SCALE), list(RANDOM_RATIO))
        if cfg.crop_interp == "nearest":
            video = nearest_resized_crop(video, top, left, h, w, cfg.crop)
        else:  # uint8 channels-last bilinear has a vectorised kernel in torch
            video = F.resized_crop(video, top, left, h, w, size, antialias=False)  # as DALI: mostly upscaling
        return video.flip(-1) if torch.rand(()) < 0.5 else video
    top, left, side = sampling.center_crop_box(video.shape[-2], video.shape[-1], cfg.crop)
    video = video[..., top : top + side, left : left + side]
    if side != cfg.crop:
        video = F.resize(video, size, antialias=True)
    return video.contiguous()


def nearest_resized_crop(video: torch.Tensor, top: int, left: int, height: int, width: int, size: int) -> torch.Tensor:
    """torchvision's ``resized_crop(..., NEAREST)`` of a T,C,H,W tensor as two row/column gathers (3.5× faster on
    the channels-last frames PyAV gives; the same pixels)."""
    def source(start: int, extent: int) -> torch.Tensor:  # ATen's nearest: floor(i * float32(in / out)), clamped
        scale = torch.tensor(extent / size, dtype=torch.float32)
        return start + (torch.arange(size, dtype=torch.float32) * scale).floor().long().clamp_(max=extent - 1)

    return video.index_select(-2, source(top, height)).index_select(-1, source(left, width))


MAX_FRAMES = 1_000_000
"""More frames than any clip holds (a 24 h clip at 10 fps): a larger count in ``meta.i32`` is corruption."""


def _check_meta(data: bytes, cfg: DataConfig, source: str) -> tuple[int, int, int]:
    """Frame count, label (of ``cfg.label_space``) and the real-streams bitmask from ``meta.i32`` (format 1: both
    real), refused unless plausible: a corrupt value would otherwise pick wild frame indices or fail later in the
    loss without naming the sample."""
    try:
        meta = decode_meta_i32(data)
    except ValueError as e:
        raise AvdaliError(f"{source}: {e}") from None
    label = meta["label"] if cfg.label_space == "unified" else meta["native_label"]
    if not 1 <= meta["frames"] <= MAX_FRAMES:
        raise AvdaliError(f"{source}: meta.i32 says {meta['frames']} frames (corrupt shard?)")
    if not 0 <= label < cfg.num_classes:
        raise AvdaliError(f"{source}: label {label} is outside the {cfg.num_classes} classes of {cfg.label_space} (corrupt shard?)")
    return meta["frames"], label, meta["streams"]


def _describe(error: BaseException) -> str:
    try:
        return str(error) or type(error).__name__
    except Exception:  # noqa: BLE001 - soundfile's error text itself fails on some corrupt streams
        return type(error).__name__


def _one_line(error: BaseException) -> str:
    """An AvdaliError raised in a DataLoader worker arrives with the worker's traceback in its text: keep its message."""
    lines = [ln for ln in _describe(error).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    prefix = "avdali.errors.AvdaliError: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _collate(samples: list[dict]) -> dict:
    return dict(
        video=torch.stack([s["video"] for s in samples]),
        audio=torch.stack([s["audio"] for s in samples]),
        audio_len=torch.tensor([s["audio_len"] for s in samples], dtype=torch.int64),
        label=torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        index=torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        valid=torch.ones(len(samples), dtype=torch.bool),
        audio_present=torch.tensor([s["audio_present"] for s in samples], dtype=torch.bool),
        video_present=torch.tensor([s["video_present"] for s in samples], dtype=torch.bool),
    )


OWNER_CHECK_S = 1.0
"""How often a worker checks that the process owning its DataLoader still lives."""


def _worker_init(owner_pid: int, _worker_id: int) -> None:
    torch.set_num_threads(1)  # one core per worker; intra-op threads would fight the other workers
    cv2.setNumThreads(1)
    threading.Thread(target=_exit_with_owner, args=(owner_pid,), name="avdali-owner-watch", daemon=True).start()


def _exit_with_owner(owner_pid: int) -> None:
    """End this worker once its owner is gone. Workers are forked by the forkserver, so torch's own watchdog (the
    parent pid) watches the forkserver, and the forkserver lives as long as any of its workers: after a SIGKILL of
    the training process both would otherwise stay behind forever."""
    while True:
        time.sleep(OWNER_CHECK_S)
        if not _alive(owner_pid):
            os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process stays a zombie until its parent reaps it: that is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill said it exists


def _cat(parts: list[dict]) -> dict:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _take(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


def _invalid(batch: dict, rows: int) -> dict:
    """``rows`` copies of ``batch``'s last row, marked invalid (padding)."""
    filler = {k: v[-1:].expand(rows, *v.shape[1:]) for k, v in batch.items()}
    filler["valid"] = torch.zeros(rows, dtype=torch.bool)
    return filler


def _pad(batch: dict, size: int) -> dict:
    """``batch`` filled up to ``size`` rows with invalid copies of its last row."""
    missing = size - len(batch["label"])
    return _cat([batch, _invalid(batch, missing)]) if missing > 0 else batch


class TorchLoader:
    """Batches from the DataLoader workers: ``len()`` batches per epoch on every rank."""

    def __init__(self, cfg: DataConfig, shardset: ShardSet, *, train: bool, device: str, rank: int, world_size: int,
                 seed: int):
        self.cfg, self.train, self.device, self.world_size = cfg, train, device, world_size
        self.num_samples = shardset.num_samples
        self.shardset = shardset
        ctx = mp.get_context(START_METHOD)
        self._epoch = ctx.Value("i", 0)
        speakers = load_speaker_stats(shardset.root, cfg) if cfg.speaker_norm else None
        self.dataset = ClipStream(cfg, shardset, train=train, rank=rank, world_size=world_size, seed=seed,
                                  epoch=self._epoch, speakers=speakers)
        self.workers = min(cfg.num_threads, max(len(self.dataset.index), 1))
        self.dataloader = DataLoader(
            self.dataset,
            batch_size=None,  # the workers batch
            num_workers=self.workers,
            multiprocessing_context=ctx,
            worker_init_fn=functools.partial(_worker_init, os.getpid()),
            persistent_workers=True,
            prefetch_factor=cfg.prefetch,
            pin_memory=device == "cuda",
        )

    def __len__(self) -> int:
        return sampling.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Training reshuffles tars and samples with seeds of (seed, rank, epoch, worker)."""
        self._epoch.value = epoch

    def __iter__(self):
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else None
        size = self.cfg.batch_size
        emitted = 0
        pending: list[dict] = []
        last = None
        for part in self._parts():
            last = part
            if not pending and len(part["label"]) == size:  # the common case: a full worker batch
                yield self._batch(part, target)
                emitted += 1
                continue
            pending.append(part)
            merged = _cat(pending)
            while len(merged["label"]) >= size:
                yield self._batch(_take(merged, 0, size), target)
                emitted += 1
                merged = _take(merged, size, len(merged["label"]))
            pending = [merged] if len(merged["label"]) else []
        if last is None:
            raise AvdaliError("the torch loader read no samples for this rank")
        if pending:
            yield self._batch(_pad(pending[0], size), target)
            emitted += 1
        while emitted < len(self):  # a rank with fewer samples pads with whole invalid batches
            yield self._batch({k: v.clone() for k, v in _invalid(last, size).items()}, target)
            emitted += 1

    def _parts(self):
        """The workers' batches; a failed read becomes one line naming the shard (the changed one, when a SHA-256
        check finds it), not a worker traceback. Other errors (bugs) pass through unchanged."""
        try:
            yield from self.dataloader
        except Exception as e:
            detail = _one_line(e)
            if changed_shards(self.shardset, self.dataset.urls):  # hashes only now, after a failure
                raise read_failure(self.shardset, self.dataset.urls, "torch", detail) from None
            if isinstance(e, AvdaliError):
                raise AvdaliError(detail) from None
            raise

    @staticmethod
    def _batch(part: dict, target: torch.device | None) -> Batch:
        batch = Batch(**part)
        return batch.to(target) if target is not None else batch
