"""The decoded-frame cache (``data.cache``): every stored frame and audio track decoded once, then read from memory.

**The first pass** decodes every frame and the whole audio track of every clip the loader reads, once, with DALI on
the loader's threads (``dali.decode_all_pipeline``), into one uint8 tensor of frames (N,H,W,3 over all clips) and one
float32 tensor of 16 kHz samples, in host memory (``host``) or GPU memory (``device``). Its size is known before
anything is decoded (``estimate``: the manifest's per-shard frame and sample counts), a budget that cannot hold it
stops at once with one line, and nothing grows after it.

**Every epoch after that** follows the same sample order as the streaming loaders (``order.py``: the epoch's deal in
training, the stored range in evaluation), draws each clip's frame indices, crop window, flip and audio offset by the
clip specification (``clipspec.py``, numpy, seeded by (seed, rank, epoch)), gathers the T frames and the audio window
from memory on the cache's device, and hands them to a DALI pipeline of the streaming graph's own crop and feature
sub-graphs (``dali.cached_clip_pipeline``), on the GPU on CUDA: no transform of its own, no host round trip for a
device cache. With augmentation off a batch is the streaming DALI loader's batch: the same samples in the same
order, the same decoded pixels and features.

**Training on a CPU** needs no pipeline (``keeps_features``). The first pass keeps each audio track's raw features
(log-mel in dB, or MFCC) instead of its samples; each batch's crops run in torch (``crop.py``, the streaming loader's
own crop there) on ``data.num_threads`` threads, gathering only each clip's crop window, while the batch-taking
thread cuts each clip's window of stored feature frames and standardises it (``features.py``). The audio offset is
streaming's draw rounded down to a whole hop (10 ms), and the window's edge frames see the track's real samples
around it, where streaming pads the cut window by reflection: on a CPU the features were most of what the
pipeline computed.

**Which samples a rank caches.** Training: the whole training split, on every rank, because every epoch deals the
tars to the ranks afresh (RAVDESS: about 4 GB of frames per rank; the cache is not sharded across ranks).
Evaluation: only the rank's own range, which never changes.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avdali import shardformat as fmt
from avdali.data import clipspec, crop, order
from avdali.data.batch import Batch
from avdali.data.config import DataConfig
from avdali.data.features import FeatureFinish
from avdali.data.shards import ShardSet
from avdali.errors import AvdaliError
from avdali.shardformat.members import decode_meta_i32, read_members

GB = 1024**3
FREE_MEMORY_SHARE = 0.8
"""``auto`` and a forced mode use at most this share of the memory free when the loader is built (the rest is the
margin for the model, activations, DALI's pools and other ranks' caches)."""
ProgressFn = Callable[[int, int], None]
"""``progress(clips decoded, clips to decode)`` during the first pass."""


@dataclass(frozen=True)
class CacheEstimate:
    """What a cache of some clips holds, known before anything is decoded."""

    clips: int
    frames: int
    """Stored frames of those clips (``meta.i32``'s counts)."""
    audio_samples: int
    """16 kHz audio samples of those clips."""
    frame_size: tuple[int, int]
    """(height, width) of the stored frames."""
    feature_bins: int = 0
    """0: each track is kept as its 16 kHz samples; else as the raw features of all its frames, this many bins a frame
    (``keeps_features``)."""

    @property
    def audio_rows(self) -> int:
        """Rows of the audio store: samples, or feature frames (a track of n samples has ``clipspec.feature_frames(n)``
        frames, so the clips' tracks have at most clips + samples // HOP)."""
        return self.clips + self.audio_samples // clipspec.HOP if self.feature_bins else self.audio_samples

    @property
    def bytes(self) -> int:
        """Frames as uint8 RGB and audio as float32."""
        pixels = self.frames * self.frame_size[0] * self.frame_size[1] * 3
        return pixels + self.audio_rows * max(1, self.feature_bins) * 4

    @property
    def gb(self) -> float:
        return self.bytes / GB

    def describe(self) -> str:
        audio = " and their audio features" if self.feature_bins else ""
        return (f"{self.clips} clips, {self.frames} frames of {self.frame_size[0]}x{self.frame_size[1]}{audio}: "
                f"{self.gb:.2f} GB")


def keeps_features(cfg: DataConfig, *, train: bool, device: str) -> bool:
    """Whether a cached loader cuts every batch on the host, with no pipeline: training with augmentation on a CPU.
    Its store keeps each audio track's raw features (``dali.graph.raw_features``, computed once in the first pass)
    instead of its samples, and each clip's audio window is cut from them on the frame grid (the offset drawn as
    streaming draws it, rounded down to a whole ``HOP``); on a CPU those features are most of what the training
    pipeline would compute."""
    return train and cfg.augment and crop.crops_on_host(device)



def cached_samples(shardset: ShardSet, *, train: bool, rank: int, world_size: int) -> list[int]:
    """The samples (``Batch.index``) a rank's cache holds: all of them in training, the rank's range in evaluation."""
    if train:
        return list(range(shardset.num_samples))
    return [i for p in order.rank_epoch(shardset, rank, world_size, train=False) for i in p.indices]


def sample_counts(shardset: ShardSet, samples: list[int]) -> dict[int, tuple[int, int]]:
    """index → (frames, audio samples) from each sample's ``meta.i32`` (read from the tars of those samples)."""
    wanted = set(samples)
    counts = {}
    for f in shardset.files:
        if not any(f.first + j in wanted for j in range(f.count)):
            continue
        position = {key: f.first + j for j, key in enumerate(f.keys)}
        for key, ext, data in read_members(Path(f.tar)):
            if ext == fmt.NUMS_EXT and position.get(key) in wanted:
                meta = decode_meta_i32(data)
                counts[position[key]] = (meta["frames"], meta["audio_samples"])
    return counts


def estimate(shardset: ShardSet, samples: list[int], frame_size: tuple[int, int], bins: int = 0) -> CacheEstimate:
    """The cache's size for ``samples`` (audio as features of ``bins`` bins, or samples for 0): the manifest's
    per-shard totals where the cache takes whole shards (format 3 records them), each sample's ``meta.i32``
    otherwise."""
    wanted = set(samples)
    frames = audio = 0
    partial = []
    for f in shardset.files:
        mine = [f.first + j for j in range(f.count) if f.first + j in wanted]
        if len(mine) == f.count and f.entry.frames is not None and f.entry.audio_samples is not None:
            frames, audio = frames + f.entry.frames, audio + f.entry.audio_samples
        elif mine:
            partial += mine
    if partial:
        for n_frames, n_audio in sample_counts(shardset, partial).values():
            frames, audio = frames + n_frames, audio + n_audio
    return CacheEstimate(len(samples), frames, audio, frame_size, bins)


def host_available_bytes() -> int:
    """Memory the kernel says a new allocation can take now (``MemAvailable``), or the physical total."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_free_bytes() -> int:
    """Free memory of the current CUDA device (``cudaMemGetInfo``)."""
    free, _total = torch.cuda.mem_get_info()
    return free


def choose_mode(cfg: DataConfig, need: CacheEstimate, device: str) -> tuple[str, str]:
    """The cache mode for this loader (``off``, ``host`` or ``device``) and one line saying why.

    A forced ``host`` / ``device`` that its budget (``data.cache_max_gb`` and ``FREE_MEMORY_SHARE`` of the free
    memory) cannot hold stops here, with one line naming the need and the budget. ``auto``: ``device`` on CUDA when
    the estimate fits both, else streaming; on the CPU ``host`` when it fits (measured: the cache reads batches
    several times faster than decoding them, ``avdali bench loader``), else streaming."""
    mode = cfg.cache
    if mode == "off":
        return "off", "data.cache = off"
    if mode == "device" and device != "cuda":
        raise AvdaliError('data.cache = "device" needs CUDA (training on the CPU: use "host" or "auto")')
    where = "device" if mode == "device" or (mode == "auto" and device == "cuda") else "host"
    free = device_free_bytes() if where == "device" else host_available_bytes()
    room = min(cfg.cache_max_gb * GB, FREE_MEMORY_SHARE * free)
    memory = "GPU" if where == "device" else "host"
    budget = (f"data.cache_max_gb {cfg.cache_max_gb:g} GB, {FREE_MEMORY_SHARE:.0%} of the {free / GB:.1f} GB of "
              f"{memory} memory free")
    if need.bytes <= room:
        return where, f"caching {need.describe()} in {memory} memory (budget: {budget})"
    if mode != "auto":
        raise AvdaliError(f"data.cache = {mode!r}: the cache needs {need.gb:.2f} GB ({need.describe()}), more than its "
                          f"budget of {room / GB:.2f} GB ({budget}); raise data.cache_max_gb or set data.cache = \"off\"")
    return "off", f"not caching: {need.describe()} is more than the budget of {room / GB:.2f} GB ({budget}); streaming"


@dataclass
class CacheStore:
    """The decoded clips: frames and audio of every cached sample, back to back, and where each one lies."""

    frames: torch.Tensor
    """F,H,W,3 uint8: every frame of every clip."""
    audio: torch.Tensor
    """S float32: every 16 kHz sample of every clip; or, for a store that keeps features (``keeps_features``), R,A
    float32: the raw features of every frame of every clip."""
    row: dict[int, int]
    """Batch.index → the clip's row in the arrays below."""
    frame_start: np.ndarray
    frame_count: np.ndarray
    audio_start: np.ndarray
    audio_count: np.ndarray
    """Where each clip's audio lies in ``audio`` (samples or feature frames)."""
    samples: np.ndarray
    """16 kHz samples of each clip's track."""
    label: np.ndarray
    """Unified label per row."""
    native_label: np.ndarray
    streams: np.ndarray
    """``meta.i32``'s real-streams bitmask per row."""
    fill_seconds: float = 0.0
    """Wall time of the first pass."""

    @property
    def bytes(self) -> int:
        return self.frames.numel() + self.audio.numel() * 4

    @property
    def keeps_features(self) -> bool:
        return self.audio.dim() == 2


def fill(shardset: ShardSet, samples: list[int], need: CacheEstimate, cfg: DataConfig, *, where: str,
         pinned: bool = False, progress: ProgressFn | None = None) -> CacheStore:
    """The first pass: decode every frame and audio track of ``samples`` with DALI, once, into a store of exactly
    ``need``'s size: host memory (``pinned`` for a CUDA run, so batches copy asynchronously), or GPU memory for
    ``where="device"``."""
    import time

    from avdali.data import dali

    started = time.perf_counter()
    h, w = need.frame_size
    device = torch.device("cuda", torch.cuda.current_device()) if where == "device" else torch.device("cpu")
    frames = torch.empty((need.frames, h, w, 3), dtype=torch.uint8, device=device, pin_memory=pinned)
    shape = (need.audio_rows, need.feature_bins) if need.feature_bins else (need.audio_rows,)
    audio = torch.empty(shape, dtype=torch.float32, device=device, pin_memory=pinned)
    rows = len(samples)
    store = CacheStore(frames, audio, {}, *(np.zeros(rows, np.int64) for _ in range(5)),
                       *(np.zeros(rows, np.int32) for _ in range(3)))
    frame_at = audio_at = 0
    wanted = set(samples)
    features = cfg if need.feature_bins else None
    for index, clip_frames, clip_audio, n_samples, meta in dali.decode_all(shardset, wanted, cfg.num_threads,
                                                                           features=features):
        r = len(store.row)
        said = decode_meta_i32(meta)
        if features is not None:  # A,F → F,A: a window's frames are rows
            clip_audio = clip_audio.T
        if len(clip_frames) != said["frames"] or frame_at + len(clip_frames) > need.frames \
                or audio_at + len(clip_audio) > need.audio_rows:
            tar, key = shardset_key(shardset, index)
            raise AvdaliError(f"{tar}: sample {key}: decoded {len(clip_frames)} frames and {n_samples} audio "
                              f"samples, meta.i32 says {said['frames']} and {said['audio_samples']} (corrupt shard?)")
        frames[frame_at : frame_at + len(clip_frames)].copy_(torch.from_numpy(clip_frames))
        audio[audio_at : audio_at + len(clip_audio)].copy_(torch.from_numpy(clip_audio))
        store.row[index] = r
        store.frame_start[r], store.frame_count[r] = frame_at, len(clip_frames)
        store.audio_start[r], store.audio_count[r], store.samples[r] = audio_at, len(clip_audio), n_samples
        store.label[r], store.native_label[r], store.streams[r] = said["label"], said["native_label"], said["streams"]
        frame_at, audio_at = frame_at + len(clip_frames), audio_at + len(clip_audio)
        if progress:
            progress(len(store.row), rows)
    if len(store.row) != rows:
        raise AvdaliError(f"{shardset.root}: the cache's first pass read {len(store.row)} of {rows} clips")
    store.fill_seconds = time.perf_counter() - started
    return store


def shardset_key(shardset: ShardSet, index: int) -> tuple[str, str]:
    """(tar, key) of sample ``index``."""
    for f in shardset.files:
        if f.first <= index < f.first + f.count:
            return f.tar, f.keys[index - f.first]
    raise KeyError(index)


class CachedLoader:
    """Batches from a ``CacheStore`` (the Loader contract of ``data.build``): ``len()`` batches per epoch on every
    rank, the streaming loaders' sample order, the clip specification's draws, DALI's crop and feature sub-graphs
    (training on a CPU: torch crops and windows of the stored features)."""

    def __init__(self, cfg: DataConfig, shardset: ShardSet, store: CacheStore, *, train: bool, device: str,
                 rank: int, world_size: int, seed: int, frame_size: tuple[int, int], mode: str):
        from avdali.data import dali

        self.cfg, self.shardset, self.store, self.train = cfg, shardset, store, train
        self.device, self.rank, self.world_size, self.seed, self.mode = device, rank, world_size, seed, mode
        self.frame_size = frame_size
        self.num_samples = shardset.num_samples
        self.epoch = 0
        self.jitter = train and cfg.augment
        self.on_host = store.keeps_features
        """Training on a CPU (``keeps_features``): no pipeline. Each batch's crops run in torch (``crop.py``) on
        ``data.num_threads`` threads while this one cuts its audio windows from the stored features and standardises
        them (``features.py``)."""
        lo, hi = order.rank_range(self.num_samples, rank, world_size)
        self.rank_samples = hi - lo
        self.window = clipspec.window_samples(cfg.audio_seconds)
        self.runs = self.croppers = self.finish = None
        if self.on_host:
            self.croppers = ThreadPoolExecutor(max(1, cfg.num_threads), thread_name_prefix="avdali-crop",
                                               initializer=torch.set_num_threads, initargs=(1,))
            self.finish = FeatureFinish(cfg)
        else:
            self.runs = dali.cached_runs(cfg, device=device, jitter=self.jitter, frame_size=frame_size,
                                         inputs_on_gpu=mode == "device", batches=len(self))
        self.eval_crop = torch.tensor([dali.eval_crop(frame_size, cfg.crop)], dtype=torch.int32)

    def __len__(self) -> int:
        return order.batches_per_epoch(self.num_samples, self.cfg.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_samples(self) -> list[int]:
        """This rank's samples of the current epoch in reading order, padded with its last one to ``len()`` full
        batches (the DALI reader's ``pad_last_batch``)."""
        parts = order.rank_epoch(self.shardset, self.rank, self.world_size, train=self.train, seed=self.seed,
                                 epoch=self.epoch)
        samples = [i for p in parts for i in p.indices]
        if self.train:
            np.random.default_rng([self.seed, self.rank, self.epoch, 0x636163]).shuffle(samples)  # "cac"
        return samples + [samples[-1]] * (len(self) * self.cfg.batch_size - len(samples))

    def __iter__(self):
        samples = self.epoch_samples()
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, 0x647277])  # "drw": the epoch's draws
        size = self.cfg.batch_size
        target = torch.device(f"cuda:{torch.cuda.current_device()}") if self.device == "cuda" else torch.device("cpu")
        batches = iter(range(len(self)))

        def feed():
            k = next(batches)
            return self._feed(samples[k * size : (k + 1) * size], k * size, rng, target)

        if self.on_host:
            yield from self._host_batches(feed)
            return
        for outputs, fed in self.runs.epoch(len(self), ("video", "audio"), feed=feed):
            yield self._batch(outputs, fed, target)

    def _host_batches(self, feed):
        """The epoch's batches with no pipeline: ``feed`` draws each one, cuts its audio windows and starts its crops
        on the crop threads; ``data.prefetch`` + ``data.num_threads`` batches are in flight."""
        total, depth = len(self), self.cfg.prefetch + self.cfg.num_threads
        ahead: deque = deque()
        fed = 0
        for _ in range(total):
            while len(ahead) < depth and fed < total:
                ahead.append(feed())
                fed += 1
            batch = ahead.popleft()
            yield Batch(video=batch["video"].result(), audio=batch["audio"], **batch["fields"])

    def _feed(self, rows_of: list[int], position: int, rng: np.random.Generator, target: torch.device) -> dict:
        """Draw one batch by the clip specification (frames, audio offsets, crop windows and flips, in that order) and
        start it: ``feed_input`` its gathered frames and audio windows to the pipeline, or, with no pipeline
        (``on_host``), its crops to the crop threads and its audio windows cut here. Returns the batch's host-side
        fields (and, with no pipeline, its video future and audio)."""
        from avdali.data import dali

        s, t = self.store, self.cfg.frames
        rows = np.array([s.row[i] for i in rows_of])
        gen = rng if self.jitter else None
        picks = s.frame_start[rows, None] + clipspec.draw_batch_frame_indices(s.frame_count[rows], t, gen)
        counts = s.samples[rows].astype(np.int64)
        starts = clipspec.draw_audio_starts(counts, self.window, gen)
        if self.on_host:  # on the features' frame grid
            starts -= starts % clipspec.HOP
        valid = np.minimum(counts - starts, self.window)
        n = len(rows)
        if self.jitter:  # the window and flip by the clip specification, as the streaming loader draws them
            boxes, flips = crop.draw_windows(n, self.frame_size, rng)
            crop_box, flipped = torch.from_numpy(boxes), torch.from_numpy(flips)
        else:
            crop_box, flipped = self.eval_crop.expand(n, 4), torch.zeros(n, dtype=torch.bool)
        label = s.label if self.cfg.label_space == "unified" else s.native_label
        streams = torch.from_numpy(s.streams[rows].astype(np.int32))
        host = dict(
            audio_len=torch.from_numpy(clipspec.feature_frames(valid)),
            label=torch.from_numpy(label[rows].astype(np.int64)),
            index=torch.tensor(rows_of, dtype=torch.int64),
            valid=torch.arange(position, position + n) < self.rank_samples,
            audio_present=(streams & fmt.STREAM_AUDIO) != 0,
            video_present=(streams & fmt.STREAM_VIDEO) != 0,
            crop_box=crop_box,
            flipped=flipped,
        )
        if self.on_host:
            video = self.croppers.submit(crop.crop_gathered, s.frames.numpy(), picks, boxes, flips, self.cfg)
            audio = self._feature_windows(rows, starts, host["audio_len"])
            return dict(fields=host, video=video, audio=audio)
        roi = None
        if self.jitter:  # the pipeline's resize takes the window as its corners
            start, end = clipspec.crop_roi(*boxes.T, flips.astype(np.int32))
            roi = (np.stack(start, 1).astype(np.float32), np.stack(end, 1).astype(np.float32))
        if s.frames.is_cuda:
            frames = s.frames.index_select(0, torch.from_numpy(picks.ravel()).to(s.frames.device))
        else:  # numpy's gather is ~3× torch's index_select on these uint8 rows
            frames = np.take(s.frames.numpy(), picks.ravel(), axis=0)
        frames = frames.reshape(n, t, *s.frames.shape[1:])
        audio = s.audio if s.audio.is_cuda else s.audio.numpy()
        firsts = s.audio_start[rows].astype(np.int64) + starts
        windows = [audio[a : a + v] for a, v in zip(firsts.tolist(), valid.tolist())]
        dali.feed_cached(self.runs.pipe, frames, windows, roi)
        # the fed buffers live until the batch is taken
        return dict(fields=host, keep=(frames, windows, roi))

    def _feature_windows(self, rows: np.ndarray, starts: np.ndarray, frames: torch.Tensor) -> torch.Tensor:
        """The audio features N,A,F of windows starting ``starts`` (multiples of ``HOP``) samples into the tracks of
        ``rows``, ``frames`` valid frames each: their stored frames, standardised (``features.py``)."""
        stored = self.store.audio.numpy()
        out = np.zeros((len(rows), stored.shape[1], clipspec.feature_frames(self.window)), dtype=np.float32)
        firsts = self.store.audio_start[rows] + starts // clipspec.HOP
        for i, (first, count) in enumerate(zip(firsts.tolist(), frames.tolist())):
            out[i, :, :count] = stored[first : first + count].T
        return self.finish.standardised(torch.from_numpy(out), frames)

    def _batch(self, out: dict, fed: dict, target: torch.device) -> Batch:
        fields = {k: v.to(target, non_blocking=True) for k, v in fed["fields"].items()}
        return Batch(video=out["video"].permute(0, 1, 4, 2, 3), audio=out["audio"], **fields)


def build_cached(cfg: DataConfig, shardset: ShardSet, *, train: bool, device: str, rank: int, world_size: int,
                 seed: int, frame_size: tuple[int, int], say: Callable[[str], None] | None = None,
                 progress: ProgressFn | None = None):
    """A ``CachedLoader`` when ``data.cache`` (with its budget) says so, else None (stream); ``say`` gets the one line
    that tells which and why."""
    samples = cached_samples(shardset, train=train, rank=rank, world_size=world_size)
    bins = cfg.feature_bins if keeps_features(cfg, train=train, device=device) else 0
    need = estimate(shardset, samples, frame_size, bins)
    mode, why = choose_mode(cfg, need, device)
    if say:
        say(why)
    if mode == "off":
        return None
    store = fill(shardset, samples, need, cfg, where=mode, pinned=mode == "host" and device == "cuda", progress=progress)
    return CachedLoader(cfg, shardset, store, train=train, device=device, rank=rank, world_size=world_size,
                        seed=seed, frame_size=frame_size, mode=mode)
