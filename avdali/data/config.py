"""What the input pipelines need to know: one dataclass, checked when it is made (no torch, no DALI here)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from avdali import config_checks
from avdali.errors import ConfigError
from avdali.labels import LABEL_SPACES

LOADERS = ("dali", "torch")
FEATURES = ("logmel", "mfcc")
VIDEO_DTYPES = ("uint8", "float16", "float32")
CROP_INTERPS = ("nearest", "linear")
DECODES = ("auto", "gpu", "cpu")
CACHES = ("off", "host", "device", "auto")


# The shared checks (avdali.config_checks), with this section's "data." prefix.
def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    config_checks.choice(f"data.{name}", value, choices)


def _at_least(name: str, value, low) -> None:
    config_checks.at_least(f"data.{name}", value, low)


@dataclass
class DataConfig:
    """Input pipeline settings (the ``[data]`` section of a run config)."""

    shards: str = "shards/ravdess"
    """Folder with ``manifest.json`` and the shards' ``.tar`` + ``.idx`` files."""
    loader: str = "dali"
    """``dali`` (NVIDIA DALI pipeline, CPU or GPU) or ``torch`` (webdataset + PyAV + torchaudio in DataLoader workers)."""
    batch_size: int = 8
    """Clips per batch and rank."""
    frames: int = 16
    """T: frames sampled per clip, spread uniformly over the whole clip."""
    crop: int = 112
    """Side of the square output frames, in pixels."""
    decode: str = "auto"
    """Where the DALI loader decodes video when training on CUDA (ignored on the CPU and by the torch loader):
    ``cpu``: DALI's CPU threads decode and the frames move to the GPU right after, so every later video and audio
    operator runs on the GPU (the hybrid); ``gpu``: NVDEC (DALI's ``mixed`` decoder), frames land in GPU memory;
    ``auto``: the hybrid. The rule, until a GPU measurement says otherwise: DALI 2.4's NVDEC path builds no frame
    index, decodes every frame from frame 0 to the last one asked for, and synchronises its stream after every
    decoded picture, with at most ``num_threads`` clips in flight; at 128² frames that likely loses to the CPU cores
    (``tools/gpu_check.py`` measures both)."""
    crop_interp: str = "linear"
    """Resampling of training's random resized crop: ``linear`` (bilinear, what torchvision uses) or ``nearest``
    (no cheaper on a CPU, where the crop runs in torch's vectorised bilinear kernel; crops scaled down by much alias,
    and the quick demo learned less). Evaluation's centre crop never resamples frames at least ``crop`` pixels large."""
    audio_seconds: float = 3.0
    """Fixed audio window; longer clips are cut (random offset in training, centred in evaluation), shorter ones padded."""
    features: str = "logmel"
    """Audio features: ``logmel`` (n_mels log-mel bins) or ``mfcc`` (n_mfcc coefficients of the log-mel)."""
    n_mels: int = 64
    """Mel bins (25 ms Hann window, 10 ms hop, 16 kHz, Slaney mel scale and norm)."""
    n_mfcc: int = 13
    """MFCC coefficients (DCT-II, orthonormal) when ``features = "mfcc"``."""
    video_dtype: str = "uint8"
    """``uint8``: raw pixels, normalised on the model's device by ``prepare_video`` (cheapest for the loader);
    ``float16`` / ``float32``: ImageNet-normalised in the pipeline."""
    num_threads: int = 0
    """DALI CPU threads, or torch DataLoader worker processes, per rank; 0: the usable cores divided by the ranks on
    this machine (``resolve_threads``). A cache training on a CPU runs no pipeline: its crops run on this many
    threads."""
    prefetch: int = 2
    """Prepared ahead: DALI pipeline runs (its prefetch queue depth; a run holds one or more batches,
    ``order.batches_per_run``) / batches per DataLoader worker (its prefetch factor)."""
    shuffle_buffer: int = 256
    """Samples in the shuffle buffer in training (DALI ``initial_fill`` / webdataset shuffle size)."""
    cache: str = "off"
    """The decoded-frame cache (``data/cache.py``, DALI loader): ``off`` decodes every epoch from the shards;
    ``host`` / ``device`` decode every stored frame and audio track once, into host (pinned on CUDA runs) or GPU
    memory, and every later epoch reads the clip specification's frames and windows from there through the same
    DALI crop and feature operators (training on a CPU: torch crops, and audio windows cut on a 10 ms grid from
    each track's features, kept by the first pass); ``auto``: ``device`` on CUDA, ``host`` on the CPU, when the estimate (from the
    manifest, printed) fits ``cache_max_gb`` and the free memory with a margin, else streaming (one line says
    why); with ``loader = "torch"`` it streams. A forced mode that its budget cannot hold stops before decoding
    anything. Training caches the whole training split on every rank (ranks trade tars each epoch); evaluation only
    the rank's range."""
    cache_max_gb: float = 32.0
    """The most memory a loader's cache may take, in GB (on top of the free-memory margin)."""
    speaker_norm: bool = False
    """Normalise each clip by its speaker (``data/speakers.py``): every frame minus the speaker's mean frame, before
    the crop, and the audio features standardised per bin with the speaker's mean and std instead of the clip's own.
    A speaker's statistics cover all their clips in the same split (labels unused), computed once per shard folder
    and cached in it. Both loaders: a device stage after the loader applies them, cropping the mean frame with each
    clip's crop window (needs ``video_dtype = "uint8"``). ``avdali predict`` then needs other clips of the same person
    (``--speaker-clips``)."""
    augment: bool = True
    """Training only: random temporal jitter, random resized crop, horizontal flip, random audio offset."""
    label_space: str = "unified"
    """``unified`` (7 classes, both datasets) or ``ravdess8`` (RAVDESS' native 8 classes, from ``meta.i32``)."""
    verify: bool = True
    """Check the SHA-256 of every tar a rank reads against ``manifest.json`` when its loader is built (reads each
    byte once: ~2 s per GB from the page cache on a 2-core VM): flipped bytes are named before training instead
    of failing mid-epoch or decoding to garbage."""

    def __post_init__(self):
        _choice("loader", self.loader, LOADERS)
        _choice("features", self.features, FEATURES)
        _choice("video_dtype", self.video_dtype, VIDEO_DTYPES)
        _choice("crop_interp", self.crop_interp, CROP_INTERPS)
        _choice("decode", self.decode, DECODES)
        _choice("cache", self.cache, CACHES)
        if self.cache in ("host", "device") and self.loader != "dali":
            raise ConfigError(f'data.cache = {self.cache!r} needs data.loader = "dali" (its epochs run the DALI '
                              'pipeline\'s own crop and feature operators); got data.loader = "torch"')
        if not self.cache_max_gb > 0:
            raise ConfigError(f"data.cache_max_gb must be > 0, got {self.cache_max_gb!r}")
        _choice("label_space", self.label_space, tuple(LABEL_SPACES))
        _at_least("batch_size", self.batch_size, 1)
        _at_least("frames", self.frames, 1)
        _at_least("crop", self.crop, 16)
        _at_least("n_mels", self.n_mels, 8)
        _at_least("n_mfcc", self.n_mfcc, 1)
        _at_least("num_threads", self.num_threads, 0)
        _at_least("prefetch", self.prefetch, 1)
        _at_least("shuffle_buffer", self.shuffle_buffer, 1)
        if self.speaker_norm and self.video_dtype != "uint8":
            raise ConfigError('data.speaker_norm needs data.video_dtype = "uint8" (the speaker stage subtracts the '
                              f"mean frame in pixel levels), got {self.video_dtype!r}")
        if not 0.1 <= self.audio_seconds <= 60:
            raise ConfigError(f"data.audio_seconds must be between 0.1 and 60, got {self.audio_seconds!r}")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ConfigError(f"data.n_mfcc must be ≤ data.n_mels ({self.n_mels}), got {self.n_mfcc!r}")

    @property
    def feature_bins(self) -> int:
        """F of the audio features: ``n_mels`` for log-mel, ``n_mfcc`` for MFCC."""
        return self.n_mels if self.features == "logmel" else self.n_mfcc

    @property
    def num_classes(self) -> int:
        """Classes of the chosen label space."""
        return len(LABEL_SPACES[self.label_space])


def resolve_decode(decode: str) -> str:
    """``data.decode`` made concrete for a CUDA DALI pipeline: ``gpu`` (NVDEC) or ``cpu`` (the hybrid); ``auto`` is
    the hybrid (see ``DataConfig.decode`` for why)."""
    _choice("decode", decode, DECODES)
    return "cpu" if decode == "auto" else decode


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or a job scheduler's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (macOS)
        return os.cpu_count() or 1


def resolve_threads(cfg: DataConfig, local_ranks: int = 1) -> DataConfig:
    """``cfg`` with ``num_threads = 0`` made concrete: the usable cores shared by the ``local_ranks`` ranks of this
    machine (at least 1 each)."""
    if cfg.num_threads:
        return cfg
    return dataclasses.replace(cfg, num_threads=max(1, usable_cores() // max(1, local_ranks)))
